/*
 * launcher.h - checked entry points of the host KV kernels (gather, scatter).
 *
 * A launcher checks every input - geometry, pointer-table lengths, each plane's extent inside
 * its tensor (overflow-checked), the chunk's size and every live slot - before the first byte is
 * written. It reads the caller's slot mapping once, into a copy that it checks and plans from. Then it
 * splits the work over OpenMP threads and runs the kernel template of kv_copy.h. It knows
 * nothing of Python or torch: the pybind11 binding and the cross-compiled aarch64 test driver
 * both call it.
 */
#ifndef LMCACHE_ARM_LAUNCHER_H_
#define LMCACHE_ARM_LAUNCHER_H_

#include <stddef.h>
#include <stdint.h>

#include <string>

#include "lmcache_core/kv_index.h"

namespace lmcache_arm {

/* Everything one gather or scatter needs; raw addresses, counts and strides only. */
struct TransferArgs {
  const uintptr_t* tensor_address = nullptr;  /* [num_tensors] byte address of each engine tensor's
                                                 element 0 (torch data_ptr) */
  const int64_t* tensor_nbytes = nullptr;     /* [num_tensors] bytes reachable from that address */
  int64_t num_tensors = 0;
  const int64_t* plane_tensor = nullptr;      /* [plane_table_len] tensor index of each plane */
  const int64_t* plane_offset = nullptr;      /* [plane_table_len] element offset of each plane */
  int64_t plane_table_len = 0;                /* must equal num_kinds * num_layers */
  lmcache_core::KVGeometry geometry{};        /* per plane kind: element size, strides, split axes */
  const int64_t* slot_mapping = nullptr;      /* [num_tokens] slot per chunk token, -1 = skip */
  int64_t num_tokens = 0;
  uintptr_t chunk_address = 0;                /* contiguous: per kind [num_layers, num_tokens, hidden_k] */
  int64_t chunk_nbytes = 0;                   /* must equal the chunk's exact size */
  int64_t skip_prefix = 0;                    /* tokens [0, skip_prefix) are not moved */
  int num_threads = 0;                        /* OpenMP threads; 0 = the OpenMP default */
};

/* Outcome of a launch: ok, or the message of a ValueError (argument, expected, given). */
struct Status {
  bool ok = true;
  std::string error;
};

/* Knobs measured in PERFORMANCE.md; the defaults are the measured best. */
struct Tuning {
  size_t memcpy_min_bytes;  /* runs of at least this many bytes use memcpy instead of NEON */
  int64_t max_span_bytes;   /* longest span of one plane handed to one thread, bytes */
  bool coalesce;            /* copy adjacent rows of a span as one run */
  int64_t prefetch_bytes;   /* software-prefetch this much of the next span's KV side; 0 = off */
  bool tokens_outer;        /* per-head runs: walk tokens outer (chunk in order) or heads outer (KV in order) */
  int64_t prefetch_distance; /* prefetch the span this many work items ahead (>= 1) */
  int64_t min_bytes_per_thread; /* at most one thread per this many bytes moved (>= 1) */
};

Tuning default_tuning();
Tuning get_tuning();
void set_tuning(const Tuning& tuning);

/* Check args completely, then copy KV rows into the chunk. Nothing is written unless ok. */
Status gather(const TransferArgs& args);

/* Check args completely, then copy chunk rows into KV. Nothing is written unless ok. */
Status scatter(const TransferArgs& args);

/* Checks alone (what gather and scatter check; they check their own copy of the slots). */
Status check_transfer(const TransferArgs& args);

/* "NEON native" or "NEON via SIMDe on x86_64". */
const char* isa();

/* Threads OpenMP would use by default (1 when built without OpenMP). */
int max_threads();

}  // namespace lmcache_arm

#endif  // LMCACHE_ARM_LAUNCHER_H_
