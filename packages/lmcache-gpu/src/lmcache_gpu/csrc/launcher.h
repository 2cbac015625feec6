/*
 * launcher.h - the checked transfer entry point and the caches it keeps, in plain C++ types (no
 * CUDA or HIP header), so the pybind11 binding compiles with the host compiler.
 *
 * Implemented in launcher.cu (CUDA for lmcache-cuda, HIP for lmcache-rocm); the runtime services
 * it uses (devices, host memory, streams, events) are runtime.h's. Every function throws
 * ArgumentError (-> ValueError) for bad input before touching memory, and std::runtime_error
 * (-> RuntimeError) naming the runtime call that failed. Streams are integer handles
 * (cudaStream_t / hipStream_t values; 0 = the legacy default stream).
 */
#ifndef LMCACHE_GPU_LAUNCHER_H_
#define LMCACHE_GPU_LAUNCHER_H_

#include <stddef.h>
#include <stdint.h>

#include <string>
#include <vector>

#include "plan.h"

namespace lmcache_gpu {

/* How a host chunk is reached: by the kernel through its mapped device address (zero-copy), or
   through a device staging buffer and an async copy. Device chunks are always written directly. */
enum class HostPath : int { kMapped = 0, kStaged = 1 };

/*
 * Gather (gather = true: KV -> chunks) or scatter (chunks -> KV) of args.num_jobs chunks on
 * `stream`, asynchronously. Order: check_layout, host-side slot checks (slots copied from the
 * device first where no host copy is given: one stream synchronisation), then one kernel launch
 * per kMaxJobsPerLaunch chunks. Nothing is written when any check fails.
 * Returns, per job, how its chunk was reached: "device", "mapped", "staged",
 * "staged (pageable host memory)" or "nothing to move".
 */
std::vector<std::string> transfer(const TransferArgs& args, bool gather, HostPath host_path, uintptr_t stream);

/* "" when this build's kernel can run on `device`, else why not (no image for its arch). Makes
   `device` current for the query, which creates its context. */
std::string kernel_image_error(int device);

/* Destroy a stream from stream_create (runtime.h) after its work: first what transfers kept for
   it (staging and slot buffers, its plane-table uses), then the stream. */
void stream_release(uintptr_t stream);

/* Plane tables and staging buffers the launcher keeps between calls. */
struct CacheStats {
  int64_t plane_tables = 0;        /* tables resident on devices */
  int64_t plane_table_uploads = 0; /* uploads since load (one per new layout/tensor set) */
  int64_t plane_table_hits = 0;    /* calls that reused a resident table */
  int64_t staging_bytes = 0;       /* device staging bytes held */
  int64_t slot_copies = 0;         /* slot mappings copied to the host for checking */
  int64_t pooled_events = 0;       /* released events kept for reuse */
};
CacheStats cache_stats();
/* Free every cached table, pooled event and buffer (waits for the streams that used them). */
void release_caches();

}  // namespace lmcache_gpu

#endif  // LMCACHE_GPU_LAUNCHER_H_
