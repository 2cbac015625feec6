/*
 * gpu_compat.h - every difference between CUDA and HIP that lmcache's GPU source needs, as
 * LMC_-prefixed macros and two small inline helpers. Nothing else in csrc/ names a cudaXxx or
 * hipXxx symbol, so launcher.cu and runtime.cu compile unchanged as CUDA (nvcc, lmcache-cuda) and
 * as HIP (clang/hipcc, lmcache-rocm builds these very files with LANGUAGE HIP).
 *
 * Selection: a HIP compile (clang's __HIP__, hipcc's __HIPCC__, or LMC_FORCE_HIP) uses the HIP
 * runtime; anything else uses the CUDA runtime. LMC_GPU_RUNTIME names the one chosen
 * ("CUDA" / "HIP"). LMC_HOST_DEVICE (host + device functions) lives in lmcache_core/kv_index.h,
 * the index math shared with the host (arm) backend; it detects a CUDA or HIP compile itself, so
 * the two headers may be included in either order.
 */
#ifndef LMCACHE_GPU_COMPAT_H_
#define LMCACHE_GPU_COMPAT_H_

#if defined(__HIP__) || defined(__HIPCC__) || defined(LMC_FORCE_HIP)
#define LMC_IS_HIP 1
#else
#define LMC_IS_HIP 0
#endif

#if defined(LMC_HOST_EMULATION)
/*
 * A plain C++ build of the kernel template (kv_transfer.cuh) for CPU tests: no runtime, no
 * launch; tests/emulate_kernel.cpp defines the built-in index variables and walks the grid
 * serially. Only the kernel vocabulary is provided; the runtime macros below are not.
 */
#include <stdint.h>
#define LMC_GPU_RUNTIME "host emulation"
#define LMC_DEVICE_INLINE inline
#define LMC_GLOBAL
#define LMC_LAUNCH_BOUNDS(threads)
struct uint4 { uint32_t x, y, z, w; };
struct uint2 { uint32_t x, y; };
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
extern thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

#elif LMC_IS_HIP
#include <hip/hip_runtime.h>

#define LMC_GPU_RUNTIME "HIP"
#define LMC_RUNTIME_VERSION HIP_VERSION            /* e.g. 50221153 for ROCm 5.2 */
/* types */
#define LMC_ERROR_T hipError_t
#define LMC_STREAM_T hipStream_t
#define LMC_EVENT_T hipEvent_t
#define LMC_DEVICE_PROP_T hipDeviceProp_t
#define LMC_POINTER_ATTR_T hipPointerAttribute_t
#define LMC_FUNC_ATTR_T hipFuncAttributes
/* errors */
#define LMC_SUCCESS hipSuccess
#define LMC_GET_ERROR_STRING hipGetErrorString
#define LMC_GET_ERROR_NAME hipGetErrorName
#define LMC_GET_LAST_ERROR hipGetLastError
/* devices */
#define LMC_GET_DEVICE_COUNT hipGetDeviceCount
#define LMC_GET_DEVICE hipGetDevice
#define LMC_SET_DEVICE hipSetDevice
#define LMC_GET_DEVICE_PROPERTIES hipGetDeviceProperties
#define LMC_DEVICE_SYNCHRONIZE hipDeviceSynchronize
#define LMC_FUNC_GET_ATTRIBUTES(attr, fn) hipFuncGetAttributes((attr), reinterpret_cast<const void*>(fn))
/* device memory */
#define LMC_MALLOC hipMalloc
#define LMC_FREE hipFree
#define LMC_MEMCPY_ASYNC hipMemcpyAsync
#define LMC_MEMCPY_2D_ASYNC hipMemcpy2DAsync
#define LMC_MEMCPY_HOST_TO_DEVICE hipMemcpyHostToDevice
#define LMC_MEMCPY_DEVICE_TO_HOST hipMemcpyDeviceToHost
#define LMC_MEMCPY_DEVICE_TO_DEVICE hipMemcpyDeviceToDevice
/* page-locked host memory: portable (every device) and mapped (a device pointer exists).
   hipHostMalloc is deprecated from ROCm 6.4 on (hipHostAlloc, CUDA's name, is the API to use);
   before 6.4 hipHostAlloc was the deprecated one, so the choice follows the version. */
