/*
 * binding.cpp - pybind11 export of the GPU launchers as <package>._C; export only, no logic.
 *
 * Host compiler only (no CUDA/HIP header): it sees launcher.h and plan.h. Takes raw addresses,
 * byte counts, strides and the element size (no libtorch), releases the GIL while the launcher
 * runs, and maps ArgumentError to ValueError, runtime failures to RuntimeError. Host memory is
 * handed to torch as a DLPack capsule whose deleter frees it. Importing the module has no side
 * effect: no runtime call happens until a function is called.
 *
 * Build definitions: LMC_BACKEND_NAME ("cuda" / "rocm"), LMC_BUILD_ARCHS ("sm_80;sm_90;compute_90"
 * / "gfx90a").
 */
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <tuple>
#include <vector>

#include "dlpack_min.h"
#include "launcher.h"
#include "plan.h"

#ifndef LMC_BACKEND_NAME
#define LMC_BACKEND_NAME "cuda"
#endif
#ifndef LMC_BUILD_ARCHS
#define LMC_BUILD_ARCHS ""
#endif

namespace py = pybind11;
namespace gpu = lmcache_gpu;

namespace {

using Dims = std::array<int64_t, 6>;     /* num_kv, num_layers, num_blocks, block_size, num_kv_heads, head_size */
using Strides = std::array<int64_t, 4>;  /* block, token, head, channel; elements */
/* slots_device, slots_host, num_tokens, skip_prefix, chunk, chunk_nbytes, chunk_on_device */
using JobTuple = std::tuple<uintptr_t, uintptr_t, int64_t, int64_t, uintptr_t, int64_t, bool>;

/* The launcher's argument struct over vectors that outlive it. */
struct Args {
  std::vector<uintptr_t> tensor_address;
  std::vector<int64_t> tensor_nbytes, plane_tensor, plane_offset;
  std::vector<gpu::Job> jobs;
  gpu::TransferArgs a;
};

void make_args(Args* out, int device, std::vector<uintptr_t> tensor_address, std::vector<int64_t> tensor_nbytes,
               std::vector<int64_t> plane_tensor, std::vector<int64_t> plane_offset, const Dims& dims,
               const Strides& strides, int64_t element_size, const std::vector<JobTuple>& jobs) {
  if (tensor_address.size() != tensor_nbytes.size()) {
    throw py::value_error("tensor_nbytes: expected " + std::to_string(tensor_address.size()) +
                          " entries (one per tensor_address), given " + std::to_string(tensor_nbytes.size()));
  }
  if (plane_tensor.size() != plane_offset.size()) {
    throw py::value_error("plane_offset: expected " + std::to_string(plane_tensor.size()) +
                          " entries (one per plane_tensor entry), given " + std::to_string(plane_offset.size()));
  }
  if (device < 0) throw py::value_error("device: expected a device index >= 0, given " + std::to_string(device));
  out->tensor_address = std::move(tensor_address);
  out->tensor_nbytes = std::move(tensor_nbytes);
  out->plane_tensor = std::move(plane_tensor);
  out->plane_offset = std::move(plane_offset);
  for (const JobTuple& t : jobs) {
    gpu::Job j;
    std::tie(j.slots_device, j.slots_host, j.num_tokens, j.skip_prefix, j.chunk, j.chunk_nbytes, j.chunk_on_device) = t;
    out->jobs.push_back(j);
  }
  gpu::TransferArgs& a = out->a;
  a.device = device;
  a.tensor_address = out->tensor_address.data();
  a.tensor_nbytes = out->tensor_nbytes.data();
  a.num_tensors = static_cast<int64_t>(out->tensor_address.size());
  a.plane_tensor = out->plane_tensor.data();
  a.plane_offset = out->plane_offset.data();
  a.plane_table_len = static_cast<int64_t>(out->plane_tensor.size());
  a.geometry = lmcache_core::KVGeometry{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5],
                                        strides[0], strides[1], strides[2], strides[3]};
  a.element_size = element_size;
  a.jobs = out->jobs.data();
  a.num_jobs = static_cast<int64_t>(out->jobs.size());
}

