/*
 * host_capsule.h - host memory from runtime.h's host_alloc handed to Python as a DLPack
 * "dltensor" capsule (torch.from_dlpack) whose deleter frees it. Host compiler, pybind11.
 */
#ifndef LMCACHE_GPU_HOST_CAPSULE_H_
#define LMCACHE_GPU_HOST_CAPSULE_H_

#include <pybind11/pybind11.h>

#include <stdint.h>

#include <string>

namespace lmcache_gpu {

/* uint8 [nbytes] host memory of `kind` ("pinned", "registered" or "pageable") as a capsule;
   page-locked kinds with `device` current (-1: the thread's). ArgumentError for an unknown kind
   or nbytes < 1; the runtime's error when allocation fails. Releases the GIL while allocating. */
pybind11::object alloc_host_capsule(int64_t nbytes, const std::string& kind, int device);

}  // namespace lmcache_gpu

#endif  // LMCACHE_GPU_HOST_CAPSULE_H_
