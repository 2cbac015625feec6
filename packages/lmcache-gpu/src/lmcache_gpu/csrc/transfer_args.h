/*
 * transfer_args.h - the launcher's TransferArgs built from the values the binding receives
 * (vectors, tuples), over storage that lives as long as the object. Plain C++, host compiler.
 */
#ifndef LMCACHE_GPU_TRANSFER_ARGS_H_
#define LMCACHE_GPU_TRANSFER_ARGS_H_

#include <stdint.h>

#include <array>
#include <tuple>
#include <vector>

#include "launcher.h"
#include "plan.h"

namespace lmcache_gpu {

using Dims = std::array<int64_t, 4>;  /* num_kinds, num_layers, num_blocks, block_size */
using Kind = std::array<int64_t, LMC_KV_KIND_FIELDS>;  /* one plane kind, flat (kv_index.h kv_kind_unpack) */
using Kinds = std::vector<Kind>;      /* [num_kinds] */
/* slots_device, slots_host, num_tokens, skip_prefix, chunk, chunk_nbytes, chunk_on_device */
using JobTuple = std::tuple<uintptr_t, uintptr_t, int64_t, int64_t, uintptr_t, int64_t, bool>;

/* TransferArgs (`view`) over vectors this object owns. Throws ArgumentError when the paired lists
   differ in length or the device index is negative; everything else is check_layout's. */
class OwnedTransferArgs {
 public:
  OwnedTransferArgs(int device, std::vector<uintptr_t> tensor_address, std::vector<int64_t> tensor_nbytes,
                    std::vector<int64_t> plane_tensor, std::vector<int64_t> plane_offset, const Dims& dims,
                    const Kinds& kinds, const std::vector<JobTuple>& jobs);
  OwnedTransferArgs(const OwnedTransferArgs&) = delete;
  OwnedTransferArgs& operator=(const OwnedTransferArgs&) = delete;

  const TransferArgs& view() const { return view_; }

 private:
  std::vector<uintptr_t> tensor_address_;
  std::vector<int64_t> tensor_nbytes_, plane_tensor_, plane_offset_;
  std::vector<Job> jobs_;
  TransferArgs view_;
};

/* Geometry alone (for plan_copy). Throws ArgumentError unless kinds has dims[0] (1 to
   LMC_KV_MAX_KINDS) entries; the values themselves are check_layout's. */
KVGeometry make_geometry(const Dims& dims, const Kinds& kinds);

/* 0 -> kMapped, 1 -> kStaged; ArgumentError otherwise. */
HostPath host_path_from_int(int host_path);

}  // namespace lmcache_gpu

#endif  // LMCACHE_GPU_TRANSFER_ARGS_H_
