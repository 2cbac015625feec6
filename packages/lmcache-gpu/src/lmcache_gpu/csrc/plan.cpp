/*
 * plan.cpp - host-side checks and planning of a GPU transfer (see plan.h). No GPU runtime here.
 */
#include "plan.h"

#include <string>
#include <vector>

namespace lmcache_gpu {

namespace {

std::string str(int64_t v) { return std::to_string(v); }

[[noreturn]] void fail(const std::string& message) { throw ArgumentError(message); }

using lmcache_core::kv_checked_mul_add;  /* overflow-checked a * b + c (kv_index.h) */

void check_geometry(const KVGeometry& g, int64_t element_size) {
  if (element_size != 1 && element_size != 2 && element_size != 4 && element_size != 8) {
    fail("element_size: expected 1, 2, 4 or 8 bytes, given " + str(element_size));
  }
  if (g.num_kv != 1 && g.num_kv != 2) fail("num_kv: expected 1 (MLA) or 2 (K and V), given " + str(g.num_kv));
  const struct { const char* name; int64_t value; } counts[] = {
      {"num_layers", g.num_layers}, {"num_blocks", g.num_blocks}, {"block_size", g.block_size},
      {"num_kv_heads", g.num_kv_heads}, {"head_size", g.head_size}};
  for (const auto& c : counts) {
    if (c.value < 1) fail(std::string(c.name) + ": expected >= 1, given " + str(c.value));
  }
  const struct { const char* name; int64_t value; } strides[] = {
      {"block_stride", g.block_stride}, {"token_stride", g.token_stride},
      {"head_stride", g.head_stride}, {"channel_stride", g.channel_stride}};
  for (const auto& s : strides) {
    if (s.value < 0) fail(std::string(s.name) + ": expected >= 0 elements, given " + str(s.value));
  }
  int64_t slots = 0, row_bytes = 0, planes = 0;
  if (__builtin_mul_overflow(g.num_blocks, g.block_size, &slots) ||
      !kv_checked_mul_add(g.num_kv_heads, g.head_size, 0, &row_bytes) ||
      !kv_checked_mul_add(row_bytes, element_size, 0, &row_bytes) ||
      __builtin_mul_overflow(g.num_kv, g.num_layers, &planes)) {
    fail("geometry: num_blocks * block_size, num_kv_heads * head_size * element_size or num_kv * num_layers "
         "overflows int64");
  }
  if (row_bytes > INT32_MAX) {
    fail("num_kv_heads * head_size * element_size: expected a row of at most " + str(INT32_MAX) +
         " bytes, given " + str(row_bytes));
  }
  if (planes > kMaxPlanes) {
    fail("num_kv * num_layers: expected at most " + str(kMaxPlanes) + " planes, given " + str(planes));
  }
}

/* Elements a plane spans from its start (kv_checked_plane_extent: overflow-checked). */
int64_t checked_extent(const KVGeometry& g) {
  int64_t e = 0;
  if (!lmcache_core::kv_checked_plane_extent(g, &e)) {
    fail("geometry: plane extent 1 + (num_blocks - 1) * block_stride + (block_size - 1) * token_stride + "
         "(num_kv_heads - 1) * head_stride + (head_size - 1) * channel_stride overflows int64");
  }
  return e;
}

void check_planes(const TransferArgs& a) {
  const KVGeometry& g = a.geometry;
  const int64_t planes = lmcache_core::kv_num_planes(g);
  if (a.num_tensors < 1 || a.tensor_address == nullptr || a.tensor_nbytes == nullptr) {
    fail("kv_caches: expected at least one tensor, given " + str(a.num_tensors));
  }
  if (a.plane_table_len != planes || a.plane_tensor == nullptr || a.plane_offset == nullptr) {
    fail("plane_tensor/plane_offset: expected " + str(planes) + " entries (num_kv * num_layers), given " +
         str(a.plane_table_len));
  }
  const int64_t extent = checked_extent(g);
  for (int64_t t = 0; t < a.num_tensors; ++t) {
    if (a.tensor_address[t] == 0) fail("kv_caches[" + str(t) + "]: expected a non-null data pointer");
    if (a.tensor_nbytes[t] < 0) {
      fail("tensor_nbytes[" + str(t) + "]: expected >= 0 bytes, given " + str(a.tensor_nbytes[t]));
    }
  }
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t t = a.plane_tensor[p];
    if (t < 0 || t >= a.num_tensors) {
      fail("plane_tensor[" + str(p) + "]: expected a tensor index in [0, " + str(a.num_tensors) + "), given " +
           str(t));
    }
    const int64_t off = a.plane_offset[p];
    int64_t end_bytes = 0;  // (off + extent) * element_size, overflow-checked: it once wrapped and "fit"
    if (!lmcache_core::kv_checked_plane_end_bytes(off, extent, a.element_size, &end_bytes) ||
        end_bytes > a.tensor_nbytes[t]) {
      fail("plane_offset[" + str(p) + "]: plane spans elements [" + str(off) + ", " + str(off) + " + " +
           str(extent) + ") of kv_caches[" + str(t) + "], expected to fit in its " + str(a.tensor_nbytes[t]) +
           " bytes (" + str(a.element_size) + " per element)");
    }
  }
}

void check_jobs(const TransferArgs& a) {
  const KVGeometry& g = a.geometry;
  if (a.num_jobs < 0 || (a.num_jobs > 0 && a.jobs == nullptr)) {
    fail("jobs: expected a list of chunks, given " + str(a.num_jobs) + " entries");
  }
  for (int64_t j = 0; j < a.num_jobs; ++j) {
    const Job& job = a.jobs[j];
    if (job.num_tokens < 0 || job.num_tokens > INT32_MAX) {
      fail(job_field(a, j, "slot_mapping") + ": expected 0 to " + str(INT32_MAX) + " tokens, given " +
           str(job.num_tokens));
    }
    if (job.skip_prefix < 0 || job.skip_prefix > job.num_tokens) {
      fail(job_field(a, j, "skip_prefix") + ": expected 0 <= skip_prefix <= " + str(job.num_tokens) +
           ", given " + str(job.skip_prefix));
    }
    int64_t rows = 0, want = 0;
    if (!kv_checked_mul_add(lmcache_core::kv_num_planes(g), job.num_tokens, 0, &rows) ||
        !kv_checked_mul_add(rows, lmcache_core::kv_hidden(g), 0, &want) ||
        !kv_checked_mul_add(want, a.element_size, 0, &want)) {
      fail(job_field(a, j, "chunk") + ": size overflows int64");
    }
    if (job.chunk_nbytes != want) {
      fail(job_field(a, j, "chunk") + ": expected " + str(want) + " bytes ([num_kv " + str(g.num_kv) +
           ", num_layers " + str(g.num_layers) + ", num_tokens " + str(job.num_tokens) + ", hidden " +
           str(lmcache_core::kv_hidden(g)) + "] x " + str(a.element_size) + " bytes), given " +
           str(job.chunk_nbytes));
    }
    if (want > 0 && job.chunk == 0) fail(job_field(a, j, "chunk") + ": expected a non-null data pointer");
    if (job.num_tokens > job.skip_prefix && job.slots_device == 0 && job.slots_host == 0) {
      fail(job_field(a, j, "slot_mapping") + ": expected a non-null device or host pointer");
    }
  }
}

}  // namespace

