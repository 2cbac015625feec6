/*
 * launcher.h - the checked GPU entry points, in plain C++ types (no CUDA or HIP header), so the
 * pybind11 binding compiles with the host compiler in both packages.
 *
 * Implemented in launcher.cu, the one GPU source (CUDA for lmcache-cuda, HIP for lmcache-rocm).
 * Every function throws ArgumentError (-> ValueError) for bad input before touching memory, and
 * std::runtime_error (-> RuntimeError) naming the runtime call that failed.
 * Streams and events are integer handles (cudaStream_t / hipStream_t values; 0 = the legacy
 * default stream).
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

/* Page-locked (cudaHostAlloc), registered (aligned allocation + cudaHostRegister), or pageable. */
enum class HostKind : int { kPinned = 0, kRegistered = 1, kPageable = 2 };

/*
 * Gather (gather = true: KV -> chunks) or scatter (chunks -> KV) of args.num_jobs chunks on
 * `stream`, asynchronously. Order: check_layout, host-side slot checks (slots copied from the
 * device first where no host copy is given: one stream synchronisation), then one kernel launch
 * per kMaxJobsPerLaunch chunks. Nothing is written when any check fails.
 * Returns, per job, how its chunk was reached: "device", "mapped", "staged",
 * "staged (pageable host memory)" or "nothing to move".
 */
std::vector<std::string> transfer(const TransferArgs& args, bool gather, HostPath host_path, uintptr_t stream);

/* What the runtime and the device say. */
struct DeviceInfo {
  std::string name;          /* "NVIDIA H100 80GB HBM3" */
  std::string arch;          /* "sm_90" / "gfx90a" */
  int multiprocessors = 0;
  int64_t total_memory = 0;  /* bytes */
  bool can_map_host_memory = false;
};

/* Devices the runtime sees; on failure 0 and *error set to the runtime's message. */
int device_count(std::string* error);
DeviceInfo device_info(int device);
/* "" when this build's kernels can run on `device`, else why not (no image for its arch). */
std::string kernel_image_error(int device);

/* Page-locked kinds are allocated with `device` current (-1: the thread's), so a thread with no
   device set makes no context on device 0. */
void* host_alloc(size_t nbytes, HostKind kind, int device);
/* The runtime call behind HostKind::kPinned (LMC_HOST_ALLOC_NAME of gpu_compat.h) */
const char* host_alloc_name();
void host_free(void* ptr, HostKind kind);
int64_t live_host_allocations();
void host_register(void* ptr, size_t nbytes);
void host_unregister(void* ptr);

uintptr_t stream_create(int device);
void stream_destroy(uintptr_t stream);
/* `device` is the stream's (events) or the waiting stream's device: made current for the call, so
   no context is made elsewhere. -1 in stream_synchronize: the thread's current device. */
void stream_synchronize(uintptr_t stream, int device);
uintptr_t event_record(uintptr_t stream, int device);  /* from a per-device pool */
void stream_wait_event(uintptr_t stream, uintptr_t event, int device);  /* on the device, host not blocked */
bool event_query(uintptr_t event, int device);  /* true when complete; never blocks */
void event_synchronize(uintptr_t event, int device);
void event_release(uintptr_t event, int device);  /* back to the pool (safe while pending) */
void event_destroy(uintptr_t event);
void device_synchronize(int device);

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

const char* runtime_name();  /* "CUDA" / "HIP" */
int runtime_version();       /* CUDART_VERSION / HIP_VERSION this was compiled with */

}  // namespace lmcache_gpu

#endif  // LMCACHE_GPU_LAUNCHER_H_
