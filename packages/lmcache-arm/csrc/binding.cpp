/*
 * binding.cpp - pybind11 export of the launchers as lmcache_arm._C; export only, no logic.
 *
 * Takes raw addresses, byte counts, strides and the element size (no libtorch), releases the GIL
 * for the whole launch (checks included) and turns a failed check into ValueError.
 * Importing the module has no side effect.
 */
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "launcher.h"

namespace py = pybind11;

namespace {

using Dims = std::array<int64_t, 4>;  /* num_kinds, num_layers, num_blocks, block_size */
using Kind = std::array<int64_t, LMC_KV_KIND_FIELDS>;  /* one plane kind, flat (kv_index.h kv_kind_unpack) */

template <lmcache_arm::Status (*Launch)(const lmcache_arm::TransferArgs&)>
void transfer(const std::vector<uintptr_t>& tensor_address, const std::vector<int64_t>& tensor_nbytes,
              const std::vector<int64_t>& plane_tensor, const std::vector<int64_t>& plane_offset,
              const Dims& dims, const std::vector<Kind>& kinds, uintptr_t slot_mapping,
              int64_t num_tokens, uintptr_t chunk, int64_t chunk_nbytes, int64_t skip_prefix, int num_threads,
              int64_t stream) {
  (void)stream;  // host copies are synchronous: a stream handle is accepted and ignored
  if (tensor_address.size() != tensor_nbytes.size()) {
    throw py::value_error("tensor_nbytes: expected " + std::to_string(tensor_address.size()) +
                          " entries (one per tensor_address), given " + std::to_string(tensor_nbytes.size()));
  }
  if (plane_tensor.size() != plane_offset.size()) {
    throw py::value_error("plane_offset: expected " + std::to_string(plane_tensor.size()) +
                          " entries (one per plane_tensor entry), given " + std::to_string(plane_offset.size()));
  }
  if (kinds.size() != static_cast<size_t>(dims[0]) || kinds.empty() || kinds.size() > LMC_KV_MAX_KINDS) {
    throw py::value_error("kinds: expected num_kinds (dims[0] = " + std::to_string(dims[0]) + ", 1 to " +
                          std::to_string(LMC_KV_MAX_KINDS) + ") entries, given " + std::to_string(kinds.size()));
  }
  lmcache_arm::TransferArgs a;
  a.tensor_address = tensor_address.data();
  a.tensor_nbytes = tensor_nbytes.data();
  a.num_tensors = static_cast<int64_t>(tensor_address.size());
  a.plane_tensor = plane_tensor.data();
  a.plane_offset = plane_offset.data();
  a.plane_table_len = static_cast<int64_t>(plane_tensor.size());
  a.geometry = lmcache_core::KVGeometry{};
  a.geometry.num_kinds = dims[0];
  a.geometry.num_layers = dims[1];
  a.geometry.num_blocks = dims[2];
  a.geometry.block_size = dims[3];
  for (size_t k = 0; k < kinds.size(); ++k) a.geometry.kind[k] = lmcache_core::kv_kind_unpack(kinds[k].data());
  a.slot_mapping = reinterpret_cast<const int64_t*>(slot_mapping);
  a.num_tokens = num_tokens;
  a.chunk_address = chunk;
  a.chunk_nbytes = chunk_nbytes;
  a.skip_prefix = skip_prefix;
  a.num_threads = num_threads;
  lmcache_arm::Status st;
  {
    py::gil_scoped_release release;
    st = Launch(a);
  }
  if (!st.ok) throw py::value_error(st.error);
}

constexpr const char* kTransferDoc = R"(
    tensor_address: data_ptr() of each engine tensor [num_tensors]
    tensor_nbytes:  bytes reachable from each tensor_address [num_tensors]
    plane_tensor, plane_offset: [num_kinds * num_layers] tensor index and element offset of each plane
    dims:    (num_kinds, num_layers, num_blocks, block_size)
    kinds:   [num_kinds] 19 ints each: heads, width, element_size, block_stride, head_stride,
             token levels, sizes[3], strides[3], channel levels, sizes[3], strides[3] (elements)
    slot_mapping: address of int64 [num_tokens], -1 = skip
    chunk, chunk_nbytes: address and exact size of the contiguous chunk, per kind [num_layers, num_tokens, hidden_k]
    skip_prefix: tokens [0, skip_prefix) are not moved
    num_threads: OpenMP threads (0 = OpenMP default); stream: accepted and ignored on host
Raises ValueError, before writing anything, when any argument or slot is out of range.)";

