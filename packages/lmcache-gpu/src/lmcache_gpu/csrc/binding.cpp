/*
 * binding.cpp - pybind11 export of the GPU launcher and runtime services as <package>._C; exports
 * only: each function converts Python values to the C++ call's and its result back, nothing more.
 *
 * Host compiler only (no CUDA/HIP header): it sees launcher.h, runtime.h, plan.h and the two
 * helpers that build call arguments (transfer_args.h) and hand host memory to torch as a DLPack
 * capsule (host_capsule.h). Takes raw addresses, byte counts, strides and the element size (no
 * libtorch), releases the GIL while the launcher runs, and maps ArgumentError to ValueError,
 * runtime failures to RuntimeError. Importing the module has no side effect: no runtime call
 * happens until a function is called.
 *
 * Build definitions: LMC_BACKEND_NAME ("cuda" / "rocm"), LMC_BUILD_ARCHS ("sm_80;sm_90;compute_90"
 * / "gfx90a").
 */
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "host_capsule.h"
#include "launcher.h"
#include "plan.h"
#include "runtime.h"
#include "transfer_args.h"

#ifndef LMC_BACKEND_NAME
#define LMC_BACKEND_NAME "cuda"
#endif
#ifndef LMC_BUILD_ARCHS
#define LMC_BUILD_ARCHS ""
#endif

namespace py = pybind11;
namespace gpu = lmcache_gpu;

