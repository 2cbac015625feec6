/*
 * neon_compat.h - the one place that picks how NEON intrinsics are provided.
 *
 * On aarch64 the intrinsics come from the compiler's <arm_neon.h> (native NEON). Anywhere else
 * the very same intrinsic names compile through SIMDe's <simde/arm/neon.h> with native aliases
 * (on x86-64 they map to SSE2), so the kernel source that ships for Arm is the source the x86
 * tests run. LMC_ARM_ISA names the path taken, for logs and lmcache-core info.
 */
#ifndef LMCACHE_ARM_NEON_COMPAT_H_
#define LMCACHE_ARM_NEON_COMPAT_H_

#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>
#define LMC_ARM_ISA "NEON native"
#define LMC_ARM_NATIVE_NEON 1
#else
#ifndef SIMDE_ENABLE_NATIVE_ALIASES
#define SIMDE_ENABLE_NATIVE_ALIASES
#endif
#include <simde/arm/neon.h>
#if defined(__x86_64__) || defined(_M_X64)
#define LMC_ARM_ISA "NEON via SIMDe on x86_64"
#else
#define LMC_ARM_ISA "NEON via SIMDe (portable)"
#endif
#define LMC_ARM_NATIVE_NEON 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define LMC_ALWAYS_INLINE inline __attribute__((always_inline))
#define LMC_PREFETCH(p, rw) __builtin_prefetch((p), (rw), 3)
#define LMC_RESTRICT __restrict__
#else
#define LMC_ALWAYS_INLINE inline
#define LMC_PREFETCH(p, rw) ((void)(p))
#define LMC_RESTRICT
#endif

#endif  // LMCACHE_ARM_NEON_COMPAT_H_
