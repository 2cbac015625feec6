/*
 * memcpy_granularity.cpp - the memcpy roof as a function of run length, for PERFORMANCE.md.
 *
 * Copies `chunk_mib` MiB per call between a large pool (default 3840 MiB, far beyond the last-level
 * cache) and a fresh chunk buffer per call, as libc memcpy calls of `run` bytes at random
 * run-aligned places of the pool (gather direction: pool -> buffer; scatter: buffer -> pool), on 1
 * and 2 OpenMP threads (static split of the runs). A 1 GiB buffer is overwritten before each figure,
 * as `lmcache-core bench kernels` does, so every call starts cold. A kernel that must read the pool
 * in runs of R bytes (e.g. 4 KiB: one block of 16 tokens x 256-byte rows) cannot beat the figure
 * for R by much.
 *
 * With -DWITH_KERNEL (and csrc/launcher.cpp linked in) it then times the lmcache-arm kernels on the
 * same pool laid out as vLLM NHD pages of 32 layers x 1 kv head x 128 bf16, block 16 (4 KiB per block
 * and plane), over random whole blocks: no Python in the way, so kernel vs memcpy at the same
 * granularity is read off directly.
 *
 * Build and run (make -C packages/lmcache-arm roof-by-run):
 *   g++ -O3 -fopenmp -DWITH_KERNEL -Icsrc -I<core include> bench/memcpy_granularity.cpp csrc/launcher.cpp
 *   build/memcpy_granularity [pool_mib] [chunk_mib]
 */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

#if defined(WITH_KERNEL)
#include "launcher.h"
#endif

