/*
 * compat_probe.cu - a translation unit that uses every runtime macro of gpu_compat.h, compiled by
 * test_compat_header.py with nvcc (CUDA) and with hipcc (HIP, gfx90a). EXPECT_HIP (0 or 1) is what
 * the compiler must select. Compile-only: nothing here runs.
 */
#include "gpu_compat.h"  // first: it brings the runtime header that kv_index.h's LMC_HOST_DEVICE needs
#include "lmcache_core/kv_index.h"

#include <stdint.h>

static_assert(LMC_IS_HIP == EXPECT_HIP, "gpu_compat.h picked the wrong runtime");

LMC_DEVICE_INLINE int64_t row_of(const lmcache_core::KVGeometry& g, int64_t slot) {
  return lmcache_core::kv_plane_row(g, 1, slot) + lmcache_core::kv_split_offset(g.kind[1].channel, 3);
}

LMC_GLOBAL void LMC_LAUNCH_BOUNDS(64) probe_kernel(int64_t* out, lmcache_core::KVGeometry g) {
  out[threadIdx.x] = row_of(g, static_cast<int64_t>(threadIdx.x)) + lmcache_core::kv_contiguous_run(g, 0);
}

/* Every host-side macro, in a plausible order; errors are collected, not handled. */
int use_every_runtime_macro() {
  int errors = 0;
  auto ok = [&](LMC_ERROR_T e) {
    if (e != LMC_SUCCESS) {
      ++errors;
      (void)LMC_GET_ERROR_NAME(e);
      (void)LMC_GET_ERROR_STRING(e);
    }
  };
  int n = 0, dev = 0;
  ok(LMC_GET_DEVICE_COUNT(&n));
  ok(LMC_GET_DEVICE(&dev));
  ok(LMC_SET_DEVICE(dev));
  LMC_DEVICE_PROP_T prop{};
  ok(LMC_GET_DEVICE_PROPERTIES(&prop, dev));
  char arch[32];
  lmc_arch_name(prop, arch, sizeof(arch));
  LMC_FUNC_ATTR_T attr{};
  ok(LMC_FUNC_GET_ATTRIBUTES(&attr, probe_kernel));
  LMC_STREAM_T s = nullptr;
  ok(LMC_STREAM_CREATE_NON_BLOCKING(&s));
  void* d = nullptr;
  void* h = nullptr;
  ok(LMC_MALLOC(&d, 4096));
  ok(LMC_HOST_ALLOC(&h, 4096));
  ok(LMC_MEMCPY_ASYNC(d, h, 64, LMC_MEMCPY_HOST_TO_DEVICE, s));
  ok(LMC_MEMCPY_2D_ASYNC(h, 128, d, 128, 64, 4, LMC_MEMCPY_DEVICE_TO_HOST, s));
  ok(LMC_MEMCPY_ASYNC(static_cast<char*>(d) + 2048, d, 64, LMC_MEMCPY_DEVICE_TO_DEVICE, s));
  probe_kernel<<<1, 64, 0, s>>>(static_cast<int64_t*>(d), lmcache_core::KVGeometry{});
  ok(LMC_GET_LAST_ERROR());
  LMC_EVENT_T e = nullptr;
  ok(LMC_EVENT_CREATE_NO_TIMING(&e));
  ok(LMC_EVENT_RECORD(e, s));
  ok(LMC_STREAM_WAIT_EVENT(s, e));
  const LMC_ERROR_T q = LMC_EVENT_QUERY(e);
  if (q != LMC_SUCCESS && q != LMC_ERROR_NOT_READY) ++errors;
  ok(LMC_EVENT_SYNCHRONIZE(e));
  ok(LMC_EVENT_DESTROY(e));
  /* between processes (the handles would be opened by another process) */
  static_assert(sizeof(LMC_IPC_MEM_HANDLE_T) == LMC_IPC_HANDLE_SIZE, "memory handle");
  LMC_IPC_MEM_HANDLE_T mh;
  void* range_base = nullptr;
  size_t range_size = 0;
  ok(lmc_mem_get_address_range(&range_base, &range_size, static_cast<char*>(d) + 64));
  if (range_base != d || range_size < 4096 || LMC_MEM_GET_ADDRESS_RANGE_NAME[0] == 0) ++errors;
  ok(LMC_IPC_GET_MEM_HANDLE(&mh, d));
  void* mapped = nullptr;
  if (LMC_IPC_OPEN_MEM_HANDLE(&mapped, mh) == LMC_SUCCESS) ok(LMC_IPC_CLOSE_MEM_HANDLE(mapped));  /* own: refused */
  (void)LMC_GET_LAST_ERROR();
  LMC_EVENT_T ipc_event = nullptr;
  ok(LMC_EVENT_CREATE_IPC(&ipc_event));
  LMC_IPC_EVENT_HANDLE_T eh;
  ok(LMC_IPC_GET_EVENT_HANDLE(&eh, ipc_event));
  LMC_EVENT_T opened = nullptr;
  if (LMC_IPC_OPEN_EVENT_HANDLE(&opened, eh) == LMC_SUCCESS) ok(LMC_EVENT_DESTROY(opened));
  if (LMC_ERROR_INVALID_VALUE == LMC_SUCCESS) ++errors;
  ok(LMC_EVENT_DESTROY(ipc_event));
  ok(LMC_STREAM_SYNCHRONIZE(s));
  if (lmc_mapped_device_pointer(h) == nullptr) ++errors;
  ok(LMC_HOST_REGISTER(arch, sizeof(arch)));
  ok(LMC_HOST_UNREGISTER(arch));
  ok(LMC_FREE_HOST(h));
  ok(LMC_FREE(d));
  ok(LMC_STREAM_DESTROY(s));
  ok(LMC_DEVICE_SYNCHRONIZE());
  if (LMC_HOST_ALLOC_NAME[0] == 0) ++errors;
  return errors + (LMC_RUNTIME_VERSION > 0 ? 0 : 1) + (LMC_GPU_RUNTIME[0] == 'C' || LMC_GPU_RUNTIME[0] == 'H' ? 0 : 1);
}
