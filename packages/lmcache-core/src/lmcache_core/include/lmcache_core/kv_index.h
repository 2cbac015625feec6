/*
 * lmcache_core/kv_index.h - index math of paged KV layouts, shared by every native backend.
 *
 * This header is the C++ twin of lmcache_core.layout.KVLayout (version 2: plane kinds with their
 * own geometry). A layer group's paged KV is one KVGeometry: 1 to LMC_KV_MAX_KINDS plane kinds
 * ("k", "v"; one "latent" for MLA; "nope" + "rope" + "indexer" for Ascend MLA/DSA ...), each with
 * its own heads, width, element size, block and head strides and a split (mixed-radix) token and
 * channel axis:
 *
 *   plane p = kind * num_layers + layer    lives in engine tensor plane_tensor[p], starting at
 *                                          element plane_offset[p] of that tensor;
 *   element (block, token, head, channel)  sits at block * block_stride + head * head_stride
 *   of kind k                              + split(token) + split(channel) elements after the
 *                                          plane's start, with the kind's strides;
 *   split(i) over levels (size_j, stride_j), little-endian: i = d0 + size0 * (d1 + size1 * d2),
 *                                          offset = d0 * stride0 + d1 * stride1 + d2 * stride2;
 *                                          the product of the sizes is block_size (token) or
 *                                          width (channel);
 *   slot = block * block_size + token      (-1 in a slot mapping means "skip this token").
 *
 * Today's single-stride layouts are the case of one level per axis: (block_size, token_stride)
 * and (width, channel_stride). vLLM CPU's transposed K is channel (width, block_size), token
 * (block_size, 1); its AMX packing splits both axes in two levels.
 *
 * The host chunk is one SECTION per kind, back to back in kind order; section k is contiguous
 * [num_layers, num_tokens, hidden_k] of kind k's element size, hidden_k = heads_k * width_k (the
 * real channels only: padded channels never reach the chunk). When every kind has the same
 * hidden and element size this is exactly [num_kinds, num_layers, num_tokens, hidden].
 *
 * Units: counts and strides in ELEMENTS of the kind unless a name ends in _bytes; addresses are
 * byte pointers. Strides are non-negative (callers check).
 *
 * Portability contract: plain C++ with <stdint.h> only - no std:: containers, no exceptions,
 * no iostream, no OpenMP, no allocation - so CUDA (nvcc) and HIP (hipcc) builds include the very
 * same functions. LMC_HOST_DEVICE marks them __host__ __device__ there and is empty on a host
 * compiler. The index functions do no validation: callers check the geometry, every plane and every
 * slot first (lmcache_core/kv_checks.h; kv_checked_plane_extent() and kv_checked_plane_end_bytes()
 * here, overflow-checked, host code); kv_plane_extent() itself may wrap on a hostile geometry.
 */
#ifndef LMCACHE_CORE_KV_INDEX_H_
#define LMCACHE_CORE_KV_INDEX_H_

#include <stdint.h>

/* A device compile is detected from the compiler's own macros, so no runtime header need come
   first. Clang compiling HIP without HIP's headers has no __host__ / __device__ macros yet: it
   takes clang's attributes directly. AscendC's CPU debug build (__CCE_KT_TEST__) is a host compile. */
#if defined(__CUDACC__) || defined(__HIPCC__) || defined(__HIP__)
#if defined(__host__)
#define LMC_HOST_DEVICE __host__ __device__
#else
#define LMC_HOST_DEVICE __attribute__((host)) __attribute__((device))
#endif
#elif defined(__CCE_AICORE__) && !defined(__CCE_KT_TEST__)
/* AscendC device compile (CANN's ccec/bisheng): AI Core functions. kernel_operator.h spells
   __aicore__ as the [aicore] attribute; take the macro when it is already there. */
#if defined(__aicore__)
#define LMC_HOST_DEVICE __aicore__
#else
#define LMC_HOST_DEVICE [aicore]
#endif
#else
#define LMC_HOST_DEVICE
#endif

/* Version of this header's API: bump the minor for additions, the major for changes. */
#define LMC_KV_INDEX_VERSION_MAJOR 2
#define LMC_KV_INDEX_VERSION_MINOR 0

/* Most levels of one split axis, most plane kinds (lmcache_core.layout MAX_LEVELS / MAX_KINDS). */
#define LMC_KV_MAX_LEVELS 3
#define LMC_KV_MAX_KINDS 4

