/*
 * dlpack_min.h - the DLPack (v0.x, unversioned "dltensor" capsule) structures the binding fills
 * to hand host memory to torch.from_dlpack with a deleter. Field order and widths follow the
 * DLPack specification (dmlc/dlpack, include/dlpack/dlpack.h); only what is used is declared.
 */
#ifndef LMCACHE_GPU_DLPACK_MIN_H_
#define LMCACHE_GPU_DLPACK_MIN_H_

#include <stdint.h>

namespace lmcache_gpu {
namespace dlpack {

enum DeviceType : int32_t { kDLCPU = 1 };  /* page-locked host memory is CPU memory to torch */
enum TypeCode : uint8_t { kDLUInt = 1 };

struct Device {
  int32_t device_type;
  int32_t device_id;
};

struct DataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct Tensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;  /* nullptr: compact row-major */
  uint64_t byte_offset;
};

struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor* self);
};

}  // namespace dlpack
}  // namespace lmcache_gpu

#endif  // LMCACHE_GPU_DLPACK_MIN_H_
