/*
 * emulate_ascend.cpp - the AscendC kernel's logic (csrc/kv_ascend_logic.h) on host memory, its
 * cores run one after another, behind a C function test_kernel_emulation.py calls through ctypes.
 *
 * Same packed argument table (lmcache_ascend.kernel_args.pack), same host checks
 * (ascend_checks.h on a copy of the slot mapping, which the kernel then reads, as the NPU
 * launcher uploads its checked copy) and same kernel body as the NPU build; only the primitives
 * differ (host_primitives.h: memcpy instead of DataCopyPad through the UB).
 */
#include <stdint.h>
#include <string.h>

#include <string>
#include <vector>

#include "ascend_checks.h"
#include "host_primitives.h"
#include "kv_ascend_logic.h"

namespace {
thread_local std::string g_error;
}

/*
 * Run one transfer over block_num emulated cores. Returns nullptr, or the message a ValueError
 * would carry (nothing written). *copies: primitive copy calls made.
 */
extern "C" const char* lmc_ascend_emulate(const int64_t* args, int64_t args_words, const int64_t* tensor_nbytes,
                                          const int64_t* slot_mapping, int64_t num_tokens, uintptr_t chunk,
                                          int64_t chunk_nbytes, int64_t block_num, int64_t* copies) {
  if (args == nullptr || args_words < lmcache_ascend::kArgsHeader || block_num < 1) {
    g_error = "args: expected a packed table and block_num >= 1";
    return g_error.c_str();
  }
  if (num_tokens != args[lmcache_ascend::kArgsNumTokens]) {
    g_error = "slot_mapping: expected " + std::to_string(args[lmcache_ascend::kArgsNumTokens]) + " tokens, given " +
              std::to_string(num_tokens);
    return g_error.c_str();
  }
  // the slots are read once, here; the checks and the kernel use this copy
  std::vector<int64_t> slots(static_cast<size_t>(num_tokens > 0 ? num_tokens : 1));
  if (num_tokens > 0) memcpy(slots.data(), slot_mapping, static_cast<size_t>(num_tokens) * sizeof(int64_t));
  g_error = lmcache_ascend::check_args(args, args_words, tensor_nbytes, slots.data(), chunk, chunk_nbytes);
  if (!g_error.empty()) return g_error.c_str();
  lmcache_ascend::HostPrimitives p;
  p.blocks = block_num;
  for (int64_t b = 0; b < block_num; ++b) {
    p.block = b;
    lmcache_ascend::kv_transfer(p, reinterpret_cast<uintptr_t>(args), reinterpret_cast<uintptr_t>(slots.data()),
                                static_cast<uint64_t>(chunk));
  }
  *copies = p.copies;
  return nullptr;
}