#if defined(HIP_VERSION_MAJOR) && (HIP_VERSION_MAJOR > 6 || (HIP_VERSION_MAJOR == 6 && HIP_VERSION_MINOR >= 4))
#define LMC_HOST_ALLOC(ptr, nbytes) hipHostAlloc((ptr), (nbytes), hipHostAllocPortable | hipHostAllocMapped)
#define LMC_HOST_ALLOC_NAME "hipHostAlloc"
#else
#define LMC_HOST_ALLOC(ptr, nbytes) hipHostMalloc((ptr), (nbytes), hipHostMallocPortable | hipHostMallocMapped)
#define LMC_HOST_ALLOC_NAME "hipHostMalloc (ROCm < 6.4)"
#endif
#define LMC_FREE_HOST hipHostFree
#define LMC_HOST_REGISTER(ptr, nbytes) \
  hipHostRegister((ptr), (nbytes), hipHostRegisterPortable | hipHostRegisterMapped)
#define LMC_HOST_UNREGISTER hipHostUnregister
#define LMC_POINTER_GET_ATTRIBUTES hipPointerGetAttributes
#define LMC_MEMORY_TYPE_HOST hipMemoryTypeHost
/* ROCm 6 renamed hipPointerAttribute_t::memoryType to type */
#if defined(HIP_VERSION_MAJOR) && HIP_VERSION_MAJOR >= 6
#define LMC_POINTER_ATTR_TYPE(attr) ((attr).type)
#else
#define LMC_POINTER_ATTR_TYPE(attr) ((attr).memoryType)
#endif
/* streams and events */
#define LMC_STREAM_CREATE_NON_BLOCKING(s) hipStreamCreateWithFlags((s), hipStreamNonBlocking)
#define LMC_STREAM_DESTROY hipStreamDestroy
#define LMC_STREAM_SYNCHRONIZE hipStreamSynchronize
#define LMC_EVENT_CREATE_NO_TIMING(e) hipEventCreateWithFlags((e), hipEventDisableTiming)
#define LMC_EVENT_RECORD hipEventRecord
#define LMC_EVENT_SYNCHRONIZE hipEventSynchronize
#define LMC_EVENT_DESTROY hipEventDestroy
#define LMC_EVENT_QUERY hipEventQuery
#define LMC_ERROR_NOT_READY hipErrorNotReady
#define LMC_ERROR_INVALID_VALUE hipErrorInvalidValue
#define LMC_STREAM_WAIT_EVENT(s, e) hipStreamWaitEvent((s), (e), 0)
/* between processes: 64-byte memory and event handles; events made for sharing */
#define LMC_IPC_HANDLE_SIZE HIP_IPC_HANDLE_SIZE
#define LMC_IPC_MEM_HANDLE_T hipIpcMemHandle_t
#define LMC_IPC_EVENT_HANDLE_T hipIpcEventHandle_t
#define LMC_IPC_GET_MEM_HANDLE hipIpcGetMemHandle
#define LMC_IPC_OPEN_MEM_HANDLE(ptr, h) hipIpcOpenMemHandle((ptr), (h), hipIpcMemLazyEnablePeerAccess)
#define LMC_IPC_CLOSE_MEM_HANDLE hipIpcCloseMemHandle
#define LMC_IPC_GET_EVENT_HANDLE hipIpcGetEventHandle
#define LMC_IPC_OPEN_EVENT_HANDLE hipIpcOpenEventHandle
#define LMC_EVENT_CREATE_IPC(e) hipEventCreateWithFlags((e), hipEventInterprocess | hipEventDisableTiming)
/* base and size of the allocation holding ptr (what an IPC handle maps) */
inline hipError_t lmc_mem_get_address_range(void** base, size_t* size, void* ptr) {
  hipDeviceptr_t b = nullptr;
  const hipError_t st = hipMemGetAddressRange(&b, size, reinterpret_cast<hipDeviceptr_t>(ptr));
  *base = reinterpret_cast<void*>(b);
  return st;
}
#define LMC_MEM_GET_ADDRESS_RANGE_NAME "hipMemGetAddressRange"

