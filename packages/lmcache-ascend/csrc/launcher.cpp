/*
 * launcher.cpp - host entry points of the AscendC kernels, called through ctypes
 * (lmcache_ascend.ascendc). Built with the kernel by CMakeLists.txt only when CANN is present.
 *
 * lmc_ascend_check: the host checks (ascend_checks.h) on the host copies of the packed table and
 * the slot mapping that the caller then uploads unchanged. lmc_ascend_launch: enqueue the kernel on
 * an aclrtStream (torch.npu.Stream.npu_stream); asynchronous. No libtorch, no torch_npu headers.
 * Not compiled on this project's CI hosts (no CANN): unverified on Ascend hardware.
 */
#include <stdint.h>

#include <string>

#include "acl/acl.h"
#include "aclrtlaunch_lmc_ascend_kv_transfer.h"
#include "ascend_checks.h"

namespace {
thread_local std::string g_error;
}

/* nullptr when the transfer is safe, else a ValueError's message. */
extern "C" const char* lmc_ascend_check(const int64_t* args, int64_t args_words, const int64_t* tensor_nbytes,
                                        const int64_t* slots, uintptr_t chunk, int64_t chunk_nbytes) {
  g_error = lmcache_ascend::check_args(args, args_words, tensor_nbytes, slots, chunk, chunk_nbytes);
  return g_error.empty() ? nullptr : g_error.c_str();
}

/* Enqueue one transfer on `stream` over block_dim AI cores; 0, or the ACL error code. */
extern "C" int lmc_ascend_launch(uint32_t block_dim, void* stream, void* args, void* slots, void* chunk) {
  return static_cast<int>(ACLRT_LAUNCH_KERNEL(lmc_ascend_kv_transfer)(block_dim, static_cast<aclrtStream>(stream),
                                                                       args, slots, chunk));
}
