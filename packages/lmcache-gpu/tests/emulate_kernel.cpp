/*
 * emulate_kernel.cpp - the GPU kernel template (csrc/kv_transfer.cuh) built by a host compiler
 * with LMC_HOST_EMULATION, its grid walked serially, behind a C function that
 * test_kernel_emulation.py calls through ctypes on CPU tensors.
 *
 * Same checks (plan.cpp), same pointer table, same vector-width plan, same launch parameters and
 * grid (make_params / add_job / launch_grid) and the same kernel body as launcher.cu; only the
 * runtime is missing: memory is host memory and "threads" run one after another. What it proves:
 * the kernel's index math, run splitting, lane striding and job batching are right for every
 * layout and dtype. What it cannot: memory-model, coalescing or speed questions (GPU tests).
 */
#include <stdint.h>

#include <string>
#include <vector>

#include "kv_transfer.cuh"
#include "plan.h"

thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace {

using lmcache_gpu::KernelParams;

template <int W, int D>
void run_grid(const KernelParams& p, dim3 grid) {
  gridDim = grid;
  blockDim = dim3(lmcache_gpu::kThreads);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x)
        for (unsigned t = 0; t < blockDim.x; ++t) {
          blockIdx = dim3(x, y, z);
          threadIdx = dim3(t);
          lmcache_gpu::kv_transfer_kernel<W, D>(p);
        }
}

template <int D>
void run(const KernelParams& p, dim3 grid, int width) {
  switch (width) {
    case 16: run_grid<16, D>(p, grid); break;
    case 8: run_grid<8, D>(p, grid); break;
    case 4: run_grid<4, D>(p, grid); break;
    case 2: run_grid<2, D>(p, grid); break;
    default: run_grid<1, D>(p, grid); break;
  }
}

thread_local std::string g_error;

}  // namespace

/*
 * Gather (gather != 0) or scatter num_jobs chunks in host memory. dims: (num_kinds, num_layers,
 * num_blocks, block_size); kinds: num_kinds * LMC_KV_KIND_FIELDS values (kv_kind_unpack order).
 * Per job: slot mapping address, tokens, skip_prefix, chunk address, chunk bytes.
 * max_blocks caps the grid's x dimension (65535 in launcher.cu; 1 makes every group stride over rows).
 * Returns nullptr, or the message a ValueError would carry. *vector_bytes, *launches: the plan used.
 */
extern "C" const char* lmc_emulate_transfer(int gather, const uintptr_t* tensor_address, const int64_t* tensor_nbytes,
                                            int64_t num_tensors, const int64_t* plane_tensor,
                                            const int64_t* plane_offset, int64_t plane_table_len, const int64_t* dims,
                                            const int64_t* kinds, int64_t num_jobs,
                                            const uintptr_t* job_slots, const int64_t* job_tokens,
                                            const int64_t* job_skip, const uintptr_t* job_chunk,
                                            const int64_t* job_chunk_nbytes, int64_t max_blocks, int* vector_bytes,
                                            int* launches) {
  try {
    std::vector<lmcache_gpu::Job> jobs(static_cast<size_t>(num_jobs));
    for (int64_t j = 0; j < num_jobs; ++j) {
      jobs[j].slots_host = job_slots[j];
      jobs[j].num_tokens = job_tokens[j];
      jobs[j].skip_prefix = job_skip[j];
      jobs[j].chunk = job_chunk[j];
      jobs[j].chunk_nbytes = job_chunk_nbytes[j];
    }
    lmcache_gpu::TransferArgs a;
    a.tensor_address = tensor_address;
    a.tensor_nbytes = tensor_nbytes;
    a.num_tensors = num_tensors;
    a.plane_tensor = plane_tensor;
    a.plane_offset = plane_offset;
    a.plane_table_len = plane_table_len;
    if (dims[0] < 1 || dims[0] > LMC_KV_MAX_KINDS) throw lmcache_gpu::ArgumentError("num_kinds: out of range");
    a.geometry = lmcache_core::KVGeometry{};
    a.geometry.num_kinds = dims[0];
    a.geometry.num_layers = dims[1];
    a.geometry.num_blocks = dims[2];
    a.geometry.block_size = dims[3];
    for (int64_t k = 0; k < dims[0]; ++k) a.geometry.kind[k] = lmcache_core::kv_kind_unpack(kinds + k * LMC_KV_KIND_FIELDS);
    a.jobs = jobs.data();
    a.num_jobs = num_jobs;
    lmcache_gpu::check_layout(a);
    std::vector<uintptr_t> chunks;
    for (int64_t j = 0; j < num_jobs; ++j) {
      if (jobs[j].num_tokens <= jobs[j].skip_prefix) continue;
      lmcache_gpu::check_slots(a.geometry, reinterpret_cast<const int64_t*>(jobs[j].slots_host), jobs[j].num_tokens,
                               jobs[j].skip_prefix, lmcache_gpu::job_field(a, j, "slot_mapping"));
      chunks.push_back(jobs[j].chunk);
    }
    const std::vector<uintptr_t> planes = lmcache_gpu::plane_addresses(a);
    const lmcache_gpu::CopyPlan plan = lmcache_gpu::plan_copy(a, planes, chunks);
    *vector_bytes = plan.vector_bytes;
    *launches = 0;
    KernelParams p = lmcache_gpu::make_params(reinterpret_cast<uint8_t* const*>(planes.data()), a.geometry, plan);
    int64_t j = 0;
    while (j < num_jobs) {
      p.num_jobs = 0;
      for (; j < num_jobs && p.num_jobs < lmcache_gpu::kMaxJobsPerLaunch; ++j) {
        if (jobs[j].num_tokens <= jobs[j].skip_prefix) continue;
        lmcache_gpu::add_job(&p, reinterpret_cast<uint8_t*>(jobs[j].chunk),
                             reinterpret_cast<const int64_t*>(jobs[j].slots_host), jobs[j].num_tokens,
                             jobs[j].skip_prefix);
      }
      if (p.num_jobs == 0) break;
      const dim3 grid = lmcache_gpu::launch_grid(p, plan, max_blocks);
      if (gather) {
        run<lmcache_gpu::kGather>(p, grid, plan.vector_bytes);
      } else {
        run<lmcache_gpu::kScatter>(p, grid, plan.vector_bytes);
      }
      ++*launches;
    }
    return nullptr;
  } catch (const std::exception& e) {
    g_error = e.what();
    return g_error.c_str();
  }
}