namespace {

constexpr const char* kTransferDoc = R"(
    device: device index of the KV tensors
    tensor_address: data_ptr() of each engine tensor [num_tensors]
    tensor_nbytes:  bytes reachable from each tensor_address [num_tensors]
    plane_tensor, plane_offset: [num_kinds * num_layers] tensor index and element offset of each plane
    dims:    (num_kinds, num_layers, num_blocks, block_size)
    kinds:   [num_kinds] 19 ints each: heads, width, element_size, block_stride, head_stride,
             token levels, sizes[3], strides[3], channel levels, sizes[3], strides[3] (elements)
    jobs: one tuple per chunk: (slots_device, slots_host, num_tokens, skip_prefix, chunk, chunk_nbytes,
          chunk_on_device); slots_* are addresses of int64 [num_tokens] (-1 = skip), 0 when absent
          (at least one given); chunk is contiguous, per kind [num_layers, num_tokens, hidden_k]
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
         std::vector<int64_t> plane_tensor, std::vector<int64_t> plane_offset, const gpu::Dims& dims,
         const gpu::Kinds& kinds, const std::vector<gpu::JobTuple>& jobs, int host_path, uintptr_t stream) {
        const gpu::HostPath path = gpu::host_path_from_int(host_path);
        const gpu::OwnedTransferArgs args(device, std::move(tensor_address), std::move(tensor_nbytes),
                                          std::move(plane_tensor), std::move(plane_offset), dims, kinds, jobs);
        py::gil_scoped_release release;
        return gpu::transfer(args.view(), gather, path, stream);
      },
      (std::string("Gather (gather=True: KV -> chunks) or scatter chunks on a stream, asynchronously.\n") +
       kTransferDoc)
          .c_str(),
      py::arg("gather"), py::arg("device"), py::arg("tensor_address"), py::arg("tensor_nbytes"),
      py::arg("plane_tensor"), py::arg("plane_offset"), py::arg("dims"), py::arg("kinds"), py::arg("jobs"),
      py::arg("host_path"), py::arg("stream"));

  m.def(
      "plane_addresses",
      [](std::vector<uintptr_t> tensor_address, std::vector<int64_t> tensor_nbytes, std::vector<int64_t> plane_tensor,
         std::vector<int64_t> plane_offset, const gpu::Dims& dims, const gpu::Kinds& kinds) {
        const gpu::OwnedTransferArgs args(0, std::move(tensor_address), std::move(tensor_nbytes),
                                          std::move(plane_tensor), std::move(plane_offset), dims, kinds, {});
        gpu::check_layout(args.view());
        return gpu::plane_addresses(args.view());
      },
      "Checked pointer table: byte address of each plane [num_kinds * num_layers] (what is uploaded to the "
      "device).",
      py::arg("tensor_address"), py::arg("tensor_nbytes"), py::arg("plane_tensor"), py::arg("plane_offset"),
      py::arg("dims"), py::arg("kinds"));

  m.def(
      "plan",
      [](const std::vector<uintptr_t>& planes, const std::vector<uintptr_t>& chunks, const gpu::Dims& dims,
         const gpu::Kinds& kinds) {
        gpu::TransferArgs a;
        a.geometry = gpu::make_geometry(dims, kinds);
        const gpu::CopyPlan p = gpu::plan_copy(a, planes, chunks);
        const auto per_kind = [&p](const int64_t* v) { return std::vector<int64_t>(v, v + p.num_kinds); };
        return py::dict(py::arg("vector_bytes") = p.vector_bytes, py::arg("row_bytes") = per_kind(p.row_bytes),
                        py::arg("run_bytes") = per_kind(p.run_bytes),
                        py::arg("vecs_per_row") = per_kind(p.vecs_per_row),
                        py::arg("vecs_per_run") = per_kind(p.vecs_per_run), py::arg("group_threads") = p.group_threads);
      },
      "The launch plan for these plane and chunk addresses: vector_bytes (16/8/4/2/1, one for all kinds), per "
      "plane kind row_bytes, run_bytes, vecs_per_row, vecs_per_run, and group_threads (threads per row).",
      py::arg("planes"), py::arg("chunks"), py::arg("dims"), py::arg("kinds"));

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

  m.def("alloc_host", &gpu::alloc_host_capsule,
        "DLPack capsule (torch.from_dlpack) of uint8 [nbytes] host memory that frees itself; kind: 'pinned' "
        "(HostAlloc, portable + mapped), 'registered' (page-aligned allocation + HostRegister) or 'pageable'; "
        "page-locked kinds are allocated with `device` current (-1: the thread's current device).",
        py::arg("nbytes"), py::arg("kind"), py::arg("device") = -1);
  m.def("host_alloc_name", &gpu::host_alloc_name, "The runtime call behind kind 'pinned' (named by gpu_compat.h).");
  m.def("live_host_allocations", &gpu::live_host_allocations, "Host allocations from alloc_host not yet freed.");
  m.def(
      "host_register",
      [](uintptr_t ptr, size_t nbytes) { gpu::host_register(reinterpret_cast<void*>(ptr), nbytes); },
      "Page-lock existing host memory (portable, mapped).", py::arg("ptr"), py::arg("nbytes"));
  m.def(
      "host_unregister", [](uintptr_t ptr) { gpu::host_unregister(reinterpret_cast<void*>(ptr)); },
      "Undo host_register.", py::arg("ptr"));

  m.def("stream_create", &gpu::stream_create, "New non-blocking stream on a device, as an integer handle.",
        py::arg("device"));
  m.def("stream_destroy", &gpu::stream_release, py::call_guard<py::gil_scoped_release>(),
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

  m.attr("IPC_HANDLE_BYTES") = gpu::kIpcHandleBytes;
  m.def(
      "ipc_mem_export",
      [](uintptr_t ptr, int device) {
        const gpu::IpcMemExport e = gpu::ipc_mem_export(ptr, device);
        return py::make_tuple(py::bytes(e.handle), e.base, e.nbytes);
      },
      "(handle: 64 bytes, base, nbytes) of the allocation holding device address ptr on `device`.",
      py::arg("ptr"), py::arg("device"));
  m.def(
      "ipc_mem_open",
      [](const py::bytes& handle, int device) {
        const gpu::IpcMapping m = gpu::ipc_mem_open(handle, device);
        return py::make_tuple(m.base, m.nbytes);
      },
      "Map another process's allocation (its 64-byte handle) on `device`: (base here, nbytes as this "
      "process's runtime reports the mapping).",
      py::arg("handle"), py::arg("device"));
  m.def("ipc_mem_close", &gpu::ipc_mem_close, py::call_guard<py::gil_scoped_release>(),
        "Unmap a base from ipc_mem_open.", py::arg("base"), py::arg("device"));
  m.def("open_ipc_mappings", &gpu::open_ipc_mappings, "Mappings from ipc_mem_open not yet closed.");
  m.def("ipc_event_create", &gpu::ipc_event_create,
        "New interprocess event (timing disabled) on `device`, not pooled (event_destroy).", py::arg("device"));
  m.def(
      "ipc_event_export",
      [](uintptr_t event, int device) { return py::bytes(gpu::ipc_event_export(event, device)); },
      "64-byte handle of an event from ipc_event_create.", py::arg("event"), py::arg("device"));
  m.def(
      "ipc_event_open", [](const py::bytes& handle, int device) { return gpu::ipc_event_open(handle, device); },
      "Open another process's event (its 64-byte handle) on `device`; integer handle.", py::arg("handle"),
      py::arg("device"));
  m.def("event_record_on", &gpu::event_record_on,
        "Record an existing event (IPC, made here or opened) on a stream of `device`.", py::arg("event"),
        py::arg("stream"), py::arg("device"));

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
