/*
 * host_capsule.cpp - host memory as a self-freeing DLPack capsule (see host_capsule.h).
 *
 * The capsule owns the block until torch takes it (torch renames it "used_dltensor" and calls the
 * deleter when the last tensor view dies); a capsule never handed to torch frees the block itself.
 */
#include "host_capsule.h"

#include <cstdio>
#include <exception>

#include "argument_error.h"
#include "dlpack_min.h"
#include "runtime.h"

#ifndef LMC_BACKEND_NAME
#define LMC_BACKEND_NAME "gpu"
#endif

namespace py = pybind11;

namespace lmcache_gpu {

namespace {

HostKind host_kind(const std::string& kind) {
  if (kind == "pinned") return HostKind::kPinned;
  if (kind == "registered") return HostKind::kRegistered;
  if (kind == "pageable") return HostKind::kPageable;
  throw ArgumentError("kind: expected one of 'pinned', 'registered', 'pageable', given '" + kind + "'");
}

struct HostBlock {
  dlpack::ManagedTensor managed;
  int64_t shape[1];
  HostKind kind;
};

void host_block_deleter(dlpack::ManagedTensor* self) {
  auto* block = static_cast<HostBlock*>(self->manager_ctx);
  try {
    host_free(block->managed.dl_tensor.data, block->kind);
  } catch (const std::exception& e) {  // a deleter must not throw; the memory is lost, say so
    std::fprintf(stderr, "lmcache %s: freeing host memory failed: %s\n", LMC_BACKEND_NAME, e.what());
  }
  delete block;
}

/* Called when the capsule dies; frees the block only if torch never took it ("used_dltensor"). */
void dltensor_capsule_destructor(PyObject* capsule) {
  if (PyCapsule_IsValid(capsule, "dltensor")) {
    auto* managed = static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
    if (managed != nullptr && managed->deleter != nullptr) managed->deleter(managed);
  }
}

}  // namespace

py::object alloc_host_capsule(int64_t nbytes, const std::string& kind_name, int device) {
  const HostKind kind = host_kind(kind_name);
  if (nbytes < 1) throw ArgumentError("nbytes: expected >= 1, given " + std::to_string(nbytes));
  void* data = nullptr;
  {
    py::gil_scoped_release release;
    data = host_alloc(static_cast<size_t>(nbytes), kind, device);
  }
  auto* block = new HostBlock{};
  block->shape[0] = nbytes;
  block->kind = kind;
  dlpack::Tensor& t = block->managed.dl_tensor;
  t.data = data;
  t.device = {dlpack::kDLCPU, 0};
  t.ndim = 1;
  t.dtype = {dlpack::kDLUInt, 8, 1};
  t.shape = block->shape;
  t.strides = nullptr;
  t.byte_offset = 0;
  block->managed.manager_ctx = block;
  block->managed.deleter = host_block_deleter;
  PyObject* capsule = PyCapsule_New(&block->managed, "dltensor", dltensor_capsule_destructor);
  if (capsule == nullptr) {
    host_block_deleter(&block->managed);
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(capsule);
}

}  // namespace lmcache_gpu
