/*
 * ascend_checks.h - host-side checks of one packed transfer before the AscendC kernel runs.
 *
 * Host code only (std::string, kv_checks.h). The NPU launcher and the host emulation both call
 * lmc_ascend_check_args on the host copy of the packed table (kv_ascend_logic.h ArgsWord) and on
 * the host copy of the slot mapping that is then uploaded, so the kernel reads exactly what was
 * checked. Returns "" when the transfer is safe, else the message of a ValueError.
 */
#ifndef LMCACHE_ASCEND_ASCEND_CHECKS_H_
#define LMCACHE_ASCEND_ASCEND_CHECKS_H_

#include <stdint.h>

#include <string>
#include <vector>

#include "host_primitives.h"
#include "kv_ascend_logic.h"
#include "lmcache_core/kv_checks.h"

namespace lmcache_ascend {

/*
 * args: the packed table, args_words int64 words; tensor_nbytes: [num_tensors] bytes each tensor's
 * storage holds from its address; slots: host copy of the slot mapping [num_tokens];
 * chunk_address / chunk_nbytes: the chunk the kernel reads or writes (device or host address).
 */
inline std::string check_args(const int64_t* args, int64_t args_words_given, const int64_t* tensor_nbytes,
                              const int64_t* slots, uintptr_t chunk_address, int64_t chunk_nbytes) {
  using std::to_string;
  if (args == nullptr || args_words_given < kArgsHeader) {
    return "args: expected at least " + to_string(kArgsHeader) + " int64 words, given " +
           to_string(args_words_given);
  }
  if (args[kArgsMagic] != LMC_ASCEND_ARGS_MAGIC) {
    return "args: expected the lmcache_ascend table format LMCASC01, given magic " + to_string(args[kArgsMagic]);
  }
  HostPrimitives host;
  const uint64_t base = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(args));
  const lmcache_core::KVGeometry g = load_geometry(host, base);
  std::string err = lmcache_core::kv_check_geometry(g);
  if (!err.empty()) return err;
  const int64_t num_tensors = args[kArgsNumTensors];
  const int64_t planes = lmcache_core::kv_num_planes(g);  // bounded: kv_check_geometry checked the product
  if (num_tensors < 1 || num_tensors > args_words_given) {
    return "num_tensors: expected 1 to " + to_string(args_words_given) + ", given " + to_string(num_tensors);
  }
  if (planes > args_words_given) {  // both bounded by the table's length: their sum below cannot overflow
    return "args: " + to_string(planes) + " planes do not fit in a table of " + to_string(args_words_given) + " words";
  }
  if (args_words(num_tensors, planes) != args_words_given) {
    return "args: expected " + to_string(args_words(num_tensors, planes)) + " int64 words for " +
           to_string(num_tensors) + " tensors and " + to_string(planes) + " planes, given " +
           to_string(args_words_given);
  }
  if (args[kArgsGather] != 0 && args[kArgsGather] != 1) {
    return "gather: expected 0 or 1, given " + to_string(args[kArgsGather]);
  }
  std::vector<uintptr_t> address(static_cast<size_t>(num_tensors));
  for (int64_t i = 0; i < num_tensors; ++i) {
    address[static_cast<size_t>(i)] = static_cast<uintptr_t>(args[kArgsHeader + i]);
  }
  const int64_t* plane_tensor = args + kArgsHeader + num_tensors;
  err = lmcache_core::kv_check_planes(g, address.data(), tensor_nbytes, num_tensors, plane_tensor,
                                      plane_tensor + planes, planes);
  if (!err.empty()) return err;
  const int64_t num_tokens = args[kArgsNumTokens], skip = args[kArgsSkipPrefix];
  err = lmcache_core::kv_check_chunk(g, num_tokens, skip, chunk_address, chunk_nbytes);
  if (!err.empty()) return err;
  return lmcache_core::kv_check_slots(g, slots, num_tokens, skip, "slot_mapping");
}

}  // namespace lmcache_ascend

#endif  // LMCACHE_ASCEND_ASCEND_CHECKS_H_
