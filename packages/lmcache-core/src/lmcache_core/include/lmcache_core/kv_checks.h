/*
 * lmcache_core/kv_checks.h - the checks every native backend runs before a transfer writes a byte.
 *
 * Host code only (std::string messages, GCC/Clang overflow builtins): include it from a
 * launcher, never from a kernel. Each check returns an empty string when the arguments are fine,
 * else the message of a ValueError - "argument: expected ..., given ..." - which the backend
 * wraps in its own error style (lmcache-arm: ValueError through pybind11; a GPU backend: its
 * argument-error exception). One transfer's checks, in the order a launcher runs them:
 *
 *   kv_check_geometry(g, element_size)                 counts, strides, element size, int64 products
 *   kv_check_planes(g, element_size, tensors ...)      plane table, every plane inside its tensor
 *   kv_check_chunk(g, element_size, ...)               token count, skip_prefix, exact chunk size
 *   kv_check_slots(g, slots, num_tokens, skip, name)   every live slot in [-1, num_blocks * block_size)
 *
 * kv_check_slots reads the slots it is given exactly once per entry; a launcher passes its own
 * copy of the caller's slot mapping and plans from that same copy. Units as in kv_index.h:
 * counts and strides in elements, sizes in bytes where a name ends in _bytes or nbytes.
 */
#ifndef LMCACHE_CORE_KV_CHECKS_H_
#define LMCACHE_CORE_KV_CHECKS_H_

#include <stdint.h>

#include <string>

#include "lmcache_core/kv_index.h"

/* Version of this header's API: bump the minor for additions, the major for changes. */
#define LMC_KV_CHECKS_VERSION_MAJOR 1
#define LMC_KV_CHECKS_VERSION_MINOR 0

namespace lmcache_core {

namespace kv_checks_detail {
inline std::string str(int64_t v) { return std::to_string(v); }
}  // namespace kv_checks_detail

/*
 * element_size in {1, 2, 4, 8}; num_kv in {1, 2}; every count >= 1; every stride >= 0; and
 * num_blocks * block_size, num_kv_heads * head_size * element_size and num_kv * num_layers fit
 * in int64.
 */
inline std::string kv_check_geometry(const KVGeometry& g, int64_t element_size) {
  using kv_checks_detail::str;
  if (element_size != 1 && element_size != 2 && element_size != 4 && element_size != 8) {
    return "element_size: expected 1, 2, 4 or 8 bytes, given " + str(element_size);
  }
  if (g.num_kv != 1 && g.num_kv != 2) {
    return "num_kv: expected 1 (MLA) or 2 (K and V), given " + str(g.num_kv);
  }
  const struct { const char* name; int64_t value; } counts[] = {
      {"num_layers", g.num_layers}, {"num_blocks", g.num_blocks}, {"block_size", g.block_size},
      {"num_kv_heads", g.num_kv_heads}, {"head_size", g.head_size}};
  for (const auto& c : counts) {
    if (c.value < 1) return std::string(c.name) + ": expected >= 1, given " + str(c.value);
  }
  const struct { const char* name; int64_t value; } strides[] = {
      {"block_stride", g.block_stride}, {"token_stride", g.token_stride},
      {"head_stride", g.head_stride}, {"channel_stride", g.channel_stride}};
  for (const auto& s : strides) {
    if (s.value < 0) return std::string(s.name) + ": expected >= 0 elements, given " + str(s.value);
  }
  int64_t slots = 0, hidden_bytes = 0, planes = 0;
  if (__builtin_mul_overflow(g.num_blocks, g.block_size, &slots) ||
      !kv_checked_mul_add(g.num_kv_heads, g.head_size, 0, &hidden_bytes) ||
      !kv_checked_mul_add(hidden_bytes, element_size, 0, &hidden_bytes) ||
      __builtin_mul_overflow(g.num_kv, g.num_layers, &planes)) {
    return "geometry: num_blocks * block_size, num_kv_heads * head_size * element_size or "
           "num_kv * num_layers overflows int64";
  }
  return std::string();
}

/*
 * The engine tensors and the plane table, for a geometry that passed kv_check_geometry:
 * tensor_address [num_tensors] non-null byte addresses, tensor_nbytes [num_tensors] >= 0 bytes
 * reachable from each; plane_tensor / plane_offset [plane_table_len == num_kv * num_layers];
 * every plane p spans elements [plane_offset[p], plane_offset[p] + extent) that fit in the
 * tensor_nbytes[plane_tensor[p]] bytes of its tensor (overflow-checked).
 */
inline std::string kv_check_planes(const KVGeometry& g, int64_t element_size, const uintptr_t* tensor_address,
                                   const int64_t* tensor_nbytes, int64_t num_tensors, const int64_t* plane_tensor,
                                   const int64_t* plane_offset, int64_t plane_table_len) {
  using kv_checks_detail::str;
  const int64_t planes = kv_num_planes(g);
  if (num_tensors < 1 || tensor_address == nullptr || tensor_nbytes == nullptr) {
    return "kv_caches: expected at least one tensor, given " + str(num_tensors);
  }
  if (plane_table_len != planes || plane_tensor == nullptr || plane_offset == nullptr) {
    return "plane_tensor/plane_offset: expected " + str(planes) + " entries (num_kv * num_layers), given " +
           str(plane_table_len);
  }
  int64_t extent = 0;
  if (!kv_checked_plane_extent(g, &extent)) {
    return "geometry: plane extent 1 + (num_blocks - 1) * block_stride + (block_size - 1) * token_stride + "
           "(num_kv_heads - 1) * head_stride + (head_size - 1) * channel_stride overflows int64";
  }
  for (int64_t t = 0; t < num_tensors; ++t) {
    if (tensor_address[t] == 0) return "kv_caches[" + str(t) + "]: expected a non-null data pointer";
    if (tensor_nbytes[t] < 0) {
      return "tensor_nbytes[" + str(t) + "]: expected >= 0 bytes, given " + str(tensor_nbytes[t]);
    }
  }
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t t = plane_tensor[p];
    if (t < 0 || t >= num_tensors) {
      return "plane_tensor[" + str(p) + "]: expected a tensor index in [0, " + str(num_tensors) + "), given " +
             str(t);
    }
    const int64_t off = plane_offset[p];
    int64_t end_bytes = 0;  // (off + extent) * element_size, overflow-checked
    if (!kv_checked_plane_end_bytes(off, extent, element_size, &end_bytes) || end_bytes > tensor_nbytes[t]) {
      return "plane_offset[" + str(p) + "]: plane spans elements [" + str(off) + ", " + str(off) + " + " +
             str(extent) + ") of kv_caches[" + str(t) + "], expected to fit in its " + str(tensor_nbytes[t]) +
             " bytes (" + str(element_size) + " per element)";
    }
  }
  return std::string();
}