#else /* CUDA */
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#define LMC_GPU_RUNTIME "CUDA"
#define LMC_RUNTIME_VERSION CUDART_VERSION         /* e.g. 13000 for CUDA 13.0 */
#define LMC_ERROR_T cudaError_t
#define LMC_STREAM_T cudaStream_t
#define LMC_EVENT_T cudaEvent_t
#define LMC_DEVICE_PROP_T cudaDeviceProp
#define LMC_POINTER_ATTR_T cudaPointerAttributes
#define LMC_FUNC_ATTR_T cudaFuncAttributes
#define LMC_SUCCESS cudaSuccess
#define LMC_GET_ERROR_STRING cudaGetErrorString
#define LMC_GET_ERROR_NAME cudaGetErrorName
#define LMC_GET_LAST_ERROR cudaGetLastError
#define LMC_GET_DEVICE_COUNT cudaGetDeviceCount
#define LMC_GET_DEVICE cudaGetDevice
#define LMC_SET_DEVICE cudaSetDevice
#define LMC_GET_DEVICE_PROPERTIES cudaGetDeviceProperties
#define LMC_DEVICE_SYNCHRONIZE cudaDeviceSynchronize
#define LMC_FUNC_GET_ATTRIBUTES(attr, fn) cudaFuncGetAttributes((attr), (fn))
#define LMC_MALLOC cudaMalloc
#define LMC_FREE cudaFree
#define LMC_MEMCPY_ASYNC cudaMemcpyAsync
#define LMC_MEMCPY_2D_ASYNC cudaMemcpy2DAsync
#define LMC_MEMCPY_HOST_TO_DEVICE cudaMemcpyHostToDevice
#define LMC_MEMCPY_DEVICE_TO_HOST cudaMemcpyDeviceToHost
#define LMC_MEMCPY_DEVICE_TO_DEVICE cudaMemcpyDeviceToDevice
#define LMC_HOST_ALLOC(ptr, nbytes) cudaHostAlloc((ptr), (nbytes), cudaHostAllocPortable | cudaHostAllocMapped)
#define LMC_HOST_ALLOC_NAME "cudaHostAlloc"
#define LMC_FREE_HOST cudaFreeHost
#define LMC_HOST_REGISTER(ptr, nbytes) \
  cudaHostRegister((ptr), (nbytes), cudaHostRegisterPortable | cudaHostRegisterMapped)
#define LMC_HOST_UNREGISTER cudaHostUnregister
#define LMC_POINTER_GET_ATTRIBUTES cudaPointerGetAttributes
#define LMC_MEMORY_TYPE_HOST cudaMemoryTypeHost
#define LMC_POINTER_ATTR_TYPE(attr) ((attr).type)
#define LMC_STREAM_CREATE_NON_BLOCKING(s) cudaStreamCreateWithFlags((s), cudaStreamNonBlocking)
#define LMC_STREAM_DESTROY cudaStreamDestroy
#define LMC_STREAM_SYNCHRONIZE cudaStreamSynchronize
#define LMC_EVENT_CREATE_NO_TIMING(e) cudaEventCreateWithFlags((e), cudaEventDisableTiming)
#define LMC_EVENT_RECORD cudaEventRecord
#define LMC_EVENT_SYNCHRONIZE cudaEventSynchronize
#define LMC_EVENT_DESTROY cudaEventDestroy
#define LMC_EVENT_QUERY cudaEventQuery
#define LMC_ERROR_NOT_READY cudaErrorNotReady
#define LMC_ERROR_INVALID_VALUE cudaErrorInvalidValue
#define LMC_STREAM_WAIT_EVENT(s, e) cudaStreamWaitEvent((s), (e), 0)
#define LMC_IPC_HANDLE_SIZE CUDA_IPC_HANDLE_SIZE
#define LMC_IPC_MEM_HANDLE_T cudaIpcMemHandle_t
#define LMC_IPC_EVENT_HANDLE_T cudaIpcEventHandle_t
#define LMC_IPC_GET_MEM_HANDLE cudaIpcGetMemHandle
#define LMC_IPC_OPEN_MEM_HANDLE(ptr, h) cudaIpcOpenMemHandle((ptr), (h), cudaIpcMemLazyEnablePeerAccess)
#define LMC_IPC_CLOSE_MEM_HANDLE cudaIpcCloseMemHandle
#define LMC_IPC_GET_EVENT_HANDLE cudaIpcGetEventHandle
#define LMC_IPC_OPEN_EVENT_HANDLE cudaIpcOpenEventHandle
#define LMC_EVENT_CREATE_IPC(e) cudaEventCreateWithFlags((e), cudaEventInterprocess | cudaEventDisableTiming)
/* The CUDA runtime has no call for the allocation range: the driver's cuMemGetAddressRange, found
   through the runtime's entry-point query (no link against libcuda, so the module still imports
   on a host without a driver). cudaErrorNotSupported when the driver does not provide it. */