int main(int argc, char** argv) {
  const size_t pool_bytes = (argc > 1 ? strtoull(argv[1], nullptr, 10) : 3840) << 20;
  const size_t chunk_bytes = (argc > 2 ? strtoull(argv[2], nullptr, 10) : 4) << 20;
  std::vector<uint8_t> pool(pool_bytes);
  for (size_t i = 0; i < pool_bytes; i += 4096) pool[i] = static_cast<uint8_t>(i >> 12);
  memset(pool.data(), 1, pool_bytes);
  const int calls = 13, warmup = 2, ring_n = calls;
  std::vector<uint8_t> scratch(size_t(1) << 30);
  std::vector<std::vector<uint8_t>> ring(ring_n, std::vector<uint8_t>(chunk_bytes, 0));
  std::mt19937_64 rng(1);
  const size_t runs_bytes[] = {256, 1024, 2048, 4096, 18432, 32768, 262144, 1 << 20};
  printf("memcpy of random runs: pool %zu MiB, %zu MiB per call, a fresh buffer per call, median of %d calls\n",
         pool_bytes >> 20, chunk_bytes >> 20, calls - warmup);
  printf("%10s %8s %9s %9s\n", "run bytes", "threads", "gather", "scatter");
  for (size_t run : runs_bytes) {
    for (int threads = 1; threads <= 2; ++threads) {
      double med[2];
      for (int dir = 0; dir < 2; ++dir) {
        std::vector<double> gbps;
        memset(scratch.data(), static_cast<int>(rng() & 0xff), scratch.size());
        for (int call = 0; call < calls; ++call) {
          const size_t n = chunk_bytes / run;
          std::vector<size_t> src(n);
          for (auto& s : src) s = (rng() % (pool_bytes / run)) * run;
          uint8_t* buf = ring[call % ring_n].data();
          const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for num_threads(threads) schedule(static)
          for (size_t i = 0; i < n; ++i) {
            if (dir == 0) memcpy(buf + i * run, pool.data() + src[i], run);
            else memcpy(pool.data() + src[i], buf + i * run, run);
          }
          const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          if (call >= warmup) gbps.push_back(chunk_bytes / dt / 1e9);
        }
        std::sort(gbps.begin(), gbps.end());
        med[dir] = gbps[gbps.size() / 2];
      }
      printf("%10zu %8d %9.2f %9.2f\n", run, threads, med[0], med[1]);
    }
  }
#if defined(WITH_KERNEL)
  /* The pool as 32 per-layer tensors [2, NB, 16, 1, 128] bf16; chunk [2, 32, T, 128]. */
  const int64_t L = 32, BS = 16, D = 128, es = 2, block_plane_bytes = BS * D * es;
  const int64_t tensor_bytes = static_cast<int64_t>(pool_bytes) / L;
  const int64_t NB = tensor_bytes / (2 * block_plane_bytes);
  const int64_t T = static_cast<int64_t>(chunk_bytes) / (2 * L * D * es);
  std::vector<uintptr_t> addr;
  std::vector<int64_t> nbytes, plane_tensor, plane_offset;
  for (int64_t l = 0; l < L; ++l) {
    addr.push_back(reinterpret_cast<uintptr_t>(pool.data() + l * tensor_bytes));
    nbytes.push_back(tensor_bytes);
  }
  for (int64_t kv = 0; kv < 2; ++kv)
    for (int64_t l = 0; l < L; ++l) { plane_tensor.push_back(l); plane_offset.push_back(kv * NB * BS * D); }
  printf("lmcache-arm kernel (%s, memcpy from %zu B), vllm_flash_nhd 32 layers x 1 x 128 bf16, block 16, "
         "%lld-token chunk, random whole blocks\n", lmcache_arm::isa(), lmcache_arm::get_tuning().memcpy_min_bytes,
         static_cast<long long>(T));
  lmcache_core::KVGeometry g{};  /* K and V alike: one head of D channels, token rows D apart */
  g.num_kinds = 2; g.num_layers = L; g.num_blocks = NB; g.block_size = BS;
  for (int k = 0; k < 2; ++k) {
    g.kind[k] = lmcache_core::KVKindGeometry{1, D, es, BS * D, D, lmcache_core::kv_axis(BS, D), lmcache_core::kv_axis(D, 1)};
  }
  const lmcache_arm::Tuning def = lmcache_arm::get_tuning();
  struct Variant { const char* name; lmcache_arm::Tuning t; };
  const Variant variants[] = {
      {"kernel", def},
      {"all-neon", {SIZE_MAX, def.max_span_bytes, def.coalesce, 0, def.tokens_outer, 1, def.min_bytes_per_thread}},
      {"no-coalesce", {def.memcpy_min_bytes, def.max_span_bytes, false, 0, def.tokens_outer, 1,
                       def.min_bytes_per_thread}},
      {"pf4k-d1", {def.memcpy_min_bytes, def.max_span_bytes, def.coalesce, 4096, def.tokens_outer, 1,
                   def.min_bytes_per_thread}},
      {"pf4k-d3", {def.memcpy_min_bytes, def.max_span_bytes, def.coalesce, 4096, def.tokens_outer, 3,
                   def.min_bytes_per_thread}},
  };
  for (const Variant& v : variants) {
  lmcache_arm::set_tuning(v.t);
  for (int threads = 1; threads <= 2; ++threads) {
    double med[2];
    for (int dir = 0; dir < 2; ++dir) {
      std::vector<double> gbps;
      memset(scratch.data(), static_cast<int>(rng() & 0xff), scratch.size());
      for (int call = 0; call < calls; ++call) {
        std::vector<int64_t> slots;
        while (static_cast<int64_t>(slots.size()) < T) {
          const int64_t b = static_cast<int64_t>(rng() % static_cast<uint64_t>(NB));
          for (int64_t k = 0; k < BS && static_cast<int64_t>(slots.size()) < T; ++k) slots.push_back(b * BS + k);
        }
        lmcache_arm::TransferArgs a;
        a.tensor_address = addr.data();
        a.tensor_nbytes = nbytes.data();
        a.num_tensors = L;
        a.plane_tensor = plane_tensor.data();
        a.plane_offset = plane_offset.data();
        a.plane_table_len = 2 * L;
        a.geometry = g;
        a.slot_mapping = slots.data();
        a.num_tokens = T;
        a.chunk_address = reinterpret_cast<uintptr_t>(ring[call % ring_n].data());
        a.chunk_nbytes = static_cast<int64_t>(chunk_bytes);
        a.num_threads = threads;
        const auto t0 = std::chrono::steady_clock::now();
        const lmcache_arm::Status st = dir == 0 ? lmcache_arm::gather(a) : lmcache_arm::scatter(a);
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (!st.ok) { printf("error: %s\n", st.error.c_str()); return 1; }
        if (call >= warmup) gbps.push_back(chunk_bytes / dt / 1e9);
      }
      std::sort(gbps.begin(), gbps.end());
      med[dir] = gbps[gbps.size() / 2];
    }
    printf("%10s %8d %9.2f %9.2f\n", v.name, threads, med[0], med[1]);
  }
  }
  lmcache_arm::set_tuning(def);
#endif
  return 0;
}
