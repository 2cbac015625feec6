/*
 * runtime.cu - the GPU runtime services of runtime.h: devices, page-locked host memory, streams
 * and pooled events. No kernel here: the transfers are launcher.cu's. Compiled as CUDA by
 * lmcache-cuda and as HIP by lmcache-rocm; every runtime call goes through gpu_compat.h's LMC_
 * macros.
 */
#include "runtime.h"

#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "argument_error.h"
#include "runtime_check.h"

namespace lmcache_gpu {

namespace {

constexpr size_t kHostAlign = 4096;     /* registered and pageable allocations: page aligned */
constexpr size_t kMaxPooledEvents = 1024;

std::atomic<int64_t> g_live_host{0};

size_t page_round(size_t n) { return (n + kHostAlign - 1) / kHostAlign * kHostAlign; }

/* ---- events: pooled per device, so recording one per store allocates nothing ---------------- */

std::mutex g_event_mutex;
std::vector<std::pair<int, LMC_EVENT_T>> g_event_pool;  /* (device, event) ready for reuse */

LMC_EVENT_T take_event(int device) {  /* current device == device */
  {
    std::lock_guard<std::mutex> lock(g_event_mutex);
    for (size_t i = g_event_pool.size(); i-- > 0;) {
      if (g_event_pool[i].first == device) {
        LMC_EVENT_T e = g_event_pool[i].second;
        g_event_pool.erase(g_event_pool.begin() + static_cast<std::ptrdiff_t>(i));
        return e;
      }
    }
  }
  LMC_EVENT_T e = nullptr;
  check(LMC_EVENT_CREATE_NO_TIMING(&e), "EventCreateWithFlags");
  return e;
}

}  // namespace

/* ---- devices ----------------------------------------------------------------------------- */

int device_count(std::string* error) {
  int n = 0;
  const LMC_ERROR_T st = LMC_GET_DEVICE_COUNT(&n);
  if (st != LMC_SUCCESS) {
    (void)LMC_GET_LAST_ERROR();
    if (error != nullptr) {
      *error = std::string(LMC_GPU_RUNTIME) + " GetDeviceCount failed: " + LMC_GET_ERROR_NAME(st) + ": " +
               LMC_GET_ERROR_STRING(st);
    }
    return 0;
  }
  return n;
}

DeviceInfo device_info(int device) {
  LMC_DEVICE_PROP_T prop{};
  check(LMC_GET_DEVICE_PROPERTIES(&prop, device), "GetDeviceProperties");
  DeviceInfo info;
  info.name = prop.name;
  char arch[64];
  lmc_arch_name(prop, arch, sizeof(arch));
  info.arch = arch;
  info.multiprocessors = prop.multiProcessorCount;
  info.total_memory = static_cast<int64_t>(prop.totalGlobalMem);
  info.can_map_host_memory = prop.canMapHostMemory != 0;
  return info;
}

void device_synchronize(int device) {
  DeviceGuard guard(device);
  check(LMC_DEVICE_SYNCHRONIZE(), "DeviceSynchronize");
}

/* ---- host memory ------------------------------------------------------------------------- */

void* host_alloc(size_t nbytes, HostKind kind, int device) {
  if (nbytes == 0) return nullptr;
  /* A runtime call on a thread with no current device makes a context on device 0: page-lock
     with the KV's device current (the caller's device; -1 when none is known). */
  std::unique_ptr<DeviceGuard> guard;
  if (device >= 0 && kind != HostKind::kPageable) guard = std::make_unique<DeviceGuard>(device);
  void* p = nullptr;
  switch (kind) {
    case HostKind::kPinned:
      check(LMC_HOST_ALLOC(&p, nbytes), "HostAlloc");
      break;
    case HostKind::kRegistered: {
      p = aligned_alloc(kHostAlign, page_round(nbytes));
      if (p == nullptr) throw std::bad_alloc();
      const LMC_ERROR_T st = LMC_HOST_REGISTER(p, page_round(nbytes));
      if (st != LMC_SUCCESS) {
        free(p);
        check(st, "HostRegister");
      }
      break;
    }
    case HostKind::kPageable:
      p = aligned_alloc(kHostAlign, page_round(nbytes));
      if (p == nullptr) throw std::bad_alloc();
      break;
  }
  g_live_host.fetch_add(1);
  return p;
}

void host_free(void* ptr, HostKind kind) {
  if (ptr == nullptr) return;
  switch (kind) {
    case HostKind::kPinned:
      check(LMC_FREE_HOST(ptr), "FreeHost");
      break;
    case HostKind::kRegistered:
      (void)LMC_HOST_UNREGISTER(ptr);
      free(ptr);
      break;
    case HostKind::kPageable:
      free(ptr);
      break;
  }
  g_live_host.fetch_sub(1);
}

int64_t live_host_allocations() { return g_live_host.load(); }

void host_register(void* ptr, size_t nbytes) {
  if (ptr == nullptr || nbytes == 0) {
    throw ArgumentError("host_register: expected a non-null address and nbytes >= 1, given nbytes " +
                        std::to_string(nbytes));
  }
  check(LMC_HOST_REGISTER(ptr, nbytes), "HostRegister");
}

void host_unregister(void* ptr) { check(LMC_HOST_UNREGISTER(ptr), "HostUnregister"); }

const char* host_alloc_name() { return LMC_HOST_ALLOC_NAME; }

/* ---- streams and events ------------------------------------------------------------------ */

uintptr_t stream_create(int device) {
  DeviceGuard guard(device);
  LMC_STREAM_T s = nullptr;
  check(LMC_STREAM_CREATE_NON_BLOCKING(&s), "StreamCreateWithFlags");
  return reinterpret_cast<uintptr_t>(s);
}

void stream_destroy(uintptr_t stream) { check(LMC_STREAM_DESTROY(as_stream(stream)), "StreamDestroy"); }

void stream_synchronize(uintptr_t stream, int device) {
  std::unique_ptr<DeviceGuard> guard;
  if (device >= 0) guard = std::make_unique<DeviceGuard>(device);
  check(LMC_STREAM_SYNCHRONIZE(as_stream(stream)), "StreamSynchronize");
}

uintptr_t event_record(uintptr_t stream, int device) {
  DeviceGuard guard(device);  /* the stream's device: an event must belong to its stream's device */
  LMC_EVENT_T e = take_event(device);
  const LMC_ERROR_T st = LMC_EVENT_RECORD(e, as_stream(stream));
  if (st != LMC_SUCCESS) {
    (void)LMC_EVENT_DESTROY(e);
    check(st, "EventRecord");
  }
  return reinterpret_cast<uintptr_t>(e);
}

void stream_wait_event(uintptr_t stream, uintptr_t event, int device) {
  DeviceGuard guard(device);  /* the waiting stream's device */
  check(LMC_STREAM_WAIT_EVENT(as_stream(stream), reinterpret_cast<LMC_EVENT_T>(event)), "StreamWaitEvent");
}

bool event_query(uintptr_t event, int device) {
  DeviceGuard guard(device);
  const LMC_ERROR_T st = LMC_EVENT_QUERY(reinterpret_cast<LMC_EVENT_T>(event));
  if (st == LMC_SUCCESS) return true;
  if (st == LMC_ERROR_NOT_READY) {
    (void)LMC_GET_LAST_ERROR();  /* "not ready" is an answer, not an error a later check may see */
    return false;
  }
  check(st, "EventQuery");
  return false;
}

void event_synchronize(uintptr_t event, int device) {
  DeviceGuard guard(device);
  check(LMC_EVENT_SYNCHRONIZE(reinterpret_cast<LMC_EVENT_T>(event)), "EventSynchronize");
}

void event_release(uintptr_t event, int device) {
  LMC_EVENT_T e = reinterpret_cast<LMC_EVENT_T>(event);
  {
    std::lock_guard<std::mutex> lock(g_event_mutex);
    if (g_event_pool.size() < kMaxPooledEvents) {  /* re-recording a pending event is allowed */
      g_event_pool.emplace_back(device, e);
      return;
    }
  }
  DeviceGuard guard(device);
  check(LMC_EVENT_DESTROY(e), "EventDestroy");
}

void event_destroy(uintptr_t event) { check(LMC_EVENT_DESTROY(reinterpret_cast<LMC_EVENT_T>(event)), "EventDestroy"); }

int64_t pooled_events() {
  std::lock_guard<std::mutex> lock(g_event_mutex);
  return static_cast<int64_t>(g_event_pool.size());
}

void release_event_pool() {
  std::lock_guard<std::mutex> lock(g_event_mutex);
  for (auto& de : g_event_pool) {
    DeviceGuard guard(de.first);
    (void)LMC_EVENT_DESTROY(de.second);
  }
  g_event_pool.clear();
}

/* ---- between processes ------------------------------------------------------------------- */

static_assert(sizeof(LMC_IPC_MEM_HANDLE_T) == kIpcHandleBytes, "memory handle size");
static_assert(sizeof(LMC_IPC_EVENT_HANDLE_T) == kIpcHandleBytes, "event handle size");
static_assert(LMC_IPC_HANDLE_SIZE == kIpcHandleBytes, "IPC handle size");

namespace {

std::atomic<int64_t> g_open_mappings{0};

template <typename Handle>
Handle handle_from_bytes(const std::string& bytes, const char* what) {
  if (bytes.size() != kIpcHandleBytes) {
    throw ArgumentError(std::string(what) + ": expected " + std::to_string(kIpcHandleBytes) + " bytes, given " +
                        std::to_string(bytes.size()));
  }
  Handle h;
  memcpy(&h, bytes.data(), kIpcHandleBytes);
  return h;
}

template <typename Handle>
std::string handle_to_bytes(const Handle& h) {
  return std::string(reinterpret_cast<const char*>(&h), kIpcHandleBytes);
}

}  // namespace

IpcMemExport ipc_mem_export(uintptr_t ptr, int device) {
  if (ptr == 0) throw ArgumentError("ptr: expected a device address, given 0");
  DeviceGuard guard(device);
  void* base = nullptr;
  size_t size = 0;
  check(lmc_mem_get_address_range(&base, &size, reinterpret_cast<void*>(ptr)), LMC_MEM_GET_ADDRESS_RANGE_NAME);
  LMC_IPC_MEM_HANDLE_T h;
  check(LMC_IPC_GET_MEM_HANDLE(&h, base), "IpcGetMemHandle");
  IpcMemExport out;
  out.handle = handle_to_bytes(h);
  out.base = reinterpret_cast<uintptr_t>(base);
  out.nbytes = static_cast<int64_t>(size);
  return out;
}

IpcMapping ipc_mem_open(const std::string& handle, int device) {
  const LMC_IPC_MEM_HANDLE_T h = handle_from_bytes<LMC_IPC_MEM_HANDLE_T>(handle, "handle");
  DeviceGuard guard(device);
  void* p = nullptr;
  check(LMC_IPC_OPEN_MEM_HANDLE(&p, h), "IpcOpenMemHandle");
  void* base = nullptr;
  size_t size = 0;
  const LMC_ERROR_T st = lmc_mem_get_address_range(&base, &size, p);
  if (st != LMC_SUCCESS || base != p) {
    (void)LMC_IPC_CLOSE_MEM_HANDLE(p);
    check(st != LMC_SUCCESS ? st : LMC_ERROR_INVALID_VALUE, LMC_MEM_GET_ADDRESS_RANGE_NAME);
  }
  g_open_mappings.fetch_add(1);
  IpcMapping m;
  m.base = reinterpret_cast<uintptr_t>(p);
  m.nbytes = static_cast<int64_t>(size);
  return m;
}

void ipc_mem_close(uintptr_t base, int device) {
  if (base == 0) throw ArgumentError("base: expected an address from ipc_mem_open, given 0");
  DeviceGuard guard(device);
  check(LMC_IPC_CLOSE_MEM_HANDLE(reinterpret_cast<void*>(base)), "IpcCloseMemHandle");
  g_open_mappings.fetch_sub(1);
}

int64_t open_ipc_mappings() { return g_open_mappings.load(); }

uintptr_t ipc_event_create(int device) {
  DeviceGuard guard(device);
  LMC_EVENT_T e = nullptr;
  check(LMC_EVENT_CREATE_IPC(&e), "EventCreateWithFlags(Interprocess)");
  return reinterpret_cast<uintptr_t>(e);
}

std::string ipc_event_export(uintptr_t event, int device) {
  if (event == 0) throw ArgumentError("event: expected an event from ipc_event_create, given 0");
  DeviceGuard guard(device);
  LMC_IPC_EVENT_HANDLE_T h;
  check(LMC_IPC_GET_EVENT_HANDLE(&h, reinterpret_cast<LMC_EVENT_T>(event)), "IpcGetEventHandle");
  return handle_to_bytes(h);
}

uintptr_t ipc_event_open(const std::string& handle, int device) {
  const LMC_IPC_EVENT_HANDLE_T h = handle_from_bytes<LMC_IPC_EVENT_HANDLE_T>(handle, "handle");
  DeviceGuard guard(device);
  LMC_EVENT_T e = nullptr;
  check(LMC_IPC_OPEN_EVENT_HANDLE(&e, h), "IpcOpenEventHandle");
  return reinterpret_cast<uintptr_t>(e);
}

void event_record_on(uintptr_t event, uintptr_t stream, int device) {
  if (event == 0) throw ArgumentError("event: expected an event handle, given 0");
  DeviceGuard guard(device);
  check(LMC_EVENT_RECORD(reinterpret_cast<LMC_EVENT_T>(event), as_stream(stream)), "EventRecord");
}

/* ---- the runtime itself ------------------------------------------------------------------ */

const char* runtime_name() { return LMC_GPU_RUNTIME; }

int runtime_version() { return LMC_RUNTIME_VERSION; }

}  // namespace lmcache_gpu
