/*
 * runtime.h - the GPU runtime services, in plain C++ types (no CUDA or HIP header), so the
 * binding compiles with the host compiler: devices, page-locked host memory, streams and events.
 *
 * Implemented in runtime.cu (CUDA for lmcache-cuda, HIP for lmcache-rocm). Every function throws
 * std::runtime_error (-> RuntimeError) naming the runtime call that failed, ArgumentError
 * (-> ValueError) for a bad argument. Streams and events are integer handles (cudaStream_t /
 * hipStream_t values; 0 = the legacy default stream). A call given a device makes it current for
 * its duration and never another: a thread with no device set makes no context on device 0.
 * The transfers and the caches they keep are launcher.h's.
 */
#ifndef LMCACHE_GPU_RUNTIME_H_
#define LMCACHE_GPU_RUNTIME_H_

#include <stddef.h>
#include <stdint.h>

#include <string>

namespace lmcache_gpu {

/* ---- devices ----------------------------------------------------------------------------- */

/* What the runtime and the device say (read without creating a context). */
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
void device_synchronize(int device);

/* ---- host memory ------------------------------------------------------------------------- */

/* Page-locked (cudaHostAlloc), registered (aligned allocation + cudaHostRegister), or pageable. */
enum class HostKind : int { kPinned = 0, kRegistered = 1, kPageable = 2 };

/* Page-locked kinds are allocated with `device` current (-1: the thread's), so a thread with no
   device set makes no context on device 0. Registered and pageable memory is page aligned. */
void* host_alloc(size_t nbytes, HostKind kind, int device);
/* The runtime call behind HostKind::kPinned (LMC_HOST_ALLOC_NAME of gpu_compat.h) */
const char* host_alloc_name();
void host_free(void* ptr, HostKind kind);
int64_t live_host_allocations();
/* Page-lock existing host memory (portable, mapped); ArgumentError for a null pointer or nbytes 0. */
void host_register(void* ptr, size_t nbytes);
void host_unregister(void* ptr);

/* ---- streams and events ------------------------------------------------------------------ */

uintptr_t stream_create(int device);  /* non-blocking */
/* Destroys the stream only; launcher.h's stream_release frees what transfers kept for it first. */
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
int64_t pooled_events();  /* released events kept for reuse */
void release_event_pool();  /* destroy the pooled events */

/* ---- between processes (CUDA IPC / HIP IPC) ---------------------------------------------- */
/*
 * Handles are kIpcHandleBytes opaque bytes (both runtimes), passed as std::string: they travel in
 * messages as bytes, never pickled. A handle names a whole runtime allocation: export reports the
 * allocation's base and size, and the importer adds the tensor's offset from that base. Memory of
 * a virtual-memory allocator (cuMemCreate: torch's expandable segments) has no such handle, and
 * export raises naming the runtime call. A process cannot open its own handles (the runtime
 * refuses): the exporter and the importer are different processes.
 */
constexpr size_t kIpcHandleBytes = 64;

struct IpcMemExport {
  std::string handle;   /* kIpcHandleBytes bytes */
  uintptr_t base = 0;   /* the allocation holding the pointer, in the exporter */
  int64_t nbytes = 0;   /* its size */
};

/* The handle of the allocation holding device address `ptr` on `device`. */
IpcMemExport ipc_mem_export(uintptr_t ptr, int device);
/* Map an exported allocation into this process on `device`: its base here and its size as this
   process's runtime reports it (what the importer checks extents against, not the exporter's word). */
struct IpcMapping {
  uintptr_t base = 0;
  int64_t nbytes = 0;
};
IpcMapping ipc_mem_open(const std::string& handle, int device);
/* Unmap a base from ipc_mem_open (the exporter's memory stays). */
void ipc_mem_close(uintptr_t base, int device);
int64_t open_ipc_mappings();  /* ipc_mem_open minus ipc_mem_close */

/* An event both processes can use (interprocess, timing disabled), not pooled: event_destroy. */
uintptr_t ipc_event_create(int device);
std::string ipc_event_export(uintptr_t event, int device);
/* An event exported by another process; wait on it (stream_wait_event, event_synchronize) or
   record it (event_record_on); event_destroy when done. */
uintptr_t ipc_event_open(const std::string& handle, int device);
/* Record an existing event (an IPC event, made here or opened) on a stream of `device`. */
void event_record_on(uintptr_t event, uintptr_t stream, int device);

/* ---- the runtime itself ------------------------------------------------------------------ */

const char* runtime_name();  /* "CUDA" / "HIP" */
int runtime_version();       /* CUDART_VERSION / HIP_VERSION this was compiled with */

}  // namespace lmcache_gpu

#endif  // LMCACHE_GPU_RUNTIME_H_
