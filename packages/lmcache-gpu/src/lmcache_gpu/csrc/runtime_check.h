/*
 * runtime_check.h - how the GPU source calls the runtime: check() turns a failed call into
 * std::runtime_error naming the call, DeviceGuard makes a device current for a scope, as_stream()
 * turns an integer handle into the runtime's stream type. Used by runtime.cu and launcher.cu
 * (device compiler only: it includes the runtime header through gpu_compat.h).
 */
#ifndef LMCACHE_GPU_RUNTIME_CHECK_H_
#define LMCACHE_GPU_RUNTIME_CHECK_H_

#include <stdint.h>

#include <stdexcept>
#include <string>

#include "gpu_compat.h"

namespace lmcache_gpu {

/* Throws naming the call. Clears the runtime's last error first: a failure reported here must not
   make a later, successful launch look failed (its check reads the last error). */
inline void check(LMC_ERROR_T status, const char* what) {
  if (status != LMC_SUCCESS) {
    (void)LMC_GET_LAST_ERROR();
    throw std::runtime_error(std::string(LMC_GPU_RUNTIME) + " " + what + " failed: " + LMC_GET_ERROR_NAME(status) +
                             ": " + LMC_GET_ERROR_STRING(status));
  }
}

inline LMC_STREAM_T as_stream(uintptr_t handle) { return reinterpret_cast<LMC_STREAM_T>(handle); }

/* Make `device` current for the scope; restore the previous one. */
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(LMC_GET_DEVICE(&previous_), "GetDevice");
    if (previous_ != device) {
      check(LMC_SET_DEVICE(device), "SetDevice");
      changed_ = true;
    }
  }
  ~DeviceGuard() {
    if (changed_) (void)LMC_SET_DEVICE(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

}  // namespace lmcache_gpu

#endif  // LMCACHE_GPU_RUNTIME_CHECK_H_
