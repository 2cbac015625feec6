/*
 * kv_ascend_kernel.cpp - the AscendC kernel: kv_ascend_logic.h over ascendc_primitives.h.
 *
 * Built by CMakeLists.txt with the CANN toolchain (ascendc_library) only when CANN is present.
 * args: the packed int64 table (lmcache_ascend.kernel_args), slots: int64 [num_tokens],
 * chunk: the contiguous chunk in device memory; all three in global memory, checked on the host.
 */
#include "ascendc_primitives.h"
#include "kv_ascend_logic.h"

extern "C" __global__ __aicore__ void lmc_ascend_kv_transfer(GM_ADDR args, GM_ADDR slots, GM_ADDR chunk) {
  AscendC::TPipe pipe;
  lmcache_ascend::AscendPrimitives p;
  p.init(&pipe);
  lmcache_ascend::kv_transfer(p, reinterpret_cast<uint64_t>(args), reinterpret_cast<uint64_t>(slots),
                              reinterpret_cast<uint64_t>(chunk));
}
