/*
 * kv_transfer.cuh - the one GPU kernel: move all layers of one or more chunks between paged KV
 * and contiguous chunks in a single launch, for every layout the core describes.
 *
 * Header-only template, no checks: the launcher (launcher.cu) has validated the plane table,
 * every extent and every slot on the host before it launches. Index math comes from the core's
 * portable header lmcache_core/kv_index.h (the same functions the host backend runs); the
 * CUDA/HIP differences come from gpu_compat.h. Compiled as CUDA by lmcache-cuda and as HIP by
 * lmcache-rocm.
 *
 * Grid: x = groups of rows (grid-stride), y = plane (kind * num_layers + layer), z = chunk (job).
 * A group of `group_threads` threads (a power of two <= 32) owns one chunk token's row of one
 * plane at a time and moves it `W` bytes per load/store (16 where every address allows). Each
 * plane kind has its own geometry (split token and channel axes, width, element size); its chunk
 * rows live in the kind's section [num_layers, num_tokens, hidden_k] of the chunk.
 */
#ifndef LMCACHE_GPU_KV_TRANSFER_CUH_
#define LMCACHE_GPU_KV_TRANSFER_CUH_

#include <stdint.h>

#include "gpu_compat.h"
#include "lmcache_core/kv_index.h"
#include "plan.h"