std::string job_field(const TransferArgs& args, int64_t job, const char* field) {
  if (args.num_jobs == 1) return field;
  return "jobs[" + str(job) + "]." + field;
}

void check_layout(const TransferArgs& args) {
  check_geometry(args.geometry, args.element_size);
  check_planes(args);
  check_jobs(args);
}

void check_slots(const KVGeometry& g, const int64_t* slots, int64_t num_tokens, int64_t skip_prefix,
                 const std::string& name) {
  if (num_tokens > skip_prefix && slots == nullptr) fail(name + ": expected a non-null host pointer");
  const int64_t num_slots = lmcache_core::kv_num_slots(g);
  for (int64_t t = skip_prefix; t < num_tokens; ++t) {
    const int64_t slot = slots[t];
    if (!lmcache_core::kv_slot_in_range(slot, num_slots)) {
      fail(name + "[" + str(t) + "]: expected -1 <= slot < " + str(num_slots) + " (num_blocks " +
           str(g.num_blocks) + " * block_size " + str(g.block_size) + "), given " + str(slot));
    }
  }
}

std::vector<uintptr_t> plane_addresses(const TransferArgs& args) {
  const int64_t planes = lmcache_core::kv_num_planes(args.geometry);
  std::vector<uint8_t*> tensor_base(static_cast<size_t>(args.num_tensors));
  for (int64_t t = 0; t < args.num_tensors; ++t) tensor_base[t] = reinterpret_cast<uint8_t*>(args.tensor_address[t]);
  std::vector<uintptr_t> out(static_cast<size_t>(planes));
  for (int64_t p = 0; p < planes; ++p) {
    out[p] = reinterpret_cast<uintptr_t>(lmcache_core::kv_plane_address(tensor_base.data(), args.plane_tensor,
                                                                          args.plane_offset, p, args.element_size));
  }
  return out;
}

CopyPlan plan_copy(const TransferArgs& args, const std::vector<uintptr_t>& planes,
                   const std::vector<uintptr_t>& chunks) {
  const KVGeometry& g = args.geometry;
  const int64_t es = args.element_size;
  CopyPlan plan;
  plan.row_bytes = lmcache_core::kv_hidden(g) * es;
  const int64_t run = lmcache_core::kv_contiguous_run(g);
  plan.run_bytes = run * es;
  /* OR of everything the kernel adds to a base address; its lowest set bit bounds the width. */
  uint64_t bits = static_cast<uint64_t>(plan.run_bytes) | static_cast<uint64_t>(plan.row_bytes);
  for (uintptr_t p : planes) bits |= p;
  for (uintptr_t c : chunks) bits |= c;
  if (g.num_blocks > 1) bits |= static_cast<uint64_t>(g.block_stride * es);
  if (g.block_size > 1) bits |= static_cast<uint64_t>(g.token_stride * es);
  if (run < lmcache_core::kv_hidden(g)) {
    if (g.num_kv_heads > 1) bits |= static_cast<uint64_t>(g.head_stride * es);
    if (run == 1 && g.head_size > 1) bits |= static_cast<uint64_t>(g.channel_stride * es);
  }
  int width = 16;
  while (width > 1 && (bits & static_cast<uint64_t>(width - 1)) != 0) width >>= 1;
  plan.vector_bytes = width;
  plan.vecs_per_row = plan.row_bytes / width;
  plan.vecs_per_run = plan.run_bytes / width;
  int threads = 1;
  while (threads < 32 && threads < plan.vecs_per_row) threads <<= 1;
  plan.group_threads = threads;
  return plan;
}

}  // namespace lmcache_gpu
