/*
 * ascendc_primitives.h - the kernel primitives of kv_ascend_logic.h with AscendC (device build only).
 *
 * Included by kv_ascend_kernel.cpp, compiled by the CANN toolchain (ascendc_library); never by a
 * host compiler. Global -> global copies go through one unified-buffer (UB) tile: DataCopyPad GM ->
 * UB (MTE2), a MTE2 -> MTE3 flag, DataCopyPad UB -> GM (MTE3), a MTE3 -> MTE2 flag before the tile
 * is reused. DataCopyPad takes byte lengths, so rows of any width (64-channel rope, 2-byte odd
 * runs) need no 32-byte alignment. Scalars (the argument table, slots) are read with
 * GlobalTensor::GetValue: read-only inputs, never written by MTE in the same launch.
 *
 * Written against the CANN 8.x/9.x AscendC API (kernel_operator.h); not compiled on this
 * project's CI hosts (no CANN): unverified on Ascend hardware.
 */
#ifndef LMCACHE_ASCEND_ASCENDC_PRIMITIVES_H_
#define LMCACHE_ASCEND_ASCENDC_PRIMITIVES_H_

#include "kernel_operator.h"

namespace lmcache_ascend {

/* UB bytes of the copy tile (the UB is 192 KiB on Ascend 910B; the tile leaves room to spare). */
constexpr uint32_t kTileBytes = 64 * 1024;

struct AscendPrimitives {
  AscendC::TBuf<AscendC::TPosition::VECCALC> tile;

  __aicore__ inline void init(AscendC::TPipe* pipe) { pipe->InitBuffer(tile, kTileBytes); }
  __aicore__ inline int64_t block_idx() const { return static_cast<int64_t>(AscendC::GetBlockIdx()); }
  __aicore__ inline int64_t block_num() const { return static_cast<int64_t>(AscendC::GetBlockNum()); }

  __aicore__ inline int64_t load_i64(uint64_t address) const {
    AscendC::GlobalTensor<int64_t> g;
    g.SetGlobalBuffer(reinterpret_cast<__gm__ int64_t*>(address), 1);
    return g.GetValue(0);
  }

  __aicore__ inline void copy(uint64_t dst, uint64_t src, int64_t nbytes) {
    AscendC::LocalTensor<uint8_t> ub = tile.Get<uint8_t>();
    for (int64_t done = 0; done < nbytes; done += kTileBytes) {
      const uint32_t len = static_cast<uint32_t>(nbytes - done < kTileBytes ? nbytes - done : kTileBytes);
      AscendC::GlobalTensor<uint8_t> from, to;
      from.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t*>(src + done), len);
      to.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t*>(dst + done), len);
      const AscendC::DataCopyExtParams params{1, len, 0, 0, 0};
      const AscendC::DataCopyPadExtParams<uint8_t> no_pad{false, 0, 0, 0};
      AscendC::DataCopyPad(ub, from, params, no_pad);
      AscendC::SetFlag<AscendC::HardEvent::MTE2_MTE3>(EVENT_ID0);
      AscendC::WaitFlag<AscendC::HardEvent::MTE2_MTE3>(EVENT_ID0);
      AscendC::DataCopyPad(to, ub, params);
      AscendC::SetFlag<AscendC::HardEvent::MTE3_MTE2>(EVENT_ID0);
      AscendC::WaitFlag<AscendC::HardEvent::MTE3_MTE2>(EVENT_ID0);
    }
  }
};

}  // namespace lmcache_ascend

#endif  // LMCACHE_ASCEND_ASCENDC_PRIMITIVES_H_
