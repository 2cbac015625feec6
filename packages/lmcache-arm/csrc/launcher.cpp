/*
 * launcher.cpp - checks, span planning and OpenMP dispatch of the host KV kernels.
 *
 * Order of work for one transfer: (1) geometry, plane extents and the chunk's size are checked by the
 * core's shared checks (lmcache_core/kv_checks.h, overflow-checked); the caller's slot mapping is
 * copied once and every live slot of the copy is checked - nothing is written yet; (2) plan_spans groups live chunk tokens of that copy into spans
 * whose plane rows are equally spaced; (3) the (plane, span) work items are split statically over
 * OpenMP threads, plane-major, and each runs copy_span from kv_copy.h.
 */
#include "launcher.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "kv_copy.h"
#include "lmcache_core/kv_checks.h"

namespace lmcache_arm {

using lmcache_core::KVGeometry;

namespace {

/*
 * Measured defaults (PERFORMANCE.md, x86-64 through SIMDe): runs of 512 bytes and more go to memcpy
 * (it beat the NEON loop from 1 KiB rows up; NEON won on 256-byte runs), spans up to 256 KiB,
 * coalescing on (helps memcpy), no software prefetch (no gain measured), tokens outer for per-head
 * runs (0.71 -> 0.89 of memcpy on vLLM CPU pages, one thread).
 */
constexpr size_t kDefaultMemcpyMinBytes = 512;
constexpr int64_t kDefaultMaxSpanBytes = 256 * 1024;
constexpr int64_t kDefaultPrefetchBytes = 0;
/* Not a measured optimum: at ~5-10 GB/s per thread, 64 KiB is ~10 us of copying, above the cost of
 * waking a sleeping OpenMP worker on bare metal (a few us). */
constexpr int64_t kDefaultMinBytesPerThread = 64 * 1024;

std::atomic<size_t> g_memcpy_min_bytes{kDefaultMemcpyMinBytes};
std::atomic<int64_t> g_max_span_bytes{kDefaultMaxSpanBytes};
std::atomic<bool> g_coalesce{true};
std::atomic<int64_t> g_prefetch_bytes{kDefaultPrefetchBytes};
std::atomic<bool> g_tokens_outer{true};
std::atomic<int64_t> g_prefetch_distance{1};
std::atomic<int64_t> g_min_bytes_per_thread{kDefaultMinBytesPerThread};

Status fail(std::string message) {
  Status s;
  s.ok = false;
  s.error = std::move(message);
  return s;
}

std::string str(int64_t v) { return std::to_string(v); }

/* A check's message (empty: fine) as a Status. */
Status from_message(std::string message) { return message.empty() ? Status{} : fail(std::move(message)); }

/* Every live slot (tokens from skip_prefix on) of `slots` [num_tokens] in [-1, num_slots). */
Status check_slots(const TransferArgs& a, const int64_t* slots) {
  return from_message(lmcache_core::kv_check_slots(a.geometry, slots, a.num_tokens, a.skip_prefix, "slot_mapping"));
}

/* Checks that read no slot value (kv_checks.h): geometry, planes, chunk; then this launcher's own. */
Status check_all_but_slots(const TransferArgs& a) {
  const KVGeometry& g = a.geometry;
  std::string message = lmcache_core::kv_check_geometry(g, a.element_size);
  if (message.empty()) {
    message = lmcache_core::kv_check_planes(g, a.element_size, a.tensor_address, a.tensor_nbytes, a.num_tensors,
                                            a.plane_tensor, a.plane_offset, a.plane_table_len);
  }
  if (message.empty()) {
    message = lmcache_core::kv_check_chunk(g, a.element_size, a.num_tokens, a.skip_prefix, a.chunk_address,
                                           a.chunk_nbytes);
  }
  if (!message.empty()) return fail(std::move(message));
  if (a.num_tokens > 0 && a.slot_mapping == nullptr) return fail("slot_mapping: expected a non-null pointer");
  if (a.num_threads < 0) return fail("num_threads: expected >= 0 (0 = default), given " + str(a.num_threads));
  return Status{};
}

/*
 * Group the live tokens from skip_prefix on into spans of equally spaced plane rows. `slots` is
 * the launcher's own checked copy [num_tokens], never the caller's memory.
 */
void plan_spans(const TransferArgs& a, const int64_t* slots, int64_t max_span_tokens, std::vector<Span>* spans) {
  const KVGeometry& g = a.geometry;
  int64_t t = a.skip_prefix;
  while (t < a.num_tokens) {
    if (slots[t] < 0) {
      ++t;
      continue;
    }
    Span s{t, 1, lmcache_core::kv_plane_row(g, slots[t]), 0};
    int64_t last = s.row;  // rows are checked in-range plane offsets: last + step cannot overflow
    while (t + s.count < a.num_tokens && s.count < max_span_tokens) {
      const int64_t next = slots[t + s.count];
      if (next < 0) break;
      const int64_t row = lmcache_core::kv_plane_row(g, next);
      if (s.count == 1) {
        s.step = row - s.row;
      } else if (row != last + s.step) {
        break;
      }
      last = row;
      ++s.count;
    }
    spans->push_back(s);
    t += s.count;
  }
}

template <Direction D>
Status launch(const TransferArgs& a) {
  Status st = check_all_but_slots(a);
  if (!st.ok) return st;
  /* The caller's slot mapping is read exactly once, into this copy; the check and the plan both
     use the copy, so another thread changing a slot meanwhile cannot steer a copy to an unchecked
     address. Tokens before skip_prefix are never read (their entries stay -1). */
  std::vector<int64_t> slots(static_cast<size_t>(a.num_tokens), -1);
  if (a.num_tokens > a.skip_prefix) {
    std::memcpy(slots.data() + a.skip_prefix, a.slot_mapping + a.skip_prefix,
                static_cast<size_t>(a.num_tokens - a.skip_prefix) * sizeof(int64_t));
  }
  st = check_slots(a, slots.data());
  if (!st.ok) return st;
  const KVGeometry& g = a.geometry;
  const int64_t es = a.element_size;
  const int64_t row_bytes = lmcache_core::kv_hidden(g) * es;
  const Tuning tuning = get_tuning();

  WalkPlan w;
  w.g = g;
  w.element_size = es;
  w.num_tokens = a.num_tokens;
  w.run = lmcache_core::kv_contiguous_run(g);
  w.memcpy_min_bytes = tuning.memcpy_min_bytes;
  w.coalesce = tuning.coalesce;
  w.prefetch_bytes = tuning.prefetch_bytes;
  w.tokens_outer = tuning.tokens_outer;
  w.prefetch_distance = tuning.prefetch_distance;

  std::vector<Span> spans;
  spans.reserve(static_cast<size_t>(a.num_tokens - a.skip_prefix));
  plan_spans(a, slots.data(), std::max<int64_t>(1, tuning.max_span_bytes / row_bytes), &spans);
  if (spans.empty()) return st;

  const int64_t planes = lmcache_core::kv_num_planes(g);
  std::vector<uint8_t*> plane_base(static_cast<size_t>(planes));
  std::vector<uint8_t*> tensor_base(static_cast<size_t>(a.num_tensors));
  for (int64_t t = 0; t < a.num_tensors; ++t) tensor_base[t] = reinterpret_cast<uint8_t*>(a.tensor_address[t]);
  for (int64_t p = 0; p < planes; ++p) {
    plane_base[p] = lmcache_core::kv_plane_address(tensor_base.data(), a.plane_tensor, a.plane_offset, p, es);
  }
  uint8_t* const chunk = reinterpret_cast<uint8_t*>(a.chunk_address);
  const int64_t num_spans = static_cast<int64_t>(spans.size());
  const int64_t items = planes * num_spans;
  const Span* span = spans.data();
  uint8_t* const* base = plane_base.data();

  /* one thread per min_bytes_per_thread moved: waking threads for a tiny copy costs more than it saves */
  int64_t live_tokens = 0;
  for (const Span& s : spans) live_tokens += s.count;
  const int64_t payload = live_tokens * planes * row_bytes;
  int threads = a.num_threads > 0 ? a.num_threads : max_threads();
  threads = static_cast<int>(
      std::min<int64_t>({threads, items, std::max<int64_t>(1, payload / tuning.min_bytes_per_thread)}));
  const bool prefetch = w.prefetch_bytes > 0;
  auto run_item = [&](int64_t it) {
    const int64_t p = it / num_spans;
    if (prefetch && it + w.prefetch_distance < items) {
      const int64_t next = it + w.prefetch_distance;
      prefetch_span<D>(w, base[next / num_spans], span[next % num_spans]);
    }
    copy_span<D>(w, base[p], chunk + lmcache_core::kv_chunk_row(g, p, 0, a.num_tokens) * es, span[it % num_spans]);
  };
  if (threads <= 1) {
    for (int64_t it = 0; it < items; ++it) run_item(it);
  } else {
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t it = 0; it < items; ++it) run_item(it);
#else
    for (int64_t it = 0; it < items; ++it) run_item(it);
#endif
  }
  return st;
}

}  // namespace

