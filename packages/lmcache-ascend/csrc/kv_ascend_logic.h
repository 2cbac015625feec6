/*
 * kv_ascend_logic.h - the AscendC gather/scatter kernel's logic, apart from AscendC's copy primitives.
 *
 * One kernel moves every (kind, layer) plane of one layer group between paged KV and a contiguous
 * chunk, over a device-side table of tensor addresses. Its index math is lmcache_core/kv_index.h's
 * (split token and channel axes, per-kind width, heads and element size; one chunk section per
 * kind), so every NPU layout - vllm_ascend (K, V of their own widths), vllm_ascend_mla (nope 512 +
 * rope 64, DSA + indexer 128) and sglang_npu - runs through the same code.
 *
 * The logic is a template over a primitives type P, the only place that knows AscendC:
 *
 *   int64_t P::block_idx()                    this AI core's index in the launch, 0..block_num-1
 *   int64_t P::block_num()                    cores launched
 *   int64_t P::load_i64(uint64_t address)     one int64 scalar read from global memory
 *   void    P::copy(uint64_t dst, uint64_t src, int64_t nbytes)
 *                                             global -> global copy of nbytes (through the UB on
 *                                             an NPU), complete when it returns for this core
 *
 * ascendc_primitives.h implements them with AscendC (GlobalTensor, DataCopyPad through a TBuf);
 * host_primitives.h implements them on plain memory (memcpy), so the host emulation test runs
 * this very logic serially, block after block, on CPU tensors.
 *
 * Arguments: three global-memory addresses. `args` is the packed int64 table described by the
 * enum below (lmcache_ascend.kernel_args.pack builds it), `slots` the int64 slot mapping
 * [num_tokens] (-1 skips a token), `chunk` the contiguous chunk of num_tokens tokens (one section
 * [num_layers, num_tokens, hidden_k] per kind, back to back). Every extent and slot is checked on
 * the host (ascend_checks.h, kv_checks.h) before a launch: this code does no validation.
 *
 * Work split: rows (plane, chunk token) for tokens in [skip_prefix, num_tokens), row r on core
 * r % block_num; each row moves its longest contiguous runs (kv_contiguous_run): the whole token
 * row when heads are adjacent, a head row, a packed channel group, or one element.
 */
#ifndef LMCACHE_ASCEND_KV_ASCEND_LOGIC_H_
#define LMCACHE_ASCEND_KV_ASCEND_LOGIC_H_

#include <stdint.h>

#include "lmcache_core/kv_index.h"

