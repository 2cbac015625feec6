/*
 * lmcache_core/kv_checks.h - the checks every native backend runs before a transfer writes a byte.
 *
 * Host code only (std::string messages, GCC/Clang overflow builtins): include it from a
 * launcher, never from a kernel. Each check returns an empty string when the arguments are fine,
 * else the message of a ValueError - "argument: expected ..., given ..." - which the backend
 * wraps in its own error style (lmcache-arm: ValueError through pybind11; a GPU backend: its
 * argument-error exception). One transfer's checks, in the order a launcher runs them:
 *
 *   kv_check_geometry(g)                               counts, split axes, strides, element sizes, int64 products
 *   kv_check_planes(g, tensors ...)                    plane table, every plane inside its tensor
 *   kv_check_chunk(g, ...)                             token count, skip_prefix, exact chunk size
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
#define LMC_KV_CHECKS_VERSION_MAJOR 2
#define LMC_KV_CHECKS_VERSION_MINOR 0

namespace lmcache_core {

namespace kv_checks_detail {
inline std::string str(int64_t v) { return std::to_string(v); }

/* "kinds[1].token" style name of a kind's field. */
inline std::string field(int64_t kind, const char* name) { return "kinds[" + str(kind) + "]." + name; }

/* One split axis: levels in [1, LMC_KV_MAX_LEVELS], sizes >= 1, strides >= 0, sizes multiply to product. */
inline std::string check_axis(const KVSplitAxis& a, int64_t kind, const char* name, int64_t product,
                              const char* product_name) {
  if (a.levels < 1 || a.levels > LMC_KV_MAX_LEVELS) {
    return field(kind, name) + ": expected 1 to " + str(LMC_KV_MAX_LEVELS) + " levels, given " + str(a.levels);
  }
  int64_t p = 1;
  for (int64_t l = 0; l < a.levels; ++l) {
    if (a.size[l] < 1) {
      return field(kind, name) + ".size[" + str(l) + "]: expected >= 1, given " + str(a.size[l]);
    }
    if (a.stride[l] < 0) {
      return field(kind, name) + ".stride[" + str(l) + "]: expected >= 0 elements, given " + str(a.stride[l]);
    }
    if (__builtin_mul_overflow(p, a.size[l], &p)) return field(kind, name) + ": product of sizes overflows int64";
  }
  if (p != product) {
    return field(kind, name) + ": expected sizes that multiply to " + product_name + " " + str(product) +
           ", given a product of " + str(p);
  }
  return std::string();
}
}  // namespace kv_checks_detail

/*
 * num_kinds in [1, LMC_KV_MAX_KINDS]; num_layers, num_blocks, block_size >= 1; per kind: heads and
 * width >= 1, element_size in {1, 2, 4, 8}, block and head strides >= 0, token and channel split
 * axes well formed (1 to LMC_KV_MAX_LEVELS levels, sizes >= 1 multiplying to block_size and width,
 * strides >= 0); and num_blocks * block_size, heads * width * element_size and num_kinds *
 * num_layers fit in int64.
 */
inline std::string kv_check_geometry(const KVGeometry& g) {
  using kv_checks_detail::field;
  using kv_checks_detail::str;
  if (g.num_kinds < 1 || g.num_kinds > LMC_KV_MAX_KINDS) {
    return "num_kinds: expected 1 to " + str(LMC_KV_MAX_KINDS) + " plane kinds, given " + str(g.num_kinds);
  }
  const struct { const char* name; int64_t value; } counts[] = {
      {"num_layers", g.num_layers}, {"num_blocks", g.num_blocks}, {"block_size", g.block_size}};
  for (const auto& c : counts) {
    if (c.value < 1) return std::string(c.name) + ": expected >= 1, given " + str(c.value);
  }
  int64_t slots = 0, planes = 0;
  if (__builtin_mul_overflow(g.num_blocks, g.block_size, &slots) ||
      __builtin_mul_overflow(g.num_kinds, g.num_layers, &planes)) {
    return "geometry: num_blocks * block_size or num_kinds * num_layers overflows int64";
  }
  for (int64_t k = 0; k < g.num_kinds; ++k) {
    const KVKindGeometry& kg = g.kind[k];
    const int64_t es = kg.element_size;
    if (es != 1 && es != 2 && es != 4 && es != 8) {
      return field(k, "element_size") + ": expected 1, 2, 4 or 8 bytes, given " + str(es);
    }
    if (kg.heads < 1) return field(k, "heads") + ": expected >= 1, given " + str(kg.heads);
    if (kg.width < 1) return field(k, "width") + ": expected >= 1, given " + str(kg.width);
    if (kg.block_stride < 0) return field(k, "block_stride") + ": expected >= 0 elements, given " + str(kg.block_stride);
    if (kg.head_stride < 0) return field(k, "head_stride") + ": expected >= 0 elements, given " + str(kg.head_stride);
    std::string m = kv_checks_detail::check_axis(kg.token, k, "token", g.block_size, "block_size");
    if (m.empty()) m = kv_checks_detail::check_axis(kg.channel, k, "channel", kg.width, "width");
    if (!m.empty()) return m;
    int64_t row_bytes = 0;
    if (!kv_checked_mul_add(kg.heads, kg.width, 0, &row_bytes) || !kv_checked_mul_add(row_bytes, es, 0, &row_bytes)) {
      return field(k, "heads") + " * width * element_size overflows int64";
    }
  }
  return std::string();
}

