/*
 * row_copy.h - byte copies of one contiguous run, written with NEON intrinsics.
 *
 * Header-only, host-only. Callers guarantee both ranges are valid and do not overlap; nothing
 * here checks or allocates.
 */
#ifndef LMCACHE_ARM_ROW_COPY_H_
#define LMCACHE_ARM_ROW_COPY_H_

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "neon_compat.h"

namespace lmcache_arm {

/* Copy n bytes with 16-byte NEON vectors, four per iteration (64 bytes, one cache line). */
LMC_ALWAYS_INLINE void neon_copy(uint8_t* LMC_RESTRICT dst, const uint8_t* LMC_RESTRICT src, size_t n) {
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const uint8x16_t a = vld1q_u8(src + i);
    const uint8x16_t b = vld1q_u8(src + i + 16);
    const uint8x16_t c = vld1q_u8(src + i + 32);
    const uint8x16_t d = vld1q_u8(src + i + 48);
    vst1q_u8(dst + i, a);
    vst1q_u8(dst + i + 16, b);
    vst1q_u8(dst + i + 32, c);
    vst1q_u8(dst + i + 48, d);
  }
  for (; i + 16 <= n; i += 16) vst1q_u8(dst + i, vld1q_u8(src + i));
  if (i < n) memcpy(dst + i, src + i, n - i); /* tail of a row that is not a multiple of 16 bytes */
}

/* Copy one run of n bytes: NEON below memcpy_min_bytes, the C library's memcpy from there on. */
LMC_ALWAYS_INLINE void copy_run(uint8_t* LMC_RESTRICT dst, const uint8_t* LMC_RESTRICT src, size_t n,
                                size_t memcpy_min_bytes) {
  if (n >= memcpy_min_bytes) {
    memcpy(dst, src, n);
  } else {
    neon_copy(dst, src, n);
  }
}

/* Copy one element of element_size (1, 2, 4 or 8) bytes. */
LMC_ALWAYS_INLINE void copy_element(uint8_t* dst, const uint8_t* src, int64_t element_size) {
  switch (element_size) {
    case 1: *dst = *src; break;
    case 2: memcpy(dst, src, 2); break;
    case 4: memcpy(dst, src, 4); break;
    default: memcpy(dst, src, 8); break;
  }
}

}  // namespace lmcache_arm

#endif  // LMCACHE_ARM_ROW_COPY_H_