namespace lmcache_ascend {

/* Word indices of the packed argument table (int64 words). */
enum ArgsWord : int64_t {
  kArgsMagic = 0,       /* kArgsMagicValue: the table's format */
  kArgsGather = 1,      /* 1: paged KV -> chunk, 0: chunk -> paged KV */
  kArgsNumTokens = 2,   /* tokens in the chunk and the slot mapping */
  kArgsSkipPrefix = 3,  /* tokens [0, skip_prefix) are not moved */
  kArgsNumTensors = 4,  /* engine tensors in the address table */
  kArgsNumKinds = 5,    /* plane kinds, 1..LMC_KV_MAX_KINDS */
  kArgsNumLayers = 6,
  kArgsNumBlocks = 7,
  kArgsBlockSize = 8,
  kArgsKinds = 9,       /* LMC_KV_MAX_KINDS * LMC_KV_KIND_FIELDS words (kv_kind_unpack order) */
  /* then tensor_address[num_tensors], plane_tensor[num_planes], plane_offset[num_planes] */
};

/* "LMCASC01" read as a little-endian int64: the version of the table's format. */
#define LMC_ASCEND_ARGS_MAGIC 0x3130435341434d4cLL
/* Header words before the tensor addresses. */
constexpr int64_t kArgsHeader = static_cast<int64_t>(kArgsKinds) + LMC_KV_MAX_KINDS * LMC_KV_KIND_FIELDS;

/* Words of a packed table for num_tensors tensors and num_planes planes. */
LMC_HOST_DEVICE inline int64_t args_words(int64_t num_tensors, int64_t num_planes) {
  return kArgsHeader + num_tensors + 2 * num_planes;
}

/* Geometry of the packed table (scalar reads through P). */
template <class P>
LMC_HOST_DEVICE inline lmcache_core::KVGeometry load_geometry(P& p, uint64_t args) {
  lmcache_core::KVGeometry g;
  g.num_kinds = p.load_i64(args + 8 * kArgsNumKinds);
  g.num_layers = p.load_i64(args + 8 * kArgsNumLayers);
  g.num_blocks = p.load_i64(args + 8 * kArgsNumBlocks);
  g.block_size = p.load_i64(args + 8 * kArgsBlockSize);
  for (int64_t k = 0; k < LMC_KV_MAX_KINDS; ++k) {
    int64_t fields[LMC_KV_KIND_FIELDS];
    for (int64_t f = 0; f < LMC_KV_KIND_FIELDS; ++f) {
      fields[f] = p.load_i64(args + 8 * (kArgsKinds + k * LMC_KV_KIND_FIELDS + f));
    }
    g.kind[k] = lmcache_core::kv_kind_unpack(fields);
  }
  return g;
}

/* Move one row's bytes: a chunk row of `kind` <-> the paged row at plane byte address `plane`. */
template <class P>
LMC_HOST_DEVICE inline void move_row(P& p, const lmcache_core::KVGeometry& g, int64_t kind, bool gather,
                                     uint64_t plane, int64_t slot, uint64_t chunk_row) {
  const lmcache_core::KVKindGeometry& k = g.kind[kind];
  const int64_t es = k.element_size;
  const uint64_t row = plane + static_cast<uint64_t>(lmcache_core::kv_plane_row(g, kind, slot) * es);
  const int64_t hidden = lmcache_core::kv_kind_hidden(g, kind);
  const int64_t run = lmcache_core::kv_contiguous_run(g, kind);
  if (run == hidden) {
    if (gather) {
      p.copy(chunk_row, row, hidden * es);
    } else {
      p.copy(row, chunk_row, hidden * es);
    }
    return;
  }
  for (int64_t h = 0; h < k.heads; ++h) {
    for (int64_t c = 0; c < k.width; c += run) {
      const uint64_t kv = row + static_cast<uint64_t>((h * k.head_stride + lmcache_core::kv_split_offset(k.channel, c)) * es);
      const uint64_t ch = chunk_row + static_cast<uint64_t>((h * k.width + c) * es);
      if (gather) {
        p.copy(ch, kv, run * es);
      } else {
        p.copy(kv, ch, run * es);
      }
    }
  }
}

/* The kernel body: this core's rows of the transfer described by `args` (see the file comment). */
template <class P>
LMC_HOST_DEVICE inline void kv_transfer(P& p, uint64_t args, uint64_t slots, uint64_t chunk) {
  const bool gather = p.load_i64(args + 8 * kArgsGather) != 0;
  const int64_t num_tokens = p.load_i64(args + 8 * kArgsNumTokens);
  const int64_t skip = p.load_i64(args + 8 * kArgsSkipPrefix);
  const int64_t num_tensors = p.load_i64(args + 8 * kArgsNumTensors);
  const lmcache_core::KVGeometry g = load_geometry(p, args);
  const int64_t planes = lmcache_core::kv_num_planes(g);
  const uint64_t tensor_address = args + 8 * kArgsHeader;
  const uint64_t plane_tensor = tensor_address + 8 * num_tensors;
  const uint64_t plane_offset = plane_tensor + 8 * planes;
  const int64_t live = num_tokens - skip;
  const int64_t rows = planes * live;
  for (int64_t r = p.block_idx(); r < rows; r += p.block_num()) {
    const int64_t plane_index = r / live;
    const int64_t token = skip + (r - plane_index * live);
    const int64_t slot = p.load_i64(slots + 8 * token);
    if (slot < 0) continue;
    const int64_t kind = plane_index / g.num_layers;
    const int64_t layer = plane_index - kind * g.num_layers;
    const int64_t tensor = p.load_i64(plane_tensor + 8 * plane_index);
    const uint64_t base = static_cast<uint64_t>(p.load_i64(tensor_address + 8 * tensor));
    const uint64_t plane =
        base + static_cast<uint64_t>(p.load_i64(plane_offset + 8 * plane_index) * g.kind[kind].element_size);
    const uint64_t chunk_row =
        chunk + static_cast<uint64_t>(lmcache_core::kv_chunk_row_bytes(g, kind, layer, token, num_tokens));
    move_row(p, g, kind, gather, plane, slot, chunk_row);
  }
}

}  // namespace lmcache_ascend

#endif  // LMCACHE_ASCEND_KV_ASCEND_LOGIC_H_
