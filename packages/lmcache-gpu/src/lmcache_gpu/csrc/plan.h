/*
 * plan.h - host-side checks and planning of one GPU transfer; plain C++, no GPU runtime.
 *
 * Everything a launch needs to be safe and fast is decided here, before the device is touched:
 * check_layout() validates geometry, the plane table (length, every plane's extent inside its
 * tensor) and every chunk's exact size; check_slots() validates a slot mapping held in host
 * memory; plane_addresses() builds the pointer table the kernel indexes; plan_copy() picks the
 * vector width (16 bytes when every address and stride allows) and the threads per row.
 *
 * Compiled by the host compiler in both packages (lmcache-cuda, lmcache-rocm) and callable from
 * Python through the binding, so the CPU-only tests exercise exactly this code.
 */
#ifndef LMCACHE_GPU_PLAN_H_
#define LMCACHE_GPU_PLAN_H_

#include <stddef.h>
#include <stdint.h>

#include <string>
#include <vector>

#include "argument_error.h"
#include "lmcache_core/kv_index.h"

namespace lmcache_gpu {

using lmcache_core::KVGeometry;

/* One chunk of a transfer. */
struct Job {
  uintptr_t slots_device = 0;  /* int64 [num_tokens] in device memory, or 0: upload slots_host */
  uintptr_t slots_host = 0;    /* the same values in host memory, checked there; 0: copied from the device */
  int64_t num_tokens = 0;      /* chunk tokens */
  int64_t skip_prefix = 0;     /* tokens [0, skip_prefix) are not moved */
  uintptr_t chunk = 0;         /* contiguous: per plane kind [num_layers, num_tokens, hidden_k] */
  int64_t chunk_nbytes = 0;    /* must equal the chunk's exact size */
  bool chunk_on_device = false; /* device memory (else host memory: page-locked or pageable) */
};

/* Everything one gather or scatter of one or more chunks needs: addresses, counts, strides. */
struct TransferArgs {
  int device = 0;                             /* device index of the KV tensors */
  const uintptr_t* tensor_address = nullptr;  /* [num_tensors] byte address of each engine tensor's element 0 */
  const int64_t* tensor_nbytes = nullptr;     /* [num_tensors] bytes reachable from that address */
  int64_t num_tensors = 0;
  const int64_t* plane_tensor = nullptr;      /* [plane_table_len] tensor index of each plane */
  const int64_t* plane_offset = nullptr;      /* [plane_table_len] element offset of each plane */
  int64_t plane_table_len = 0;                /* must equal num_kinds * num_layers */
  KVGeometry geometry{};                      /* per plane kind: element size, strides, split axes */
  const Job* jobs = nullptr;
  int64_t num_jobs = 0;
};

/* How the kernel walks rows; see plan_copy(). Per plane kind k: row_bytes[k] (heads * width *
   element_size: one chunk row), run_bytes[k] (kv_contiguous_run * element_size: one contiguous
   piece of a KV row), vecs_per_row[k] and vecs_per_run[k] (those / vector_bytes). */
struct CopyPlan {
  int vector_bytes = 1;     /* bytes per load/store, one for every kind: 16, 8, 4, 2 or 1 */
  int64_t num_kinds = 0;
  int64_t row_bytes[LMC_KV_MAX_KINDS] = {0, 0, 0, 0};
  int64_t run_bytes[LMC_KV_MAX_KINDS] = {0, 0, 0, 0};
  int64_t vecs_per_row[LMC_KV_MAX_KINDS] = {0, 0, 0, 0};
  int64_t vecs_per_run[LMC_KV_MAX_KINDS] = {0, 0, 0, 0};
  int group_threads = 1;    /* threads that share one row: power of two, 1..32, from the longest row */
};

/* Most chunks one launch carries (they travel in the kernel's parameter block). */
constexpr int kMaxJobsPerLaunch = 32;
/* Most planes (num_kinds * num_layers): one grid row per plane. */
constexpr int64_t kMaxPlanes = 65535;

/* Geometry, plane table and extents, chunk sizes and job fields (lmcache_core/kv_checks.h, then this
   backend's limits); not slot values. Throws ArgumentError. */
void check_layout(const TransferArgs& args);

/*
 * Every live slot of one job (tokens >= skip_prefix) in [-1, num_blocks * block_size).
 * `slots` is host memory [num_tokens]. `name` prefixes the message, e.g. "slot_mapping" or
 * "jobs[3].slot_mapping". Throws ArgumentError naming the index and the value.
 */
void check_slots(const KVGeometry& g, const int64_t* slots, int64_t num_tokens, int64_t skip_prefix,
                 const std::string& name);

/* Byte address of each plane: tensor_address[plane_tensor[p]] + plane_offset[p] * element_size of its kind. */
std::vector<uintptr_t> plane_addresses(const TransferArgs& args);

/*
 * Vector width and threads per row for the given plane addresses and chunk addresses: the widest
 * of 16/8/4/2/1 bytes that divides every plane address, chunk address, the strides the kernel
 * steps by (bytes, every kind: block, token levels, and head and channel levels where a row splits
 * into runs) and every kind's run and row lengths; threads per row: the power of two >= the
 * longest vecs_per_row, at most 32 (small rows share a warp).
 */
CopyPlan plan_copy(const TransferArgs& args, const std::vector<uintptr_t>& planes,
                   const std::vector<uintptr_t>& chunks);

/* Job name for messages: "slot_mapping" for a single job, "jobs[i].slot_mapping" otherwise. */
std::string job_field(const TransferArgs& args, int64_t job, const char* field);

}  // namespace lmcache_gpu

#endif  // LMCACHE_GPU_PLAN_H_
