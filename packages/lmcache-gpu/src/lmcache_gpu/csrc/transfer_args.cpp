/*
 * transfer_args.cpp - TransferArgs from the binding's values (see transfer_args.h).
 */
#include "transfer_args.h"

#include <string>
#include <utility>

namespace lmcache_gpu {

KVGeometry make_geometry(const Dims& dims, const Kinds& kinds) {
  if (kinds.empty() || kinds.size() > LMC_KV_MAX_KINDS || static_cast<int64_t>(kinds.size()) != dims[0]) {
    throw ArgumentError("kinds: expected num_kinds (dims[0] = " + std::to_string(dims[0]) + ", 1 to " +
                        std::to_string(LMC_KV_MAX_KINDS) + ") entries, given " + std::to_string(kinds.size()));
  }
  KVGeometry g{};
  g.num_kinds = dims[0];
  g.num_layers = dims[1];
  g.num_blocks = dims[2];
  g.block_size = dims[3];
  for (size_t k = 0; k < kinds.size(); ++k) g.kind[k] = lmcache_core::kv_kind_unpack(kinds[k].data());
  return g;
}

OwnedTransferArgs::OwnedTransferArgs(int device, std::vector<uintptr_t> tensor_address,
                                     std::vector<int64_t> tensor_nbytes, std::vector<int64_t> plane_tensor,
                                     std::vector<int64_t> plane_offset, const Dims& dims, const Kinds& kinds,
                                     const std::vector<JobTuple>& jobs) {
  if (tensor_address.size() != tensor_nbytes.size()) {
    throw ArgumentError("tensor_nbytes: expected " + std::to_string(tensor_address.size()) +
                        " entries (one per tensor_address), given " + std::to_string(tensor_nbytes.size()));
  }
  if (plane_tensor.size() != plane_offset.size()) {
    throw ArgumentError("plane_offset: expected " + std::to_string(plane_tensor.size()) +
                        " entries (one per plane_tensor entry), given " + std::to_string(plane_offset.size()));
  }
  if (device < 0) throw ArgumentError("device: expected a device index >= 0, given " + std::to_string(device));
  tensor_address_ = std::move(tensor_address);
  tensor_nbytes_ = std::move(tensor_nbytes);
  plane_tensor_ = std::move(plane_tensor);
  plane_offset_ = std::move(plane_offset);
  jobs_.reserve(jobs.size());
  for (const JobTuple& t : jobs) {
    Job j;
    std::tie(j.slots_device, j.slots_host, j.num_tokens, j.skip_prefix, j.chunk, j.chunk_nbytes, j.chunk_on_device) = t;
    jobs_.push_back(j);
  }
  view_.device = device;
  view_.tensor_address = tensor_address_.data();
  view_.tensor_nbytes = tensor_nbytes_.data();
  view_.num_tensors = static_cast<int64_t>(tensor_address_.size());
  view_.plane_tensor = plane_tensor_.data();
  view_.plane_offset = plane_offset_.data();
  view_.plane_table_len = static_cast<int64_t>(plane_tensor_.size());
  view_.geometry = make_geometry(dims, kinds);
  view_.jobs = jobs_.data();
  view_.num_jobs = static_cast<int64_t>(jobs_.size());
}

HostPath host_path_from_int(int host_path) {
  if (host_path != 0 && host_path != 1) {
    throw ArgumentError("host_path: expected 0 (mapped) or 1 (staged), given " + std::to_string(host_path));
  }
  return static_cast<HostPath>(host_path);
}

}  // namespace lmcache_gpu