gpu::HostKind host_kind(const std::string& kind) {
  if (kind == "pinned") return gpu::HostKind::kPinned;
  if (kind == "registered") return gpu::HostKind::kRegistered;
  if (kind == "pageable") return gpu::HostKind::kPageable;
  throw py::value_error("kind: expected one of 'pinned', 'registered', 'pageable', given '" + kind + "'");
}

/* ---- host memory as a DLPack capsule ------------------------------------------------------- */

struct HostBlock {
  gpu::dlpack::ManagedTensor managed;
  int64_t shape[1];
  gpu::HostKind kind;
};

void host_block_deleter(gpu::dlpack::ManagedTensor* self) {
  auto* block = static_cast<HostBlock*>(self->manager_ctx);
  try {
    gpu::host_free(block->managed.dl_tensor.data, block->kind);
  } catch (const std::exception& e) {  // a deleter must not throw; the memory is lost, say so
    std::fprintf(stderr, "lmcache %s: freeing host memory failed: %s\n", LMC_BACKEND_NAME, e.what());
  }
  delete block;
}

/* Called when the capsule dies; frees the block only if torch never took it ("used_dltensor"). */
void dltensor_capsule_destructor(PyObject* capsule) {
  if (PyCapsule_IsValid(capsule, "dltensor")) {
    auto* managed = static_cast<gpu::dlpack::ManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
    if (managed != nullptr && managed->deleter != nullptr) managed->deleter(managed);
  }
}

