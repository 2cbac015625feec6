/*
 * launcher.cpp - checks, span planning and OpenMP dispatch of the host KV kernels.
 *
 * Order of work for one transfer: (1) geometry, plane extents and the chunk's size are checked by the
 * core's shared checks (lmcache_core/kv_checks.h, overflow-checked); the caller's slot mapping is
 * copied once and every live slot of the copy is checked - nothing is written yet; (2) per plane
 * kind, plan_spans groups live chunk tokens of that copy into spans whose plane rows are equally
 * spaced (kinds with the same block stride and token axis share one plan), and a kind whose channels
 * are not one contiguous run gets its list of pieces; (3) the (plane, span) work items are split
 * statically over OpenMP threads, plane-major, and each runs copy_span from kv_copy.h.
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
using lmcache_core::KVKindGeometry;
using lmcache_core::KVSplitAxis;

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
  std::string message = lmcache_core::kv_check_geometry(g);
  if (message.empty()) {
    message = lmcache_core::kv_check_planes(g, a.tensor_address, a.tensor_nbytes, a.num_tensors, a.plane_tensor,
                                            a.plane_offset, a.plane_table_len);
  }
  if (message.empty()) {
    message = lmcache_core::kv_check_chunk(g, a.num_tokens, a.skip_prefix, a.chunk_address, a.chunk_nbytes);
  }
  if (!message.empty()) return fail(std::move(message));
  if (a.num_tokens > 0 && a.slot_mapping == nullptr) return fail("slot_mapping: expected a non-null pointer");
  if (a.num_threads < 0) return fail("num_threads: expected >= 0 (0 = default), given " + str(a.num_threads));
  return Status{};
}

bool same_axis(const KVSplitAxis& x, const KVSplitAxis& y) {
  if (x.levels != y.levels) return false;
  for (int64_t l = 0; l < x.levels; ++l) {
    if (x.size[l] != y.size[l] || x.stride[l] != y.stride[l]) return false;
  }
  return true;
}

/* Kinds j and k give the same spans: same block stride, token axis and span length cap. */
bool same_spans(const KVGeometry& g, int64_t j, int64_t k, const int64_t* max_span_tokens) {
  return g.kind[j].block_stride == g.kind[k].block_stride && same_axis(g.kind[j].token, g.kind[k].token) &&
         max_span_tokens[j] == max_span_tokens[k];
}

/*
 * The pieces of one token's row of kind k, in chunk order, neighbours merged when they are adjacent
 * in both the KV row and the chunk row: for kinds whose channels are split or strided.
 */
void plan_pieces(const KVKindGeometry& k, std::vector<Piece>* pieces) {
  for (int64_t h = 0; h < k.heads; ++h) {
    for (int64_t c = 0; c < k.width; ++c) {
      const int64_t kv = h * k.head_stride + lmcache_core::kv_split_offset(k.channel, c);
      const int64_t chunk = h * k.width + c;
      if (!pieces->empty()) {
        Piece& last = pieces->back();
        if (last.kv + last.len == kv && last.chunk + last.len == chunk) {
          ++last.len;
          continue;
        }
      }
      pieces->push_back(Piece{kv, chunk, 1});
    }
  }
}

/*
 * Group the live tokens from skip_prefix on into spans of equally spaced plane rows. `slots` is
 * the launcher's own checked copy [num_tokens], never the caller's memory.
 */
