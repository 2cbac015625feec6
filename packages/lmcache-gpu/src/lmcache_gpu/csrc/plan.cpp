/*
 * plan.cpp - host-side checks and planning of a GPU transfer (see plan.h). No GPU runtime here.
 */
#include "plan.h"

#include "lmcache_core/kv_checks.h"

#include <string>
#include <vector>

namespace lmcache_gpu {

namespace {

std::string str(int64_t v) { return std::to_string(v); }

[[noreturn]] void fail(const std::string& message) { throw ArgumentError(message); }

/* Throw the message of a kv_checks.h check, if any. */
void raise_if(const std::string& message) {
  if (!message.empty()) fail(message);
}

/* This backend's own limits, beyond kv_checks.h: 32-bit row lengths and token counts, one grid
   row per plane. */
void check_gpu_limits(const KVGeometry& g) {
  for (int64_t k = 0; k < g.num_kinds; ++k) {
    const int64_t row_bytes = lmcache_core::kv_kind_row_bytes(g, k);  // fits in int64: kv_check_geometry
    if (row_bytes > INT32_MAX) {
      fail("kinds[" + str(k) + "]: heads * width * element_size: expected a row of at most " + str(INT32_MAX) +
           " bytes, given " + str(row_bytes));
    }
  }
  const int64_t planes = lmcache_core::kv_num_planes(g);
  if (planes > kMaxPlanes) {
    fail("num_kinds * num_layers: expected at most " + str(kMaxPlanes) + " planes, given " + str(planes));
  }
}

void check_jobs(const TransferArgs& a) {
  const KVGeometry& g = a.geometry;
  if (a.num_jobs < 0 || (a.num_jobs > 0 && a.jobs == nullptr)) {
    fail("jobs: expected a list of chunks, given " + str(a.num_jobs) + " entries");
  }
  for (int64_t j = 0; j < a.num_jobs; ++j) {
    const Job& job = a.jobs[j];
    const std::string prefix = a.num_jobs == 1 ? std::string() : "jobs[" + str(j) + "].";
    if (job.num_tokens > INT32_MAX) {
      fail(job_field(a, j, "slot_mapping") + ": expected 0 to " + str(INT32_MAX) + " tokens, given " +
           str(job.num_tokens));
    }
    raise_if(lmcache_core::kv_check_chunk(g, job.num_tokens, job.skip_prefix, job.chunk,
                                          job.chunk_nbytes, prefix));
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
  const KVGeometry& g = args.geometry;
  raise_if(lmcache_core::kv_check_geometry(g));
  check_gpu_limits(g);
  raise_if(lmcache_core::kv_check_planes(g, args.tensor_address, args.tensor_nbytes, args.num_tensors,
                                         args.plane_tensor, args.plane_offset, args.plane_table_len));
  check_jobs(args);
}

void check_slots(const KVGeometry& g, const int64_t* slots, int64_t num_tokens, int64_t skip_prefix,
                 const std::string& name) {
  raise_if(lmcache_core::kv_check_slots(g, slots, num_tokens, skip_prefix, name));
}

std::vector<uintptr_t> plane_addresses(const TransferArgs& args) {
  const int64_t planes = lmcache_core::kv_num_planes(args.geometry);
  std::vector<uint8_t*> tensor_base(static_cast<size_t>(args.num_tensors));
  for (int64_t t = 0; t < args.num_tensors; ++t) tensor_base[t] = reinterpret_cast<uint8_t*>(args.tensor_address[t]);
  std::vector<uintptr_t> out(static_cast<size_t>(planes));
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t es = args.geometry.kind[p / args.geometry.num_layers].element_size;
    out[p] = reinterpret_cast<uintptr_t>(
        lmcache_core::kv_plane_address(tensor_base.data(), args.plane_tensor, args.plane_offset, p, es));
  }
  return out;
}

CopyPlan plan_copy(const TransferArgs& args, const std::vector<uintptr_t>& planes,
                   const std::vector<uintptr_t>& chunks) {
  const KVGeometry& g = args.geometry;
  CopyPlan plan;
  plan.num_kinds = g.num_kinds;
  /* OR of everything the kernel adds to a base address; its lowest set bit bounds the width.
     Section offsets inside a chunk are multiples of the kinds' row bytes, which are in. */
  uint64_t bits = 0;
  for (uintptr_t p : planes) bits |= p;
  for (uintptr_t c : chunks) bits |= c;
  for (int64_t k = 0; k < g.num_kinds; ++k) {
    const lmcache_core::KVKindGeometry& kg = g.kind[k];
    const int64_t es = kg.element_size;
    const int64_t run = lmcache_core::kv_contiguous_run(g, k);
    plan.row_bytes[k] = lmcache_core::kv_kind_row_bytes(g, k);
    plan.run_bytes[k] = run * es;
    bits |= static_cast<uint64_t>(plan.row_bytes[k]) | static_cast<uint64_t>(plan.run_bytes[k]);
    if (g.num_blocks > 1) bits |= static_cast<uint64_t>(kg.block_stride * es);
    for (int64_t l = 0; l < kg.token.levels; ++l) {
      if (kg.token.size[l] > 1) bits |= static_cast<uint64_t>(kg.token.stride[l] * es);
    }
    if (run < lmcache_core::kv_kind_hidden(g, k)) {
      if (kg.heads > 1) bits |= static_cast<uint64_t>(kg.head_stride * es);
      for (int64_t l = 0; l < kg.channel.levels; ++l) {
        const bool inside_run = l == 0 && kg.channel.stride[0] == 1;  // the run's own level
        if (kg.channel.size[l] > 1 && !inside_run) bits |= static_cast<uint64_t>(kg.channel.stride[l] * es);
      }
    }
  }
  int width = 16;
  while (width > 1 && (bits & static_cast<uint64_t>(width - 1)) != 0) width >>= 1;
  plan.vector_bytes = width;
  int64_t longest = 0;
  for (int64_t k = 0; k < g.num_kinds; ++k) {
    plan.vecs_per_row[k] = plan.row_bytes[k] / width;
    plan.vecs_per_run[k] = plan.run_bytes[k] / width;
    if (plan.vecs_per_row[k] > longest) longest = plan.vecs_per_row[k];
  }
  int threads = 1;
  while (threads < 32 && threads < longest) threads <<= 1;
  plan.group_threads = threads;
  return plan;
}

}  // namespace lmcache_gpu