py::object alloc_host(int64_t nbytes, const std::string& kind_name, int device) {
  const gpu::HostKind kind = host_kind(kind_name);
  if (nbytes < 1) throw py::value_error("nbytes: expected >= 1, given " + std::to_string(nbytes));
  void* data = nullptr;
  {
    py::gil_scoped_release release;
    data = gpu::host_alloc(static_cast<size_t>(nbytes), kind, device);
  }
  auto* block = new HostBlock{};
  block->shape[0] = nbytes;
  block->kind = kind;
  gpu::dlpack::Tensor& t = block->managed.dl_tensor;
  t.data = data;
  t.device = {gpu::dlpack::kDLCPU, 0};
  t.ndim = 1;
  t.dtype = {gpu::dlpack::kDLUInt, 8, 1};
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

constexpr const char* kTransferDoc = R"(
    device: device index of the KV tensors
    tensor_address: data_ptr() of each engine tensor [num_tensors]
    tensor_nbytes:  bytes reachable from each tensor_address [num_tensors]
    plane_tensor, plane_offset: [num_kv * num_layers] tensor index and element offset of each plane
    dims:    (num_kv, num_layers, num_blocks, block_size, num_kv_heads, head_size)
    strides: (block, token, head, channel) strides inside a plane, elements
    element_size: bytes per element (1, 2, 4 or 8)
    jobs: one tuple per chunk: (slots_device, slots_host, num_tokens, skip_prefix, chunk, chunk_nbytes,
          chunk_on_device); slots_* are addresses of int64 [num_tokens] (-1 = skip), 0 when absent
          (at least one given); chunk is contiguous [num_kv, num_layers, num_tokens, hidden]
    host_path: 0 = mapped (kernel reaches page-locked host chunks directly), 1 = staged
    stream: stream handle (0 = legacy default stream)
Returns, per chunk, the path taken. Raises ValueError, before writing anything, when any argument
or live slot is out of range; RuntimeError naming the runtime call that failed.)";

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lmcache " LMC_BACKEND_NAME " GPU KV kernels (one source for CUDA and HIP). Raw pointers, no libtorch.";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const gpu::ArgumentError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  m.def(
      "transfer",
      [](bool gather, int device, std::vector<uintptr_t> tensor_address, std::vector<int64_t> tensor_nbytes,
         std::vector<int64_t> plane_tensor, std::vector<int64_t> plane_offset, const Dims& dims,
         const Strides& strides, int64_t element_size, const std::vector<JobTuple>& jobs, int host_path,
         uintptr_t stream) {
        if (host_path != 0 && host_path != 1) {
          throw py::value_error("host_path: expected 0 (mapped) or 1 (staged), given " + std::to_string(host_path));
        }
        Args args;
        make_args(&args, device, std::move(tensor_address), std::move(tensor_nbytes), std::move(plane_tensor),
                  std::move(plane_offset), dims, strides, element_size, jobs);
        py::gil_scoped_release release;
        return gpu::transfer(args.a, gather, static_cast<gpu::HostPath>(host_path), stream);
      },
      (std::string("Gather (gather=True: KV -> chunks) or scatter chunks on a stream, asynchronously.\n") +
       kTransferDoc)
          .c_str(),
      py::arg("gather"), py::arg("device"), py::arg("tensor_address"), py::arg("tensor_nbytes"),
      py::arg("plane_tensor"), py::arg("plane_offset"), py::arg("dims"), py::arg("strides"),
      py::arg("element_size"), py::arg("jobs"), py::arg("host_path"), py::arg("stream"));

  m.def(
      "plane_addresses",
      [](std::vector<uintptr_t> tensor_address, std::vector<int64_t> tensor_nbytes, std::vector<int64_t> plane_tensor,
         std::vector<int64_t> plane_offset, const Dims& dims, const Strides& strides, int64_t element_size) {
        Args args;
        make_args(&args, 0, std::move(tensor_address), std::move(tensor_nbytes), std::move(plane_tensor),
                  std::move(plane_offset), dims, strides, element_size, {});
        gpu::check_layout(args.a);
        return gpu::plane_addresses(args.a);
      },
      "Checked pointer table: byte address of each plane [num_kv * num_layers] (what is uploaded to the device).",
      py::arg("tensor_address"), py::arg("tensor_nbytes"), py::arg("plane_tensor"), py::arg("plane_offset"),
      py::arg("dims"), py::arg("strides"), py::arg("element_size"));

  m.def(
      "plan",
      [](const std::vector<uintptr_t>& planes, const std::vector<uintptr_t>& chunks, const Dims& dims,
         const Strides& strides, int64_t element_size) {
        gpu::TransferArgs a;
        a.geometry = lmcache_core::KVGeometry{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5],
                                              strides[0], strides[1], strides[2], strides[3]};
        a.element_size = element_size;
        const gpu::CopyPlan p = gpu::plan_copy(a, planes, chunks);
        return py::dict(py::arg("vector_bytes") = p.vector_bytes, py::arg("row_bytes") = p.row_bytes,
                        py::arg("run_bytes") = p.run_bytes, py::arg("vecs_per_row") = p.vecs_per_row,
                        py::arg("vecs_per_run") = p.vecs_per_run, py::arg("group_threads") = p.group_threads);
      },
      "The launch plan for these plane and chunk addresses: vector_bytes (16/8/4/2/1), row_bytes, run_bytes, "
      "vecs_per_row, vecs_per_run, group_threads (threads per row).",
      py::arg("planes"), py::arg("chunks"), py::arg("dims"), py::arg("strides"), py::arg("element_size"));

  m.def(
      "device_count",
      [] {
        std::string error;
        const int n = gpu::device_count(&error);
        return py::make_tuple(n, error);
      },
      "(devices the runtime sees, the runtime's error text or '').");
  m.def(
      "device_info",
      [](int device) {
        const gpu::DeviceInfo d = gpu::device_info(device);
        return py::dict(py::arg("name") = d.name, py::arg("arch") = d.arch,
                        py::arg("multiprocessors") = d.multiprocessors, py::arg("total_memory") = d.total_memory,
                        py::arg("can_map_host_memory") = d.can_map_host_memory);
      },
      "name, arch ('sm_90' / 'gfx90a'), multiprocessors, total_memory (bytes), can_map_host_memory.",
      py::arg("device"));
  m.def("kernel_image_error", &gpu::kernel_image_error,
        "'' when this build's kernels run on the device, else the runtime's reason.", py::arg("device"));

  m.def("alloc_host", &alloc_host,
        "DLPack capsule (torch.from_dlpack) of uint8 [nbytes] host memory that frees itself; kind: 'pinned' "
        "(HostAlloc, portable + mapped), 'registered' (page-aligned allocation + HostRegister) or 'pageable'; "
        "page-locked kinds are allocated with `device` current (-1: the thread's current device).",
        py::arg("nbytes"), py::arg("kind"), py::arg("device") = -1);
  m.def("host_alloc_name", &gpu::host_alloc_name, "The runtime call behind kind 'pinned' (named by gpu_compat.h).");
  m.def("live_host_allocations", &gpu::live_host_allocations, "Host allocations from alloc_host not yet freed.");
  m.def(
      "host_register",
      [](uintptr_t ptr, int64_t nbytes) {
        if (ptr == 0 || nbytes < 1) {
          throw py::value_error("host_register: expected a non-null address and nbytes >= 1, given nbytes " +
                                std::to_string(nbytes));
        }
        gpu::host_register(reinterpret_cast<void*>(ptr), static_cast<size_t>(nbytes));
      },
      "Page-lock existing host memory (portable, mapped).", py::arg("ptr"), py::arg("nbytes"));
  m.def(
      "host_unregister", [](uintptr_t ptr) { gpu::host_unregister(reinterpret_cast<void*>(ptr)); },
      "Undo host_register.", py::arg("ptr"));

  m.def("stream_create", &gpu::stream_create, "New non-blocking stream on a device, as an integer handle.",
        py::arg("device"));
  m.def("stream_destroy", &gpu::stream_destroy, py::call_guard<py::gil_scoped_release>(),
        "Destroy a stream from stream_create (and its staging buffers).", py::arg("stream"));
  m.def("stream_synchronize", &gpu::stream_synchronize, py::call_guard<py::gil_scoped_release>(),
        "Wait for a stream (device: the stream's, -1 = the thread's current device).", py::arg("stream"),
        py::arg("device") = -1);
  m.def("event_record", &gpu::event_record,
        "Record an event (from a per-device pool) on a stream of `device`; integer handle.", py::arg("stream"),
        py::arg("device"));
  m.def("stream_wait_event", &gpu::stream_wait_event,
        "Make a stream of `device` wait on the device for an event (the host does not wait).", py::arg("stream"),
        py::arg("event"), py::arg("device"));
  m.def("event_query", &gpu::event_query, "True when the event completed; never blocks.", py::arg("event"),
        py::arg("device"));
  m.def("event_synchronize", &gpu::event_synchronize, py::call_guard<py::gil_scoped_release>(),
        "Wait for an event.", py::arg("event"), py::arg("device"));
  m.def("event_release", &gpu::event_release, "Give an event back to the pool (safe while pending).",
        py::arg("event"), py::arg("device"));
  m.def("event_destroy", &gpu::event_destroy, "Destroy an event (safe while pending).", py::arg("event"));
  m.def("device_synchronize", &gpu::device_synchronize, py::call_guard<py::gil_scoped_release>(),
        "Wait for all work on a device.", py::arg("device"));

  m.def(
      "cache_stats",
      [] {
        const gpu::CacheStats s = gpu::cache_stats();
        return py::dict(py::arg("plane_tables") = s.plane_tables,
                        py::arg("plane_table_uploads") = s.plane_table_uploads,
                        py::arg("plane_table_hits") = s.plane_table_hits, py::arg("staging_bytes") = s.staging_bytes,
                        py::arg("slot_copies") = s.slot_copies, py::arg("pooled_events") = s.pooled_events);
      },
      "Resident plane tables, uploads and reuses since load, staging bytes held, device slot mappings copied.");
  m.def("release_caches", &gpu::release_caches, py::call_guard<py::gil_scoped_release>(),
        "Free cached plane tables and staging buffers (waits for the devices).");
  m.def(
      "build_info",
      [] {
        return py::dict(py::arg("backend") = LMC_BACKEND_NAME, py::arg("runtime") = gpu::runtime_name(),
                        py::arg("runtime_version") = gpu::runtime_version(), py::arg("archs") = LMC_BUILD_ARCHS,
                        py::arg("max_jobs_per_launch") = gpu::kMaxJobsPerLaunch);
      },
      "backend, runtime ('CUDA'/'HIP'), runtime_version compiled against, archs (';'-separated), "
      "max_jobs_per_launch.");
}
