/*
 * lmcache_core/kv_index.h - index math of paged KV layouts, shared by every native backend.
 *
 * This header is the C++ twin of lmcache_core.layout.KVLayout. Every paged layout in the
 * registry is one KVGeometry: named logical axes kv / layer / block / token / head / channel,
 *
 *   plane p = kv * num_layers + layer      lives in engine tensor plane_tensor[p], starting at
 *                                          element plane_offset[p] of that tensor;
 *   element (block, token, head, channel)  sits at block * block_stride + token * token_stride
 *                                          + head * head_stride + channel * channel_stride
 *                                          elements after the plane's start;
 *   slot = block * block_size + token      (-1 in a slot mapping means "skip this token").
 *
 * The host chunk is contiguous [num_kv, num_layers, num_tokens, hidden] with
 * hidden = num_kv_heads * head_size, i.e. row (kv, layer, token) starts at element
 * ((kv * num_layers + layer) * num_tokens + token) * hidden.
 *
 * Units: counts and strides in ELEMENTS unless a name ends in _bytes; addresses are byte
 * pointers. Strides are non-negative (torch tensors have no negative strides; callers check).
 *
 * Portability contract: plain C++ with <stdint.h> only - no std:: containers, no exceptions,
 * no iostream, no OpenMP, no allocation - so CUDA (nvcc) and HIP (hipcc) builds include the very
 * same functions. LMC_HOST_DEVICE marks them __host__ __device__ there and is empty on a host
 * compiler. The index functions do no validation: callers check slots with kv_slot_in_range() and
 * every plane with kv_checked_plane_extent() and kv_checked_plane_end_bytes() (overflow-checked,
 * host code) before they touch memory; kv_plane_extent() itself may wrap on a hostile geometry.
 */
#ifndef LMCACHE_CORE_KV_INDEX_H_
#define LMCACHE_CORE_KV_INDEX_H_

#include <stdint.h>

/* A device compile is detected from the compiler's own macros, so no runtime header need come
   first. Clang compiling HIP without HIP's headers has no __host__ / __device__ macros yet: it
   takes clang's attributes directly. */
#if defined(__CUDACC__) || defined(__HIPCC__) || defined(__HIP__)
#if defined(__host__)
#define LMC_HOST_DEVICE __host__ __device__
#else
#define LMC_HOST_DEVICE __attribute__((host)) __attribute__((device))
#endif
#else
#define LMC_HOST_DEVICE
#endif

/* Version of this header's API: bump the minor for additions, the major for changes. */
#define LMC_KV_INDEX_VERSION_MAJOR 1
#define LMC_KV_INDEX_VERSION_MINOR 1

