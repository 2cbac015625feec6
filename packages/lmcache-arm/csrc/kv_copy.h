/*
 * kv_copy.h - the one stride-walking kernel: copy one span of tokens of one plane between paged
 * KV and a contiguous chunk, for every layout the core describes (no per-format code path).
 *
 * Header-only kernel template, host-only, no allocation, no checks: the launcher (launcher.cpp)
 * validates every pointer, extent and slot before it calls copy_span. Index math comes from the
 * core's portable header lmcache_core/kv_index.h; the bytes move through row_copy.h (NEON).
 *
 * Named axes: a plane is one (kind, layer) pair of the engine's KV (kinds: K and V, an MLA latent,
 * nope + rope + indexer ...), addressed by the kind's block and head strides and its split token and
 * channel axes; the chunk holds one section [num_layers, num_tokens, hidden_k] per kind with
 * hidden_k = heads_k * width_k, so one plane's chunk rows are [num_tokens, hidden_k].
 */
#ifndef LMCACHE_ARM_KV_COPY_H_
#define LMCACHE_ARM_KV_COPY_H_

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "lmcache_core/kv_index.h"
#include "row_copy.h"

namespace lmcache_arm {

using lmcache_core::KVGeometry;
using lmcache_core::KVKindGeometry;

/*
 * A span: `count` consecutive chunk tokens starting at chunk token `token` whose rows are equally
 * spaced in every plane of one kind: the row of chunk token (token + i) starts at plane element
 * row + i * step (head 0, channel 0). Consecutive slots inside a block form a span whenever the
 * token axis has one level (step = its stride); so do consecutive blocks laid out back to back
 * (NHD, SGLang pools). Each level of a split token axis ends a span where its digit carries.
 */
struct Span {
  int64_t token;  /* first chunk token */
  int64_t count;  /* tokens, >= 1 */
  int64_t row;    /* plane element offset of the first token's row: kv_plane_row(g, kind, slot) */
  int64_t step;   /* elements between consecutive tokens' rows in a plane */
};

/*
 * One contiguous piece of a token's row of a kind whose channels are not one contiguous run: `len`
 * elements at element `kv` of the token's KV row (head 0, channel 0 = 0) and at element `chunk` of
 * its chunk row. The launcher lists a kind's pieces in chunk order and merges neighbours.
 */
struct Piece {
  int64_t kv;     /* element offset in the KV row: head * head_stride + split(channel) */
  int64_t chunk;  /* element offset in the chunk row: head * width + channel */
  int64_t len;    /* elements, >= 1 */
};

/* How a kind's rows are walked, from kv_contiguous_run. */
enum class RowMode {
  kWholeRow,  /* heads adjacent, channels contiguous: one run per token (or per span) */
  kPerHead,   /* channels contiguous, heads apart: one run per head */
  kPieces     /* split or strided channels: the kind's Piece list */
};

/* Constants of one kind for one transfer. */
struct KindPlan {
  int64_t element_size;  /* bytes per element: 1, 2, 4 or 8 */
  int64_t heads;         /* heads of the kind */
  int64_t width;         /* channels per head in the chunk */
  int64_t head_stride;   /* elements between heads in KV */
  int64_t hidden;        /* heads * width: chunk row length, elements */
  int64_t run;           /* kv_contiguous_run(g, kind), elements */
  RowMode mode;
  const Piece* pieces;   /* kPieces: [num_pieces] */
  int64_t num_pieces;
  bool unit_pieces;      /* kPieces: every piece is one element */
};

/* Constants of one transfer. */
struct WalkPlan {
  int64_t num_tokens;       /* chunk tokens (each section's second axis) */
  size_t memcpy_min_bytes;  /* copies of at least this many bytes use memcpy, shorter ones NEON */
  bool coalesce;            /* copy a span whose rows are adjacent on both sides as one run */
  int64_t prefetch_bytes;   /* software-prefetch this much of the next span's KV side; 0 = off */
  bool tokens_outer;        /* per-head runs: tokens outer (chunk side in order) or heads outer */
  int64_t prefetch_distance; /* prefetch the span this many work items ahead */
};

enum class Direction { kGather, kScatter };


/* Move n bytes between a KV address and a chunk address in direction D. */
template <Direction D>
LMC_ALWAYS_INLINE void move_bytes(uint8_t* kv, uint8_t* chunk, size_t n, size_t memcpy_min_bytes) {
  if (D == Direction::kGather) {
    copy_run(chunk, kv, n, memcpy_min_bytes);
  } else {
    copy_run(kv, chunk, n, memcpy_min_bytes);
  }
}

/*
 * Software-prefetch the KV side of span s of one plane (read for gather, write for scatter): up to
 * w.prefetch_bytes from the start of each contiguous run group - the whole span when its rows are
 * adjacent, else each head's rows. Kinds walked piece by piece are not prefetched. Prefetches
 * never fault.
 */
template <Direction D>
inline void prefetch_span(const WalkPlan& w, const KindPlan& kp, const uint8_t* plane, const Span& s) {
  const int64_t es = kp.element_size;
  const uint8_t* const kv = plane + s.row * es;
  const int rw = D == Direction::kGather ? 0 : 1;
  const int64_t groups = kp.mode == RowMode::kWholeRow ? 1 : (kp.mode == RowMode::kPerHead ? kp.heads : 0);
  const bool adjacent = s.count == 1 || s.step == kp.run;
  const int64_t group_bytes = adjacent ? s.count * kp.run * es : kp.run * es;
  const int64_t bytes = group_bytes < w.prefetch_bytes ? group_bytes : w.prefetch_bytes;
  for (int64_t h = 0; h < groups; ++h) {
    const uint8_t* const start = kv + h * kp.head_stride * es;
    for (int64_t b = 0; b < bytes; b += 64) LMC_PREFETCH(start + b, rw);
  }
}

/* Move one piece of n bytes; pieces of 2, 4, 8 and 16 bytes (pairs and quads of channels) as
   one fixed-size copy each, longer ones through move_bytes. */
template <Direction D>
LMC_ALWAYS_INLINE void move_piece(uint8_t* kv, uint8_t* chunk, size_t n, size_t memcpy_min_bytes) {
  uint8_t* const dst = D == Direction::kGather ? chunk : kv;
  const uint8_t* const src = D == Direction::kGather ? kv : chunk;
  switch (n) {
    case 2: memcpy(dst, src, 2); break;
    case 4: memcpy(dst, src, 4); break;
    case 8: memcpy(dst, src, 8); break;
    case 16: memcpy(dst, src, 16); break;
    default: move_bytes<D>(kv, chunk, n, memcpy_min_bytes); break;
  }
}

/*
 * Pieces of span s, elements of T (its size is the element size), token by token, each row
 * assembled piece by piece in chunk order. One-element pieces (transposed K) move as one load and
 * one store each (memcpy of a constant size); pairs and quads as one fixed-size copy.
 * Measured on vLLM CPU vec pages (bf16, K transposed; PERFORMANCE.md): a blocked transpose (a
 * chunk line's pieces innermost, all tokens of the span in between) was no faster for gather and
 * ~40% slower for scatter on this host, so the simple order stays.
 */
template <Direction D, typename T>
inline void copy_pieces(const WalkPlan& w, const KindPlan& kp, uint8_t* kv, uint8_t* chunk, const Span& s) {
  constexpr int64_t es = static_cast<int64_t>(sizeof(T));
  const int64_t row_bytes = kp.hidden * es;
  const int64_t step_bytes = s.step * es;
  const Piece* const pieces = kp.pieces;
  const int64_t n = kp.num_pieces;
  const size_t mm = w.memcpy_min_bytes;
  for (int64_t i = 0; i < s.count; ++i) {
    uint8_t* const k = kv + i * step_bytes;
    uint8_t* const x = chunk + i * row_bytes;
    if (kp.unit_pieces) {
      for (int64_t p = 0; p < n; ++p) {
        if (D == Direction::kGather) {
          memcpy(x + pieces[p].chunk * es, k + pieces[p].kv * es, sizeof(T));
        } else {
          memcpy(k + pieces[p].kv * es, x + pieces[p].chunk * es, sizeof(T));
        }
      }
    } else {
      for (int64_t p = 0; p < n; ++p) {
        move_piece<D>(k + pieces[p].kv * es, x + pieces[p].chunk * es, static_cast<size_t>(pieces[p].len * es), mm);
      }
    }
  }
}

/*
 * Copy span s of one plane of a kind.
 *   plane:      byte address of the plane's element (block 0, token 0, head 0, channel 0)
 *   chunk_rows: byte address of this plane's chunk rows [num_tokens, hidden]
 * The loop follows the longest contiguous run: whole rows when heads are adjacent (one copy for the
 * whole span when its rows are adjacent too), one copy per head when each head is its own run
 * (tokens outer by default, so the chunk side is written in address order; heads outer walks each
 * head's KV rows in address order instead), the kind's pieces when its channel axis is split or
 * strided (one element at a time for transposed K).
 */
template <Direction D>
inline void copy_span(const WalkPlan& w, const KindPlan& kp, uint8_t* plane, uint8_t* chunk_rows, const Span& s) {
  const int64_t es = kp.element_size;
  const int64_t hidden = kp.hidden;
  const int64_t row_bytes = hidden * es;
  uint8_t* const chunk = chunk_rows + s.token * row_bytes;
  uint8_t* const kv = plane + s.row * es;
  const size_t mm = w.memcpy_min_bytes;

  if (kp.mode == RowMode::kWholeRow) {
    if (w.coalesce && (s.count == 1 || s.step == hidden)) {
      move_bytes<D>(kv, chunk, static_cast<size_t>(s.count * row_bytes), mm);
      return;
    }
    for (int64_t i = 0; i < s.count; ++i) {
      move_bytes<D>(kv + i * s.step * es, chunk + i * row_bytes, static_cast<size_t>(row_bytes), mm);
    }
    return;
  }
  if (kp.mode == RowMode::kPerHead) {
    const size_t run_bytes = static_cast<size_t>(kp.width * es);
    if (w.tokens_outer) {
      for (int64_t i = 0; i < s.count; ++i) {
        uint8_t* const kv_row = kv + i * s.step * es;
        uint8_t* const chunk_row = chunk + i * row_bytes;
        for (int64_t h = 0; h < kp.heads; ++h) {
          move_bytes<D>(kv_row + h * kp.head_stride * es, chunk_row + h * kp.width * es, run_bytes, mm);
        }
      }
      return;
    }
    for (int64_t h = 0; h < kp.heads; ++h) {
      uint8_t* const kv_head = kv + h * kp.head_stride * es;
      uint8_t* const chunk_head = chunk + h * kp.width * es;
      for (int64_t i = 0; i < s.count; ++i) {
        move_bytes<D>(kv_head + i * s.step * es, chunk_head + i * row_bytes, run_bytes, mm);
      }
    }
    return;
  }
  switch (es) {
    case 1: copy_pieces<D, uint8_t>(w, kp, kv, chunk, s); break;
    case 2: copy_pieces<D, uint16_t>(w, kp, kv, chunk, s); break;
    case 4: copy_pieces<D, uint32_t>(w, kp, kv, chunk, s); break;
    default: copy_pieces<D, uint64_t>(w, kp, kv, chunk, s); break;
  }
}

}  // namespace lmcache_arm

#endif  // LMCACHE_ARM_KV_COPY_H_