/* int64 values of one kind in the flat form bindings take (kv_kind_unpack; native_args.KIND_FIELDS):
   heads, width, element_size, block_stride, head_stride,
   token levels, token size[3], token stride[3], channel levels, channel size[3], channel stride[3]. */
#define LMC_KV_KIND_FIELDS 19

namespace lmcache_core {

/* One axis split into 1..LMC_KV_MAX_LEVELS levels, least significant first. */
struct KVSplitAxis {
  int64_t levels;                    /* levels in use, 1..LMC_KV_MAX_LEVELS, e.g. 1 */
  int64_t size[LMC_KV_MAX_LEVELS];   /* radix of each level, e.g. {16} (amx K token: {16, BS/16}) */
  int64_t stride[LMC_KV_MAX_LEVELS]; /* elements between consecutive values of the level, e.g. {1024} */
};

/* Geometry of one plane kind (K, V, latent, nope, rope, indexer ...). */
struct KVKindGeometry {
  int64_t heads;         /* heads of this kind, e.g. 8 (1 for MLA and indexer kinds) */
  int64_t width;         /* channels per head the chunk carries, e.g. 128 (512 nope, 64 rope) */
  int64_t element_size;  /* bytes: 1, 2, 4 or 8 */
  int64_t block_stride;  /* elements between block b and b + 1 */
  int64_t head_stride;   /* elements between head h and h + 1 */
  KVSplitAxis token;     /* in-block token index, sizes multiply to block_size */
  KVSplitAxis channel;   /* channel index, sizes multiply to width */
};

/* Geometry of one layer group's paged KV: the fields of KVLayout that index math needs. */
struct KVGeometry {
  int64_t num_kinds;   /* plane kinds, 1..LMC_KV_MAX_KINDS, e.g. 2 (K and V) */
  int64_t num_layers;  /* layers in the group, e.g. 32 */
  int64_t num_blocks;  /* blocks per plane, e.g. 4096 */
  int64_t block_size;  /* tokens per block, e.g. 16 (1 for SGLang token pools) */
  KVKindGeometry kind[LMC_KV_MAX_KINDS];
};

/* Block and in-block offset of a slot. */
struct SlotPosition {
  int64_t block;   /* slot / block_size */
  int64_t offset;  /* slot % block_size, the token axis */
};

/* A one-level axis of `size` values `stride` elements apart. */
LMC_HOST_DEVICE inline KVSplitAxis kv_axis(int64_t size, int64_t stride) {
  KVSplitAxis a = {1, {size, 1, 1}, {stride, 0, 0}};
  return a;
}

/* Kind geometry from its LMC_KV_KIND_FIELDS flat values (the order of the #define above). */
LMC_HOST_DEVICE inline KVKindGeometry kv_kind_unpack(const int64_t* v) {
  KVKindGeometry k;
  k.heads = v[0];
  k.width = v[1];
  k.element_size = v[2];
  k.block_stride = v[3];
  k.head_stride = v[4];
  KVSplitAxis* axes[2] = {&k.token, &k.channel};
  for (int a = 0; a < 2; ++a) {
    const int64_t* f = v + 5 + a * (1 + 2 * LMC_KV_MAX_LEVELS);
    axes[a]->levels = f[0];
    for (int i = 0; i < LMC_KV_MAX_LEVELS; ++i) {
      axes[a]->size[i] = f[1 + i];
      axes[a]->stride[i] = f[1 + LMC_KV_MAX_LEVELS + i];
    }
  }
  return k;
}

/* Element offset of index i along a split axis (i in [0, product of sizes)). */
LMC_HOST_DEVICE inline int64_t kv_split_offset(const KVSplitAxis& a, int64_t i) {
  if (a.levels == 1) return i * a.stride[0];
  int64_t off = 0;
  for (int64_t l = 0; l < a.levels - 1; ++l) {
    const int64_t q = i / a.size[l];
    off += (i - q * a.size[l]) * a.stride[l];
    i = q;
  }
  return off + i * a.stride[a.levels - 1];
}

/* Planes (kind, layer pairs): num_kinds * num_layers. */
LMC_HOST_DEVICE inline int64_t kv_num_planes(const KVGeometry& g) { return g.num_kinds * g.num_layers; }

/* Slots addressable by a slot mapping: num_blocks * block_size. */
LMC_HOST_DEVICE inline int64_t kv_num_slots(const KVGeometry& g) { return g.num_blocks * g.block_size; }

/* Elements per token per plane of a kind, its chunk row length: heads * width. */
LMC_HOST_DEVICE inline int64_t kv_kind_hidden(const KVGeometry& g, int64_t kind) {
  return g.kind[kind].heads * g.kind[kind].width;
}

/* Bytes of one chunk row of a kind: heads * width * element_size. */
LMC_HOST_DEVICE inline int64_t kv_kind_row_bytes(const KVGeometry& g, int64_t kind) {
  return kv_kind_hidden(g, kind) * g.kind[kind].element_size;
}

/* Plane index of (kind, layer). */
LMC_HOST_DEVICE inline int64_t kv_plane_index(int64_t kind, int64_t layer, int64_t num_layers) {
  return kind * num_layers + layer;
}

/* True when a slot-mapping entry is legal: -1 (skip) or in [0, num_slots). */
LMC_HOST_DEVICE inline bool kv_slot_in_range(int64_t slot, int64_t num_slots) {
  return slot >= -1 && slot < num_slots;
}

/* Block and offset of a non-negative slot. */
LMC_HOST_DEVICE inline SlotPosition kv_slot_position(int64_t slot, int64_t block_size) {
  SlotPosition p;
  p.block = slot / block_size;
  p.offset = slot - p.block * block_size;
  return p;
}

/* Element offset, inside a plane of `kind`, of (block, token, head, channel). */
LMC_HOST_DEVICE inline int64_t kv_plane_element(const KVGeometry& g, int64_t kind, int64_t block, int64_t token,
                                                int64_t head, int64_t channel) {
  const KVKindGeometry& k = g.kind[kind];
  return block * k.block_stride + kv_split_offset(k.token, token) + head * k.head_stride +
         kv_split_offset(k.channel, channel);
}

/* Element offset, inside a plane of `kind`, of a non-negative slot's row start (head 0, channel 0). */
LMC_HOST_DEVICE inline int64_t kv_plane_row(const KVGeometry& g, int64_t kind, int64_t slot) {
  const SlotPosition p = kv_slot_position(slot, g.block_size);
  const KVKindGeometry& k = g.kind[kind];
  return p.block * k.block_stride + kv_split_offset(k.token, p.offset);
}

/*
 * Longest run of one token's row of `kind` that is contiguous in the engine's memory, in elements
 * (mirrors KVLayout.contiguous_run): hidden when the channel axis is one level of stride 1 and heads
 * are adjacent (or one); width when the channel axis is one level of stride 1; size[0] when only
 * its first level has stride 1 (pair- or quad-packed channels); else 1.
 */
LMC_HOST_DEVICE inline int64_t kv_contiguous_run(const KVGeometry& g, int64_t kind) {
  const KVKindGeometry& k = g.kind[kind];
  if (k.channel.stride[0] != 1) return 1;
  if (k.channel.levels > 1) return k.channel.size[0];
  if (k.head_stride == k.width || k.heads == 1) return kv_kind_hidden(g, kind);
  return k.width;
}

/* Largest offset a split axis reaches: sum of (size_j - 1) * stride_j (may wrap: not checked). */
LMC_HOST_DEVICE inline int64_t kv_split_max(const KVSplitAxis& a) {
  int64_t m = 0;
  for (int64_t l = 0; l < a.levels; ++l) m += (a.size[l] - 1) * a.stride[l];
  return m;
}

/*
 * Elements a plane of `kind` spans from its start: 1 + the largest element offset any
 * (block, token, head, channel) reaches. A plane fits in its tensor when
 * plane_offset + kv_plane_extent <= the tensor's element extent. Not checked: see
 * kv_checked_plane_extent.
 */
LMC_HOST_DEVICE inline int64_t kv_plane_extent(const KVGeometry& g, int64_t kind) {
  const KVKindGeometry& k = g.kind[kind];
  return 1 + (g.num_blocks - 1) * k.block_stride + (k.heads - 1) * k.head_stride + kv_split_max(k.token) +
         kv_split_max(k.channel);
}

/* Byte offset of kind's section in a chunk of num_tokens tokens: the sections before it. */
LMC_HOST_DEVICE inline int64_t kv_chunk_section_offset_bytes(const KVGeometry& g, int64_t kind, int64_t num_tokens) {
  int64_t off = 0;
  for (int64_t k = 0; k < kind; ++k) off += g.num_layers * num_tokens * kv_kind_row_bytes(g, k);
  return off;
}

/* Byte offset of chunk row (kind, layer, token) in a chunk of num_tokens tokens. */
LMC_HOST_DEVICE inline int64_t kv_chunk_row_bytes(const KVGeometry& g, int64_t kind, int64_t layer, int64_t token,
                                                  int64_t num_tokens) {
  return kv_chunk_section_offset_bytes(g, kind, num_tokens) +
         (layer * num_tokens + token) * kv_kind_row_bytes(g, kind);
}

/*
 * Overflow-checked forms of the extent math, for the host-side checks that run before a launch
 * (GCC and Clang builtins: host code only, never marked LMC_HOST_DEVICE). Each returns false,
 * leaving *out untouched, when the result does not fit in int64 or an input is out of its domain.
 */

/* *out = a * b + c. */
inline bool kv_checked_mul_add(int64_t a, int64_t b, int64_t c, int64_t* out) {
  int64_t product = 0, sum = 0;
  if (__builtin_mul_overflow(a, b, &product) || __builtin_add_overflow(product, c, &sum)) return false;
  *out = sum;
  return true;
}

/*
 * A split axis is well formed: 1 <= levels <= LMC_KV_MAX_LEVELS, every size >= 1, every stride >= 0
 * and the sizes multiply (overflow-checked) to `product`. Adds sum (size_j - 1) * stride_j to *acc,
 * overflow-checked. False, *acc untouched, otherwise.
 */
inline bool kv_checked_split_axis(const KVSplitAxis& a, int64_t product, int64_t* acc) {
  if (a.levels < 1 || a.levels > LMC_KV_MAX_LEVELS) return false;
  int64_t p = 1, e = *acc;
  for (int64_t l = 0; l < a.levels; ++l) {
    if (a.size[l] < 1 || a.stride[l] < 0) return false;
    if (__builtin_mul_overflow(p, a.size[l], &p)) return false;
    if (!kv_checked_mul_add(a.size[l] - 1, a.stride[l], e, &e)) return false;
  }
  if (p != product) return false;
  *acc = e;
  return true;
}

/*
 * kv_plane_extent, checked: false unless num_blocks, block_size, heads and width are >= 1, every
 * stride >= 0, both split axes are well formed (sizes multiply to block_size and width) and the
 * extent 1 + (num_blocks - 1) * block_stride + (heads - 1) * head_stride + sum over every token and
 * channel level of (size - 1) * stride fits in int64.
 */
inline bool kv_checked_plane_extent(const KVGeometry& g, int64_t kind, int64_t* out) {
  if (kind < 0 || kind >= LMC_KV_MAX_KINDS) return false;
  const KVKindGeometry& k = g.kind[kind];
  if (g.num_blocks < 1 || g.block_size < 1 || k.heads < 1 || k.width < 1) return false;
  if (k.block_stride < 0 || k.head_stride < 0) return false;
  int64_t e = 1;
  if (!kv_checked_mul_add(g.num_blocks - 1, k.block_stride, e, &e) ||
      !kv_checked_mul_add(k.heads - 1, k.head_stride, e, &e) || !kv_checked_split_axis(k.token, g.block_size, &e) ||
      !kv_checked_split_axis(k.channel, k.width, &e)) {
    return false;
  }
  *out = e;
  return true;
}

/*
 * Byte just past a plane that starts at element plane_offset and spans extent elements of
 * element_size bytes: (plane_offset + extent) * element_size. False when plane_offset < 0,
 * extent < 1, element_size < 1 or the sum or product overflows. The plane fits in a tensor of
 * nbytes bytes exactly when this returns true and *out <= nbytes.
 */
inline bool kv_checked_plane_end_bytes(int64_t plane_offset, int64_t extent, int64_t element_size,
                                       int64_t* out) {
  if (plane_offset < 0 || extent < 1 || element_size < 1) return false;
  int64_t end = 0, end_bytes = 0;
  if (__builtin_add_overflow(plane_offset, extent, &end) ||
      __builtin_mul_overflow(end, element_size, &end_bytes)) {
    return false;
  }
  *out = end_bytes;
  return true;
}

/* Byte address of plane p: tensor_base[plane_tensor[p]] + plane_offset[p] * element_size. */
template <typename Byte>
LMC_HOST_DEVICE inline Byte* kv_plane_address(Byte* const* tensor_base, const int64_t* plane_tensor,
                                              const int64_t* plane_offset, int64_t plane,
                                              int64_t element_size) {
  return tensor_base[plane_tensor[plane]] + plane_offset[plane] * element_size;
}

}  // namespace lmcache_core

#endif  // LMCACHE_CORE_KV_INDEX_H_