namespace lmcache_core {

/* Geometry of one layer group's paged KV: the fields of KVLayout that index math needs. */
struct KVGeometry {
  int64_t num_kv;          /* 2 (K and V) or 1 (MLA latent), e.g. 2 */
  int64_t num_layers;      /* layers in the group, e.g. 32 */
  int64_t num_blocks;      /* blocks per plane, e.g. 4096 */
  int64_t block_size;      /* tokens per block, e.g. 16 (1 for SGLang token pools) */
  int64_t num_kv_heads;    /* e.g. 8 (1 for MLA) */
  int64_t head_size;       /* channels per head, e.g. 128 (latent dim 576 for MLA) */
  int64_t block_stride;    /* elements between block b and b + 1 */
  int64_t token_stride;    /* elements between token t and t + 1 of a block (0 when block_size 1) */
  int64_t head_stride;     /* elements between head h and h + 1 */
  int64_t channel_stride;  /* elements between channel c and c + 1 (1 unless a strided view) */
};

/* Block and in-block offset of a slot. */
struct SlotPosition {
  int64_t block;   /* slot / block_size */
  int64_t offset;  /* slot % block_size, the token axis */
};

/* Planes (kv, layer pairs): num_kv * num_layers. */
LMC_HOST_DEVICE inline int64_t kv_num_planes(const KVGeometry& g) { return g.num_kv * g.num_layers; }

/* Slots addressable by a slot mapping: num_blocks * block_size. */
LMC_HOST_DEVICE inline int64_t kv_num_slots(const KVGeometry& g) { return g.num_blocks * g.block_size; }

/* Elements per token per plane, the chunk row length: num_kv_heads * head_size. */
LMC_HOST_DEVICE inline int64_t kv_hidden(const KVGeometry& g) { return g.num_kv_heads * g.head_size; }

/* Plane index of (kv, layer). */
LMC_HOST_DEVICE inline int64_t kv_plane_index(int64_t kv, int64_t layer, int64_t num_layers) {
  return kv * num_layers + layer;
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

/* Element offset, inside a plane, of (block, token, head, channel). */
LMC_HOST_DEVICE inline int64_t kv_plane_element(const KVGeometry& g, int64_t block, int64_t token,
                                                int64_t head, int64_t channel) {
  return block * g.block_stride + token * g.token_stride + head * g.head_stride +
         channel * g.channel_stride;
}

/* Element offset, inside a plane, of a non-negative slot's row start (head 0, channel 0). */
LMC_HOST_DEVICE inline int64_t kv_plane_row(const KVGeometry& g, int64_t slot) {
  const SlotPosition p = kv_slot_position(slot, g.block_size);
  return kv_plane_element(g, p.block, p.offset, 0, 0);
}

/*
 * Longest run of one token's row that is contiguous in the engine's memory, in elements
 * (mirrors KVLayout.contiguous_run): hidden when heads are adjacent, head_size when they are
 * not, 1 when the channel axis itself is strided.
 */
LMC_HOST_DEVICE inline int64_t kv_contiguous_run(const KVGeometry& g) {
  if (g.channel_stride != 1) return 1;
  if (g.head_stride == g.head_size || g.num_kv_heads == 1) return kv_hidden(g);
  return g.head_size;
}

/*
 * Elements a plane spans from its start: 1 + the largest element offset any
 * (block, token, head, channel) reaches. A plane fits in its tensor when
 * plane_offset + kv_plane_extent <= the tensor's element extent.
 */
LMC_HOST_DEVICE inline int64_t kv_plane_extent(const KVGeometry& g) {
  return 1 + kv_plane_element(g, g.num_blocks - 1, g.block_size - 1, g.num_kv_heads - 1,
                              g.head_size - 1);
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
 * kv_plane_extent, checked: false unless every count is >= 1, every stride >= 0 and the extent
 * 1 + (num_blocks - 1) * block_stride + ... + (head_size - 1) * channel_stride fits in int64.
 */
inline bool kv_checked_plane_extent(const KVGeometry& g, int64_t* out) {
  if (g.num_blocks < 1 || g.block_size < 1 || g.num_kv_heads < 1 || g.head_size < 1) return false;
  if (g.block_stride < 0 || g.token_stride < 0 || g.head_stride < 0 || g.channel_stride < 0) return false;
  int64_t e = 1;
  if (!kv_checked_mul_add(g.num_blocks - 1, g.block_stride, e, &e) ||
      !kv_checked_mul_add(g.block_size - 1, g.token_stride, e, &e) ||
      !kv_checked_mul_add(g.num_kv_heads - 1, g.head_stride, e, &e) ||
      !kv_checked_mul_add(g.head_size - 1, g.channel_stride, e, &e)) {
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

/* Element offset of chunk row (plane, token) in [num_kv, num_layers, num_tokens, hidden]. */
LMC_HOST_DEVICE inline int64_t kv_chunk_row(const KVGeometry& g, int64_t plane, int64_t token,
                                            int64_t num_tokens) {
  return (plane * num_tokens + token) * kv_hidden(g);
}

}  // namespace lmcache_core

#endif  // LMCACHE_CORE_KV_INDEX_H_