template <typename Fn>
void def_transfer(py::module_& m, const char* name, Fn fn, const char* summary) {
  const std::string doc = std::string(summary) + "\n" + kTransferDoc;
  m.def(name, fn, doc.c_str(), py::arg("tensor_address"), py::arg("tensor_nbytes"), py::arg("plane_tensor"),
        py::arg("plane_offset"), py::arg("dims"), py::arg("kinds"), py::arg("slot_mapping"), py::arg("num_tokens"), py::arg("chunk"), py::arg("chunk_nbytes"),
        py::arg("skip_prefix"), py::arg("num_threads"), py::arg("stream") = 0);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lmcache-arm host KV kernels (NEON; through SIMDe off Arm). Raw pointers, no libtorch.";
  def_transfer(m, "gather", &transfer<lmcache_arm::gather>, "Copy KV rows into a chunk (paged KV -> chunk).");
  def_transfer(m, "scatter", &transfer<lmcache_arm::scatter>, "Copy chunk rows into KV (chunk -> paged KV).");
  m.def("isa", &lmcache_arm::isa, "How NEON is provided: 'NEON native' or 'NEON via SIMDe on x86_64'.");
  m.def("max_threads", &lmcache_arm::max_threads, "OpenMP's default thread count.");
  m.def(
      "get_tuning",
      [] {
        const auto t = lmcache_arm::get_tuning();
        return py::dict(py::arg("memcpy_min_bytes") = t.memcpy_min_bytes,
                        py::arg("max_span_bytes") = t.max_span_bytes, py::arg("coalesce") = t.coalesce,
                        py::arg("prefetch_bytes") = t.prefetch_bytes, py::arg("tokens_outer") = t.tokens_outer,
                        py::arg("prefetch_distance") = t.prefetch_distance,
                        py::arg("min_bytes_per_thread") = t.min_bytes_per_thread);
      },
      "Current copy policy (benchmarking knob): memcpy_min_bytes, max_span_bytes, coalesce, prefetch_bytes, "
      "tokens_outer, prefetch_distance, min_bytes_per_thread.");
  m.def(
      "set_tuning",
      [](size_t memcpy_min_bytes, int64_t max_span_bytes, bool coalesce, int64_t prefetch_bytes,
         bool tokens_outer, int64_t prefetch_distance, int64_t min_bytes_per_thread) {
        if (max_span_bytes < 1) {
          throw py::value_error("max_span_bytes: expected >= 1, given " + std::to_string(max_span_bytes));
        }
        if (prefetch_bytes < 0) {
          throw py::value_error("prefetch_bytes: expected >= 0, given " + std::to_string(prefetch_bytes));
        }
        if (prefetch_distance < 1) {
          throw py::value_error("prefetch_distance: expected >= 1, given " + std::to_string(prefetch_distance));
        }
        if (min_bytes_per_thread < 1) {
          throw py::value_error("min_bytes_per_thread: expected >= 1, given " + std::to_string(min_bytes_per_thread));
        }
        lmcache_arm::set_tuning(lmcache_arm::Tuning{memcpy_min_bytes, max_span_bytes, coalesce, prefetch_bytes,
                                                    tokens_outer, prefetch_distance, min_bytes_per_thread});
      },
      py::arg("memcpy_min_bytes"), py::arg("max_span_bytes"), py::arg("coalesce"), py::arg("prefetch_bytes") = 0,
      py::arg("tokens_outer") = true, py::arg("prefetch_distance") = 1, py::arg("min_bytes_per_thread") = 65536,
      "Set the copy policy (benchmarks only; results are bit-identical under every policy).");
  m.def(
      "reset_tuning", [] { lmcache_arm::set_tuning(lmcache_arm::default_tuning()); },
      "Restore the measured default copy policy.");
}