Tuning default_tuning() {
  return Tuning{kDefaultMemcpyMinBytes, kDefaultMaxSpanBytes, true, kDefaultPrefetchBytes, true, 1,
                kDefaultMinBytesPerThread};
}

Tuning get_tuning() {
  return Tuning{g_memcpy_min_bytes.load(), g_max_span_bytes.load(), g_coalesce.load(), g_prefetch_bytes.load(),
                g_tokens_outer.load(), g_prefetch_distance.load(), g_min_bytes_per_thread.load()};
}

void set_tuning(const Tuning& tuning) {
  g_memcpy_min_bytes.store(tuning.memcpy_min_bytes);
  g_max_span_bytes.store(std::max<int64_t>(1, tuning.max_span_bytes));
  g_coalesce.store(tuning.coalesce);
  g_prefetch_bytes.store(std::max<int64_t>(0, tuning.prefetch_bytes));
  g_tokens_outer.store(tuning.tokens_outer);
  g_prefetch_distance.store(std::max<int64_t>(1, tuning.prefetch_distance));
  g_min_bytes_per_thread.store(std::max<int64_t>(1, tuning.min_bytes_per_thread));
}

Status check_transfer(const TransferArgs& a) {
  Status st = check_all_but_slots(a);
  if (!st.ok) return st;
  return check_slots(a, a.slot_mapping);
}

Status gather(const TransferArgs& args) { return launch<Direction::kGather>(args); }

Status scatter(const TransferArgs& args) { return launch<Direction::kScatter>(args); }

const char* isa() { return LMC_ARM_ISA; }

int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace lmcache_arm
