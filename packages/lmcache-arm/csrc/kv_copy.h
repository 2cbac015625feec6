/*
 * kv_copy.h - the one stride-walking kernel: copy one span of tokens of one plane between paged
 * KV and a contiguous chunk, for every layout the core describes (no per-format code path).
 *
 * Header-only kernel template, host-only, no allocation, no checks: the launcher (launcher.cpp)
 * validates every pointer, extent and slot before it calls copy_span. Index math comes from the
 * core's portable header lmcache_core/kv_index.h; the bytes move through row_copy.h (NEON).
 *
 * Named axes: a plane is one (kv, layer) pair of the engine's KV, addressed by
 * (block, token, head, channel) strides; the chunk is [num_kv, num_layers, num_tokens, hidden]
 * with hidden = num_kv_heads * head_size, so one plane's chunk rows are [num_tokens, hidden].
 */
#ifndef LMCACHE_ARM_KV_COPY_H_
#define LMCACHE_ARM_KV_COPY_H_

#include <stddef.h>
#include <stdint.h>

#include "lmcache_core/kv_index.h"
#include "row_copy.h"

namespace lmcache_arm {

using lmcache_core::KVGeometry;

/*
 * A span: `count` consecutive chunk tokens starting at chunk token `token` whose rows are equally
 * spaced in every plane: the row of chunk token (token + i) starts at plane element
 * row + i * step (head 0, channel 0). Consecutive slots inside a block always form a span
 * (step = token_stride); so do consecutive blocks laid out back to back (NHD, SGLang pools).
 */
struct Span {
  int64_t token;  /* first chunk token */
  int64_t count;  /* tokens, >= 1 */
  int64_t row;    /* plane element offset of the first token's row: kv_plane_row(g, slot) */
  int64_t step;   /* elements between consecutive tokens' rows in a plane */
};

/* Constants of one transfer. */
struct WalkPlan {
  KVGeometry g;
  int64_t element_size;     /* bytes per element: 1, 2, 4 or 8 */
  int64_t num_tokens;       /* chunk tokens (the chunk's third axis) */
  int64_t run;              /* kv_contiguous_run(g), elements: hidden, head_size or 1 */
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
 * adjacent, else each head's rows, else each row's start. Prefetches never fault.
 */
template <Direction D>
inline void prefetch_span(const WalkPlan& w, const uint8_t* plane, const Span& s) {
  const KVGeometry& g = w.g;
  const int64_t es = w.element_size;
  const int64_t hidden = lmcache_core::kv_hidden(g);
  const uint8_t* const kv = plane + s.row * es;
  const int rw = D == Direction::kGather ? 0 : 1;
  const int64_t groups = w.run == hidden ? 1 : (w.run == g.head_size ? g.num_kv_heads : 0);
  const bool adjacent = s.count == 1 || s.step == w.run;
  const int64_t group_bytes = adjacent ? s.count * w.run * es : w.run * es;
  const int64_t bytes = group_bytes < w.prefetch_bytes ? group_bytes : w.prefetch_bytes;
  for (int64_t h = 0; h < groups; ++h) {
    const uint8_t* const start = kv + lmcache_core::kv_plane_element(g, 0, 0, h, 0) * es;
    for (int64_t b = 0; b < bytes; b += 64) LMC_PREFETCH(start + b, rw);
  }
}

/*
 * Copy span s of one plane.
 *   plane:      byte address of the plane's element (block 0, token 0, head 0, channel 0)
 *   chunk_rows: byte address of this plane's chunk rows [num_tokens, hidden]
 * The loop follows the longest contiguous run: whole rows when heads are adjacent (one copy for the
 * whole span when its rows are adjacent too), one copy per head when each head is its own run
 * (tokens outer by default, so the chunk side is written in address order; heads outer walks each
 * head's KV rows in address order instead), element by element when the channel axis is strided.
 */
template <Direction D>
inline void copy_span(const WalkPlan& w, uint8_t* plane, uint8_t* chunk_rows, const Span& s) {
  const KVGeometry& g = w.g;
  const int64_t es = w.element_size;
  const int64_t hidden = lmcache_core::kv_hidden(g);
  const int64_t row_bytes = hidden * es;
  uint8_t* const chunk = chunk_rows + s.token * row_bytes;
  uint8_t* const kv = plane + s.row * es;
  const size_t mm = w.memcpy_min_bytes;

  if (w.run == hidden) {
    if (w.coalesce && (s.count == 1 || s.step == hidden)) {
      move_bytes<D>(kv, chunk, static_cast<size_t>(s.count * row_bytes), mm);
      return;
    }
    for (int64_t i = 0; i < s.count; ++i) {
      move_bytes<D>(kv + i * s.step * es, chunk + i * row_bytes, static_cast<size_t>(row_bytes), mm);
    }
    return;
  }
  if (w.run == g.head_size) {
    const size_t run_bytes = static_cast<size_t>(g.head_size * es);
    if (w.tokens_outer) {
      for (int64_t i = 0; i < s.count; ++i) {
        uint8_t* const kv_row = kv + i * s.step * es;
        uint8_t* const chunk_row = chunk + i * row_bytes;
        for (int64_t h = 0; h < g.num_kv_heads; ++h) {
          move_bytes<D>(kv_row + lmcache_core::kv_plane_element(g, 0, 0, h, 0) * es,
                        chunk_row + h * g.head_size * es, run_bytes, mm);
        }
      }
      return;
    }
    for (int64_t h = 0; h < g.num_kv_heads; ++h) {
      uint8_t* const kv_head = kv + lmcache_core::kv_plane_element(g, 0, 0, h, 0) * es;
      uint8_t* const chunk_head = chunk + h * g.head_size * es;
      for (int64_t i = 0; i < s.count; ++i) {
        move_bytes<D>(kv_head + i * s.step * es, chunk_head + i * row_bytes, run_bytes, mm);
      }
    }
    return;
  }
  /* channel axis strided: element by element */
  for (int64_t i = 0; i < s.count; ++i) {
    for (int64_t h = 0; h < g.num_kv_heads; ++h) {
      for (int64_t c = 0; c < g.head_size; ++c) {
        uint8_t* const k = kv + (i * s.step + lmcache_core::kv_plane_element(g, 0, 0, h, c)) * es;
        uint8_t* const x = chunk + i * row_bytes + (h * g.head_size + c) * es;
        if (D == Direction::kGather) {
          copy_element(x, k, es);
        } else {
          copy_element(k, x, es);
        }
      }
    }
  }
}

}  // namespace lmcache_arm

#endif  // LMCACHE_ARM_KV_COPY_H_
