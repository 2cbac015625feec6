// kv_index.h before any runtime header; under HIP compiled with -nogpuinc (no HIP header at all).
// Each kv_* call in device code below is a compile error unless kv_index.h marked it host + device.
#include "lmcache_core/kv_index.h"

// A device function (a kernel would need the runtime's launch declarations on the host side).
__attribute__((device)) void index_first_device(int64_t* out, lmcache_core::KVGeometry g) {
  out[0] = lmcache_core::kv_plane_row(g, 0, 5) + lmcache_core::kv_kind_hidden(g, 1) + lmcache_core::kv_contiguous_run(g, 1) +
           lmcache_core::kv_chunk_row_bytes(g, 1, 0, 2, 4) + lmcache_core::kv_kind_unpack(out).width;
}

#if !defined(LMC_TEST_NO_RUNTIME_HEADERS)
#include "gpu_compat.h"  // the runtime header after kv_index.h: nothing clashes
#endif

int64_t index_first_host(const lmcache_core::KVGeometry& g) { return lmcache_core::kv_num_planes(g); }