/*
 * One chunk, for a geometry that passed kv_check_geometry: num_tokens >= 0, 0 <= skip_prefix <=
 * num_tokens, chunk_nbytes exactly num_kv * num_layers * num_tokens * hidden * element_size
 * (overflow-checked), a non-null chunk address when that is > 0. `prefix` starts every argument
 * name: "" for one chunk, e.g. "jobs[3]." for one of several.
 */
inline std::string kv_check_chunk(const KVGeometry& g, int64_t element_size, int64_t num_tokens,
                                  int64_t skip_prefix, uintptr_t chunk_address, int64_t chunk_nbytes,
                                  const std::string& prefix = std::string()) {
  using kv_checks_detail::str;
  if (num_tokens < 0) return prefix + "slot_mapping: expected >= 0 tokens, given " + str(num_tokens);
  if (skip_prefix < 0 || skip_prefix > num_tokens) {
    return prefix + "skip_prefix: expected 0 <= skip_prefix <= " + str(num_tokens) + ", given " + str(skip_prefix);
  }
  int64_t rows = 0, want = 0;
  if (!kv_checked_mul_add(kv_num_planes(g), num_tokens, 0, &rows) ||
      !kv_checked_mul_add(rows, kv_hidden(g), 0, &want) || !kv_checked_mul_add(want, element_size, 0, &want)) {
    return prefix + "chunk: size overflows int64";
  }
  if (chunk_nbytes != want) {
    return prefix + "chunk: expected " + str(want) + " bytes ([num_kv " + str(g.num_kv) + ", num_layers " +
           str(g.num_layers) + ", num_tokens " + str(num_tokens) + ", hidden " + str(kv_hidden(g)) + "] x " +
           str(element_size) + " bytes), given " + str(chunk_nbytes);
  }
  if (want > 0 && chunk_address == 0) return prefix + "chunk: expected a non-null data pointer";
  return std::string();
}

/*
 * Every live slot of `slots` [num_tokens] (tokens >= skip_prefix) in [-1, num_blocks *
 * block_size); `slots` is host memory, each entry read once. `name` starts the message, e.g.
 * "slot_mapping" or "jobs[3].slot_mapping".
 */
inline std::string kv_check_slots(const KVGeometry& g, const int64_t* slots, int64_t num_tokens,
                                  int64_t skip_prefix, const std::string& name) {
  using kv_checks_detail::str;
  if (num_tokens > skip_prefix && slots == nullptr) return name + ": expected a non-null host pointer";
  const int64_t num_slots = kv_num_slots(g);
  for (int64_t t = skip_prefix < 0 ? 0 : skip_prefix; t < num_tokens; ++t) {
    const int64_t slot = slots[t];
    if (!kv_slot_in_range(slot, num_slots)) {
      return name + "[" + str(t) + "]: expected -1 <= slot < " + str(num_slots) + " (num_blocks " +
             str(g.num_blocks) + " * block_size " + str(g.block_size) + "), given " + str(slot);
    }
  }
  return std::string();
}

}  // namespace lmcache_core

#endif  // LMCACHE_CORE_KV_CHECKS_H_
