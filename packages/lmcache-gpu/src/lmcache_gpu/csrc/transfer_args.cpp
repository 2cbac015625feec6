/*
 * transfer_args.cpp - TransferArgs from the binding's values (see transfer_args.h).
 */
#include "transfer_args.h"

#include <string>
#include <utility>

namespace lmcache_gpu {

KVGeometry make_geometry(const Dims& dims, const Strides& strides) {
  return KVGeometry{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5],
                    strides[0], strides[1], strides[2], strides[3]};
}

OwnedTransferArgs::OwnedTransferArgs(int device, std::vector<uintptr_t> tensor_address,
                                     std::vector<int64_t> tensor_nbytes, std::vector<int64_t> plane_tensor,
                                     std::vector<int64_t> plane_offset, const Dims& dims, const Strides& strides,
                                     int64_t element_size, const std::vector<JobTuple>& jobs) {
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
  view_.geometry = make_geometry(dims, strides);
  view_.element_size = element_size;
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
