/*
 * host_primitives.h - the kernel primitives of kv_ascend_logic.h on plain host memory.
 *
 * Addresses are host pointers; copy is memcpy; block_idx/block_num are set by the caller, which
 * runs the kernel body once per "core", one after another (the host emulation test). Nothing here
 * models the NPU's memory system: it proves the kernel logic's index math and work split, bit for
 * bit, not AscendC's copy semantics (the NPU tests do that).
 */
#ifndef LMCACHE_ASCEND_HOST_PRIMITIVES_H_
#define LMCACHE_ASCEND_HOST_PRIMITIVES_H_

#include <stdint.h>
#include <string.h>

namespace lmcache_ascend {

struct HostPrimitives {
  int64_t block = 0;   /* this "core" */
  int64_t blocks = 1;  /* cores launched */
  int64_t copies = 0;  /* copy calls made (the emulation test reports it) */

  int64_t block_idx() const { return block; }
  int64_t block_num() const { return blocks; }
  int64_t load_i64(uint64_t address) const {
    int64_t v;
    memcpy(&v, reinterpret_cast<const void*>(static_cast<uintptr_t>(address)), sizeof(v));
    return v;
  }
  void copy(uint64_t dst, uint64_t src, int64_t nbytes) {
    ++copies;
    memcpy(reinterpret_cast<void*>(static_cast<uintptr_t>(dst)),
           reinterpret_cast<const void*>(static_cast<uintptr_t>(src)), static_cast<size_t>(nbytes));
  }
};

}  // namespace lmcache_ascend

#endif  // LMCACHE_ASCEND_HOST_PRIMITIVES_H_