typedef int (*LmcCuMemGetAddressRange)(unsigned long long* base, size_t* size, unsigned long long ptr);
inline cudaError_t lmc_mem_get_address_range(void** base, size_t* size, void* ptr) {
  static LmcCuMemGetAddressRange fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    const cudaError_t st = cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &p, 3020, cudaEnableDefault, &found);
#else
    const cudaError_t st = cudaGetDriverEntryPoint("cuMemGetAddressRange", &p, cudaEnableDefault, &found);
#endif
    if (st != cudaSuccess || found != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      p = nullptr;
    }
    return reinterpret_cast<LmcCuMemGetAddressRange>(p);
  }();
  if (fn == nullptr) return cudaErrorNotSupported;
  unsigned long long b = 0;
  if (fn(&b, size, static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(ptr))) != 0) return cudaErrorInvalidValue;
  *base = reinterpret_cast<void*>(static_cast<uintptr_t>(b));
  return cudaSuccess;
}
#define LMC_MEM_GET_ADDRESS_RANGE_NAME "cuMemGetAddressRange"
#endif

#if !defined(LMC_HOST_EMULATION)
#include <stdint.h>

/* Both runtimes spell these the same; named here so kernels use one vocabulary. */
#define LMC_DEVICE_INLINE __device__ __forceinline__
#define LMC_GLOBAL __global__
#define LMC_LAUNCH_BOUNDS(threads) __launch_bounds__(threads)

/*
 * Device architecture as the build names it: "sm_90" (CUDA, from the compute capability) or the
 * gfx name ("gfx90a", HIP's gcnArchName without feature suffixes such as ":sramecc+:xnack-").
 * buf receives at most n - 1 characters and a terminating 0.
 */
inline void lmc_arch_name(const LMC_DEVICE_PROP_T& prop, char* buf, int n) {
  if (n <= 0) return;
  int i = 0;
#if LMC_IS_HIP
  for (; i < n - 1 && prop.gcnArchName[i] != 0 && prop.gcnArchName[i] != ':'; ++i) buf[i] = prop.gcnArchName[i];
#else
  const char prefix[] = {'s', 'm', '_'};
  for (int k = 0; k < 3 && i < n - 1; ++k) buf[i++] = prefix[k];
  const int digits[] = {prop.major, prop.minor};
  for (int d : digits) {
    char tmp[12];
    int len = 0;
    int v = d < 0 ? 0 : d;
    do {
      tmp[len++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v > 0 && len < 11);
    while (len > 0 && i < n - 1) buf[i++] = tmp[--len];
  }
#endif
  buf[i] = 0;
}

/*
 * Device pointer through which a kernel reaches host memory at host_ptr, or nullptr when the
 * memory is not page-locked (plain pageable memory). Clears the error a runtime may leave behind
 * for an unregistered pointer (HIP returns one; CUDA reports cudaMemoryTypeUnregistered).
 *
 * host_ptr may point inside an allocation (a chunk view past the start of a pool buffer). Older
 * ROCm reports the allocation's base in both hostPointer and devicePointer for such a pointer,
 * CUDA and newer ROCm report the interior addresses; adding host_ptr - hostPointer to
 * devicePointer is right in both cases (the offset is 0 when the runtime already added it).
 */
inline void* lmc_mapped_device_pointer(const void* host_ptr) {
  LMC_POINTER_ATTR_T attr{};
  if (LMC_POINTER_GET_ATTRIBUTES(&attr, host_ptr) != LMC_SUCCESS) {
    (void)LMC_GET_LAST_ERROR();
    return nullptr;
  }
  if (LMC_POINTER_ATTR_TYPE(attr) != LMC_MEMORY_TYPE_HOST || attr.devicePointer == nullptr) return nullptr;
  const uintptr_t host = reinterpret_cast<uintptr_t>(host_ptr);
  const uintptr_t base = reinterpret_cast<uintptr_t>(attr.hostPointer);
  if (base == 0 || base > host) return attr.devicePointer;  /* no base reported: the runtime's answer */
  return static_cast<char*>(attr.devicePointer) + (host - base);
}
#endif  // !LMC_HOST_EMULATION

#endif  // LMCACHE_GPU_COMPAT_H_