/*
 * The engine tensors and the plane table, for a geometry that passed kv_check_geometry:
 * tensor_address [num_tensors] non-null byte addresses, tensor_nbytes [num_tensors] >= 0 bytes
 * reachable from each; plane_tensor / plane_offset [plane_table_len == num_kinds * num_layers];
 * every plane p (kind p / num_layers) spans elements [plane_offset[p], plane_offset[p] + extent of
 * its kind) that fit in the tensor_nbytes[plane_tensor[p]] bytes of its tensor (overflow-checked,
 * in the kind's element size).
 */
inline std::string kv_check_planes(const KVGeometry& g, const uintptr_t* tensor_address, const int64_t* tensor_nbytes,
                                   int64_t num_tensors, const int64_t* plane_tensor, const int64_t* plane_offset,
                                   int64_t plane_table_len) {
  using kv_checks_detail::str;
  const int64_t planes = kv_num_planes(g);
  if (num_tensors < 1 || tensor_address == nullptr || tensor_nbytes == nullptr) {
    return "kv_caches: expected at least one tensor, given " + str(num_tensors);
  }
  if (plane_table_len != planes || plane_tensor == nullptr || plane_offset == nullptr) {
    return "plane_tensor/plane_offset: expected " + str(planes) + " entries (num_kinds * num_layers), given " +
           str(plane_table_len);
  }
  int64_t extent[LMC_KV_MAX_KINDS] = {0, 0, 0, 0};
  for (int64_t k = 0; k < g.num_kinds; ++k) {
    if (!kv_checked_plane_extent(g, k, &extent[k])) {
      return "geometry: plane extent of kinds[" + str(k) + "], 1 + (num_blocks - 1) * block_stride + "
             "(heads - 1) * head_stride + sum of (size - 1) * stride over the token and channel levels, "
             "overflows int64";
    }
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
    const int64_t kind = p / g.num_layers;
    const int64_t es = g.kind[kind].element_size;
    const int64_t off = plane_offset[p];
    int64_t end_bytes = 0;  // (off + extent) * element_size, overflow-checked
    if (!kv_checked_plane_end_bytes(off, extent[kind], es, &end_bytes) || end_bytes > tensor_nbytes[t]) {
      return "plane_offset[" + str(p) + "]: plane spans elements [" + str(off) + ", " + str(off) + " + " +
             str(extent[kind]) + ") of kv_caches[" + str(t) + "], expected to fit in its " + str(tensor_nbytes[t]) +
             " bytes (" + str(es) + " per element)";
    }
  }
  return std::string();
}

/*
 * One chunk, for a geometry that passed kv_check_geometry: num_tokens >= 0, 0 <= skip_prefix <=
 * num_tokens, chunk_nbytes exactly the sum over kinds of num_layers * num_tokens * heads * width *
 * element_size (overflow-checked), a non-null chunk address when that is > 0. `prefix` starts
 * every argument name: "" for one chunk, e.g. "jobs[3]." for one of several.
 */
inline std::string kv_check_chunk(const KVGeometry& g, int64_t num_tokens, int64_t skip_prefix,
                                  uintptr_t chunk_address, int64_t chunk_nbytes,
                                  const std::string& prefix = std::string()) {
  using kv_checks_detail::str;
  if (num_tokens < 0) return prefix + "slot_mapping: expected >= 0 tokens, given " + str(num_tokens);
  if (skip_prefix < 0 || skip_prefix > num_tokens) {
    return prefix + "skip_prefix: expected 0 <= skip_prefix <= " + str(num_tokens) + ", given " + str(skip_prefix);
  }
  int64_t rows = 0, want = 0;
  std::string sections;
  if (!kv_checked_mul_add(g.num_layers, num_tokens, 0, &rows)) return prefix + "chunk: size overflows int64";
  for (int64_t k = 0; k < g.num_kinds; ++k) {
    int64_t section = 0;
    if (!kv_checked_mul_add(rows, kv_kind_hidden(g, k), 0, &section) ||
        !kv_checked_mul_add(section, g.kind[k].element_size, want, &want)) {
      return prefix + "chunk: size overflows int64";
    }
    sections += (k ? " + [" : "[") + str(g.num_layers) + ", " + str(num_tokens) + ", " + str(kv_kind_hidden(g, k)) +
                "] x " + str(g.kind[k].element_size);
  }
  if (chunk_nbytes != want) {
    return prefix + "chunk: expected " + str(want) + " bytes (" + sections +
           " bytes: [num_layers, num_tokens, hidden] per plane kind), given " + str(chunk_nbytes);
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