void plan_spans(const TransferArgs& a, int64_t kind, const int64_t* slots, int64_t max_span_tokens,
                std::vector<Span>* spans) {
  const KVGeometry& g = a.geometry;
  int64_t t = a.skip_prefix;
  while (t < a.num_tokens) {
    if (slots[t] < 0) {
      ++t;
      continue;
    }
    Span s{t, 1, lmcache_core::kv_plane_row(g, kind, slots[t]), 0};
    int64_t last = s.row;  // rows are checked in-range plane offsets: last + step cannot overflow
    while (t + s.count < a.num_tokens && s.count < max_span_tokens) {
      const int64_t next = slots[t + s.count];
      if (next < 0) break;
      const int64_t row = lmcache_core::kv_plane_row(g, kind, next);
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
  const int64_t K = g.num_kinds, L = g.num_layers;
  const Tuning tuning = get_tuning();

  WalkPlan w;
  w.num_tokens = a.num_tokens;
  w.memcpy_min_bytes = tuning.memcpy_min_bytes;
  w.coalesce = tuning.coalesce;
  w.prefetch_bytes = tuning.prefetch_bytes;
  w.tokens_outer = tuning.tokens_outer;
  w.prefetch_distance = tuning.prefetch_distance;

  /* Per kind: row plan, span plan (shared by kinds whose token walk is the same), pieces. */
  KindPlan kinds[LMC_KV_MAX_KINDS];
  std::vector<Piece> pieces[LMC_KV_MAX_KINDS];
  std::vector<Span> spans[LMC_KV_MAX_KINDS];
  const std::vector<Span>* kind_spans[LMC_KV_MAX_KINDS];
  int64_t max_span_tokens[LMC_KV_MAX_KINDS];
  int64_t live_tokens = 0;
  for (int64_t k = 0; k < K; ++k) {
    const KVKindGeometry& kg = g.kind[k];
    KindPlan& kp = kinds[k];
    kp.element_size = kg.element_size;
    kp.heads = kg.heads;
    kp.width = kg.width;
    kp.head_stride = kg.head_stride;
    kp.hidden = lmcache_core::kv_kind_hidden(g, k);
    kp.run = lmcache_core::kv_contiguous_run(g, k);
    kp.pieces = nullptr;
    kp.num_pieces = 0;
    kp.unit_pieces = false;
    if (kg.channel.levels == 1 && kg.channel.stride[0] == 1) {
      kp.mode = kp.run == kp.hidden ? RowMode::kWholeRow : RowMode::kPerHead;
    } else {
      kp.mode = RowMode::kPieces;
      plan_pieces(kg, &pieces[k]);
      kp.pieces = pieces[k].data();
      kp.num_pieces = static_cast<int64_t>(pieces[k].size());
      kp.unit_pieces = true;
      for (const Piece& p : pieces[k]) kp.unit_pieces = kp.unit_pieces && p.len == 1;
    }
    max_span_tokens[k] = std::max<int64_t>(1, tuning.max_span_bytes / lmcache_core::kv_kind_row_bytes(g, k));
    kind_spans[k] = &spans[k];
    for (int64_t j = 0; j < k; ++j) {
      if (same_spans(g, j, k, max_span_tokens)) {
        kind_spans[k] = kind_spans[j];
        break;
      }
    }
    if (kind_spans[k] == &spans[k]) {
      spans[k].reserve(static_cast<size_t>(a.num_tokens - a.skip_prefix));
      plan_spans(a, k, slots.data(), max_span_tokens[k], &spans[k]);
    }
  }
  if (kind_spans[0]->empty()) return st;  // no live token: every kind's plan is empty
  for (const Span& s : *kind_spans[0]) live_tokens += s.count;

  const int64_t planes = lmcache_core::kv_num_planes(g);
  std::vector<uint8_t*> plane_base(static_cast<size_t>(planes));
  std::vector<uint8_t*> tensor_base(static_cast<size_t>(a.num_tensors));
  for (int64_t t = 0; t < a.num_tensors; ++t) tensor_base[t] = reinterpret_cast<uint8_t*>(a.tensor_address[t]);
  for (int64_t p = 0; p < planes; ++p) {
    plane_base[p] = lmcache_core::kv_plane_address(tensor_base.data(), a.plane_tensor, a.plane_offset, p,
                                                   g.kind[p / L].element_size);
  }
  uint8_t* const chunk = reinterpret_cast<uint8_t*>(a.chunk_address);

  /* Work items: kind-major, then layer, then span. first_item[k]: first item of kind k. */
  int64_t first_item[LMC_KV_MAX_KINDS + 1];
  int64_t num_spans[LMC_KV_MAX_KINDS];
  const Span* span[LMC_KV_MAX_KINDS];
  uint8_t* section[LMC_KV_MAX_KINDS];
  int64_t payload = 0;
  first_item[0] = 0;
  for (int64_t k = 0; k < K; ++k) {
    num_spans[k] = static_cast<int64_t>(kind_spans[k]->size());
    span[k] = kind_spans[k]->data();
    first_item[k + 1] = first_item[k] + L * num_spans[k];
    section[k] = chunk + lmcache_core::kv_chunk_section_offset_bytes(g, k, a.num_tokens);
    payload += live_tokens * L * lmcache_core::kv_kind_row_bytes(g, k);
  }
  const int64_t items = first_item[K];
  uint8_t* const* base = plane_base.data();
  const int64_t num_tokens = a.num_tokens;

  /* one thread per min_bytes_per_thread moved: waking threads for a tiny copy costs more than it saves */
  int threads = a.num_threads > 0 ? a.num_threads : max_threads();
  threads = static_cast<int>(
      std::min<int64_t>({threads, items, std::max<int64_t>(1, payload / tuning.min_bytes_per_thread)}));
  const bool prefetch = w.prefetch_bytes > 0;
  auto kind_of = [&](int64_t it) {
    int64_t k = 0;
    while (it >= first_item[k + 1]) ++k;
    return k;
  };
  auto run_item = [&](int64_t it) {
    const int64_t k = kind_of(it);
    const int64_t local = it - first_item[k];
    const int64_t layer = local / num_spans[k];
    if (prefetch && it + w.prefetch_distance < items) {
      const int64_t next = it + w.prefetch_distance;
      const int64_t nk = kind_of(next);
      const int64_t nl = next - first_item[nk];
      prefetch_span<D>(w, kinds[nk], base[nk * L + nl / num_spans[nk]], span[nk][nl % num_spans[nk]]);
    }
    const int64_t row_bytes = lmcache_core::kv_kind_row_bytes(g, k);
    copy_span<D>(w, kinds[k], base[k * L + layer], section[k] + layer * num_tokens * row_bytes,
                 span[k][local % num_spans[k]]);
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