namespace lmcache_gpu {

/* One chunk as the kernel sees it (kernel parameter block, so no upload per call). */
struct KernelJob {
  uint8_t* chunk;        /* per kind [num_layers, num_tokens, hidden_k]: device memory, mapped host memory or staging */
  const int64_t* slots;  /* int64 [num_tokens] in device-readable memory, -1 = skip */
  int32_t num_tokens;
  int32_t skip_prefix;
};

/* Row walk of one plane kind. */
struct KindWalk {
  int64_t element_size;  /* bytes */
  int64_t row_bytes;     /* heads * width * element_size: one chunk row */
  int32_t vecs_per_row;  /* row_bytes / W */
  int32_t vecs_per_run;  /* contiguous-run bytes / W */
  int64_t run_elems;     /* kv_contiguous_run(g, kind): hidden, width, the first channel level's size or 1 */
};

/* Everything a launch passes by value (well under the 4 KiB parameter limit: ~2 KiB). */
struct KernelParams {
  uint8_t* const* planes;  /* device array [num_kinds * num_layers]: byte address of each plane */
  lmcache_core::KVGeometry g;
  KindWalk walk[LMC_KV_MAX_KINDS];
  int64_t num_slots;       /* num_blocks * block_size */
  int32_t group_shift;     /* log2(threads per row) */
  int32_t num_jobs;
  KernelJob jobs[kMaxJobsPerLaunch];
};

enum Direction : int { kGather = 0, kScatter = 1 };

/* W-byte load/store unit: 16 = uint4, 8 = uint2, then the scalar integer of that width. */
template <int W> struct Vec;
template <> struct Vec<16> { using type = uint4; };
template <> struct Vec<8> { using type = uint2; };
template <> struct Vec<4> { using type = uint32_t; };
template <> struct Vec<2> { using type = uint16_t; };
template <> struct Vec<1> { using type = uint8_t; };

template <int W, int D>
LMC_DEVICE_INLINE void move_unit(uint8_t* kv, uint8_t* chunk) {
  using T = typename Vec<W>::type;
  if (D == kGather) {
    *reinterpret_cast<T*>(chunk) = *reinterpret_cast<const T*>(kv);
  } else {
    *reinterpret_cast<T*>(kv) = *reinterpret_cast<const T*>(chunk);
  }
}

/* Threads per block; rows per block = kThreads >> group_shift. */
constexpr int kThreads = 256;

template <int W, int D>
LMC_GLOBAL void LMC_LAUNCH_BOUNDS(kThreads) kv_transfer_kernel(const KernelParams p) {
  const KernelJob job = p.jobs[blockIdx.z];
  const int64_t plane = blockIdx.y;
  const int64_t kind = plane / p.g.num_layers;
  const int64_t layer = plane - kind * p.g.num_layers;
  const KindWalk& w = p.walk[kind];
  const lmcache_core::KVKindGeometry& kg = p.g.kind[kind];
  const int32_t group_threads = 1 << p.group_shift;
  const int32_t lane = static_cast<int32_t>(threadIdx.x) & (group_threads - 1);
  const int32_t group = static_cast<int32_t>((blockIdx.x * blockDim.x + threadIdx.x) >> p.group_shift);
  const int32_t groups = static_cast<int32_t>((gridDim.x * blockDim.x) >> p.group_shift);
  uint8_t* const kv_plane = p.planes[plane];
  uint8_t* const chunk_plane = job.chunk + lmcache_core::kv_chunk_row_bytes(p.g, kind, layer, 0, job.num_tokens);
  const bool one_run = w.vecs_per_run == w.vecs_per_row;

  for (int64_t t = job.skip_prefix + group; t < job.num_tokens; t += groups) {
    const int64_t slot = job.slots[t];
    /* -1 skips the token; the host checked every live slot, this keeps a slot changed since
       then from ever addressing outside the plane. */
    if (slot < 0 || slot >= p.num_slots) continue;
    uint8_t* const kv_row = kv_plane + lmcache_core::kv_plane_row(p.g, kind, slot) * w.element_size;
    uint8_t* const chunk_row = chunk_plane + t * w.row_bytes;
    if (one_run) {  // whole rows contiguous (NHD-like, MLA, SGLang): consecutive lanes, consecutive bytes
      for (int32_t v = lane; v < w.vecs_per_row; v += group_threads) {
        move_unit<W, D>(kv_row + static_cast<int64_t>(v) * W, chunk_row + static_cast<int64_t>(v) * W);
      }
    } else {  // per-head runs (HND-like), packed or strided channels: locate each run's start
      for (int32_t v = lane; v < w.vecs_per_row; v += group_threads) {
        const int32_t run = v / w.vecs_per_run;
        const int32_t within = v - run * w.vecs_per_run;
        const int64_t e = static_cast<int64_t>(run) * w.run_elems;
        const int64_t head = e / kg.width;
        const int64_t channel = e - head * kg.width;
        uint8_t* const kv = kv_row +
                            (head * kg.head_stride + lmcache_core::kv_split_offset(kg.channel, channel)) *
                                w.element_size +
                            static_cast<int64_t>(within) * W;
        move_unit<W, D>(kv, chunk_row + static_cast<int64_t>(v) * W);
      }
    }
  }
}

/* ---- host side of a launch: parameters and grid (no runtime call; shared with the CPU emulation) ---- */

/* Parameters of every launch of one transfer; jobs are filled per launch. */
inline KernelParams make_params(uint8_t* const* planes, const lmcache_core::KVGeometry& g, const CopyPlan& plan) {
  KernelParams p{};
  p.planes = planes;
  p.g = g;
  for (int64_t k = 0; k < g.num_kinds; ++k) {
    KindWalk& w = p.walk[k];
    w.element_size = g.kind[k].element_size;
    w.row_bytes = plan.row_bytes[k];
    w.vecs_per_row = static_cast<int32_t>(plan.vecs_per_row[k]);
    w.vecs_per_run = static_cast<int32_t>(plan.vecs_per_run[k]);
    w.run_elems = lmcache_core::kv_contiguous_run(g, k);
  }
  p.num_slots = lmcache_core::kv_num_slots(g);
  int shift = 0;
  while ((1 << shift) < plan.group_threads) ++shift;
  p.group_shift = shift;
  p.num_jobs = 0;
  return p;
}

/* Add a chunk to the launch; false when the launch is full (kMaxJobsPerLaunch). */
inline bool add_job(KernelParams* p, uint8_t* chunk, const int64_t* slots, int64_t num_tokens, int64_t skip_prefix) {
  if (p->num_jobs >= kMaxJobsPerLaunch) return false;
  KernelJob& j = p->jobs[p->num_jobs++];
  j.chunk = chunk;
  j.slots = slots;
  j.num_tokens = static_cast<int32_t>(num_tokens);
  j.skip_prefix = static_cast<int32_t>(skip_prefix);
  return true;
}

/* Grid of a launch: x covers the most live rows of any of its chunks, up to max_blocks (the kernel
   strides over the rest), y the planes, z the chunks. */
inline dim3 launch_grid(const KernelParams& p, const CopyPlan& plan, int64_t max_blocks = 65535) {
  int64_t max_rows = 0;
  for (int32_t j = 0; j < p.num_jobs; ++j) {
    const int64_t rows = static_cast<int64_t>(p.jobs[j].num_tokens) - p.jobs[j].skip_prefix;
    if (rows > max_rows) max_rows = rows;
  }
  const int64_t rows_per_block = kThreads / plan.group_threads;
  int64_t blocks = (max_rows + rows_per_block - 1) / rows_per_block;
  if (blocks > max_blocks) blocks = max_blocks;
  if (blocks < 1) blocks = 1;
  return dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(lmcache_core::kv_num_planes(p.g)),
              static_cast<unsigned>(p.num_jobs));
}

}  // namespace lmcache_gpu

#endif  // LMCACHE_GPU_KV_TRANSFER_CUH_
