/*
 * test_driver.cpp - checks the host KV kernels against a scalar reference, without Python.
 *
 * Built from the same sources as the Python extension (csrc/launcher.cpp, csrc/kv_copy.h,
 * lmcache_core/kv_index.h): natively on x86-64 (NEON through SIMDe) and with
 * aarch64-linux-gnu-g++ for a run under qemu-aarch64-static (native NEON). Makefile target:
 * `make -C packages/lmcache-arm cross-test`.
 *
 * Every layout of the core registry is described twice: (1) as the engine's row-major tensors
 * (the scalar reference indexes those, token by token and element by element) and (2) as the
 * plane table and per-kind geometry (block and head strides, split token and channel axes) the
 * core's layout detector derives (what the kernels get). Beyond today's registry: vLLM CPU's
 * transposed K (vec ISA) and pair-packed K and V (amx), Ascend MLA's separate nope/rope tensors of
 * unequal widths, a DSA indexer as a third kind of another element size, and TPU's padded,
 * head-interleaved K/V. For each layout, element size (1, 2, 4, 8 bytes), slot pattern (runs,
 * distinct, holes with -1, all -1, repeats), skip_prefix (none, some with out-of-range slots
 * behind it), thread count and copy policy, gather and scatter must equal the reference byte for
 * byte, and a bad slot must fail with nothing written. Prints "N passed, M failed"; exit status 1
 * on any failure.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "launcher.h"

namespace {

using lmcache_core::KVGeometry;
using lmcache_core::KVKindGeometry;
using lmcache_core::kv_axis;

enum Kind {
  kNHD, kHND, kNHDOverHND, kFlashInfer, kVllmCpu, kMLA, kSGLang, kTrtllm, kNHDChannelStrided,
  kVllmCpuVec, kVllmCpuAmx, kAscendMla, kAscendDsa, kTpu, kNumKinds
};
const char* kKindName[] = {"vllm_flash_nhd", "vllm_flash_hnd", "vllm_flash_nhd+hnd_memory", "flashinfer",
                           "vllm_cpu", "mla", "sglang", "trtllm", "vllm_flash_nhd+channel_strided",
                           "vllm_cpu_vec(K transposed)", "vllm_cpu_amx(K,V pair-packed)",
                           "vllm_ascend_mla(nope,rope)", "vllm_ascend_mla+indexer(3 kinds)", "tpu_inference(padded)"};

constexpr int64_t kAmxPack = 2;   /* amx: channel (K) / token (V) pairs */
constexpr int64_t kAmxTile = 16;  /* amx: tokens (K) / channels (V) per tile */
constexpr int64_t kTpuPack = 2;   /* tpu: heads packed per row */
constexpr int64_t kTpuPad = 8;    /* tpu: head_dim padded to a multiple of this (128 on a TPU) */

/* One layer group's engine tensors (raw bytes) and both descriptions of them. */
struct Model {
  Kind kind;
  int64_t L, NB, BS, H, D, es;  /* layers, blocks, block size, heads, head size, element bytes */
  int64_t num_kinds;
  int64_t W[4], heads[4], kes[4]; /* per kind: width, heads, element bytes */
  int64_t Dp, R;                  /* tpu: padded head size, packed head rows */
  std::vector<std::vector<uint8_t>> tensors;
  std::vector<int64_t> plane_tensor, plane_offset;
  KVGeometry g;

  /* Reference addressing from the engine tensor shapes: (tensor, element offset). */
  void locate(int64_t kv, int64_t l, int64_t slot, int64_t h, int64_t c, int64_t* t, int64_t* off) const {
    const int64_t b = slot / BS, k = slot % BS;
    switch (kind) {
      case kNHD:  /* per layer [2, NB, BS, H, D] */
        *t = l; *off = (((kv * NB + b) * BS + k) * H + h) * D + c; return;
      case kHND:  /* per layer [2, NB, H, BS, D] */
      case kNHDOverHND:  /* NHD shape, HND memory: the same bytes */
        *t = l; *off = (((kv * NB + b) * H + h) * BS + k) * D + c; return;
      case kFlashInfer:  /* per layer [NB, 2, BS, H, D] */
        *t = l; *off = (((b * 2 + kv) * BS + k) * H + h) * D + c; return;
      case kVllmCpu:  /* per layer [NB, H, BS, 2D]; per head BS rows of K, then BS rows of V */
        *t = l; *off = (b * H + h) * 2 * BS * D + kv * BS * D + k * D + c; return;
      case kMLA:  /* per layer [NB, BS, D] */
        *t = l; *off = (b * BS + k) * D + c; return;
      case kSGLang:  /* 2L tensors [NB (slots), H, D]: K of every layer, then V */
        *t = kv * L + l; *off = (slot * H + h) * D + c; return;
      case kTrtllm:  /* one tensor [NB, L, 2, H, BS, D] */
        *t = 0; *off = ((((b * L + l) * 2 + kv) * H + h) * BS + k) * D + c; return;
      case kNHDChannelStrided:  /* per layer memory [2, NB, BS, D, H] viewed as [2, NB, BS, H, D] */
        *t = l; *off = (((kv * NB + b) * BS + k) * D + c) * H + h; return;
      case kVllmCpuVec:  /* per layer [NB, H, 2, BS*D]: K [D, BS] (transposed), V [BS, D] */
        *t = l; *off = (b * H + h) * 2 * BS * D + (kv == 0 ? c * BS + k : BS * D + k * D + c); return;
      case kVllmCpuAmx: {  /* K: tiles of 16 tokens x channel pairs; V: tiles of 16 channels x token pairs */
        const int64_t p = kAmxPack, T = kAmxTile, head = (b * H + h) * 2 * BS * D;
        if (kv == 0) {
          *off = head + (k / T) * T * D + (c / p) * T * p + (k % T) * p + c % p;
        } else {
          *off = head + BS * D + (c / T) * T * BS + (k / p) * T * p + (c % T) * p + k % p;
        }
        *t = l; return;
      }
      case kAscendMla:  /* per layer (nope [NB, BS, 1, W0], rope [NB, BS, 1, W1]) */
      case kAscendDsa:  /* + indexer [NB, BS, 1, W2] of its own element size */
        *t = l * num_kinds + kv; *off = (b * BS + k) * W[kv] + c; return;
      case kTpu:  /* per layer [NB, BS, R / p, p, Dp], head row j = 2h + kv (k0, v0, k1, v1, ...) */
        *t = l; *off = ((b * BS + k) * R + 2 * h + kv) * Dp + c; return;
      default: *t = 0; *off = 0; return;
    }
  }
};

Model make_model(Kind kind, int64_t L, int64_t NB, int64_t BS, int64_t H, int64_t D, int64_t es) {
  Model m{};
  m.kind = kind; m.L = L; m.NB = NB; m.BS = BS; m.H = H; m.D = D; m.es = es;
  m.num_kinds = kind == kMLA ? 1 : (kind == kAscendDsa ? 3 : 2);
  for (int k = 0; k < 4; ++k) { m.W[k] = D; m.heads[k] = H; m.kes[k] = es; }
  if (kind == kAscendMla || kind == kAscendDsa) {
    m.W[0] = D; m.W[1] = 1 + D / 4; m.W[2] = 16; m.heads[0] = m.heads[1] = m.heads[2] = 1;
    m.kes[2] = es == 1 ? 4 : 1;  /* the indexer's own dtype (C8 int8, or a wider one) */
  }
  m.Dp = (D + kTpuPad - 1) / kTpuPad * kTpuPad;
  m.R = (2 * H + kTpuPack - 1) / kTpuPack * kTpuPack;
  int64_t tensor_elems = 0, num_tensors = L;
  KVGeometry& g = m.g;
  g = KVGeometry{};
  g.num_kinds = m.num_kinds; g.num_layers = L; g.num_blocks = NB; g.block_size = BS;
  for (int64_t kv = 0; kv < m.num_kinds; ++kv) {
    for (int64_t l = 0; l < L; ++l) {
      int64_t t = l, off = 0;
      switch (kind) {
        case kNHD: case kHND: case kNHDOverHND: case kNHDChannelStrided: off = kv * NB * BS * H * D; break;
        case kFlashInfer: off = kv * BS * H * D; break;
        case kVllmCpu: case kVllmCpuVec: case kVllmCpuAmx: off = kv * BS * D; break;
        case kMLA: off = 0; break;
        case kSGLang: t = kv * L + l; break;
        case kTrtllm: t = 0; off = kv * H * BS * D + l * 2 * H * BS * D; break;
        case kAscendMla: case kAscendDsa: t = l * m.num_kinds + kv; break;
        case kTpu: off = kv * m.Dp; break;
        default: break;
      }
      m.plane_tensor.push_back(t);
      m.plane_offset.push_back(off);
    }
  }
  /* One-level geometry for every kind first: (block, token, head, channel) strides. */
  int64_t bs_ = 0, ts = 0, hs = 0, cs = 1;
  switch (kind) {
    case kNHD: bs_ = BS * H * D; ts = H * D; hs = D; break;
    case kHND: case kNHDOverHND: bs_ = H * BS * D; ts = D; hs = BS * D; break;
    case kFlashInfer: bs_ = 2 * BS * H * D; ts = H * D; hs = D; break;
    case kVllmCpu: case kVllmCpuVec: case kVllmCpuAmx: bs_ = H * BS * 2 * D; ts = D; hs = BS * 2 * D; break;
    case kMLA: bs_ = BS * D; ts = D; hs = D; break;
    case kSGLang: bs_ = H * D; ts = 0; hs = D; num_tensors = 2 * L; break;
    case kTrtllm: bs_ = L * 2 * H * BS * D; ts = D; hs = BS * D; num_tensors = 1; break;
    case kNHDChannelStrided: bs_ = BS * D * H; ts = D * H; hs = 1; cs = H; break;
    case kTpu: bs_ = BS * m.R * m.Dp; ts = m.R * m.Dp; hs = 2 * m.Dp; break;
    default: break;
  }
  for (int64_t k = 0; k < m.num_kinds; ++k) {
    KVKindGeometry& kg = g.kind[k];
    kg.heads = m.heads[k]; kg.width = m.W[k]; kg.element_size = m.kes[k];
    kg.block_stride = bs_; kg.head_stride = hs;
    kg.token = kv_axis(BS, ts); kg.channel = kv_axis(m.W[k], cs);
    if (kind == kAscendMla || kind == kAscendDsa) {
      kg.block_stride = BS * m.W[k]; kg.head_stride = 0; kg.token = kv_axis(BS, m.W[k]);
    }
  }
  if (kind == kVllmCpuVec) {  /* K transposed: token stride 1, channel stride BS */
    g.kind[0].token = kv_axis(BS, 1); g.kind[0].channel = kv_axis(D, BS);
  }
  if (kind == kVllmCpuAmx) {
    const int64_t p = kAmxPack, T = kAmxTile;
    g.kind[0].token = lmcache_core::KVSplitAxis{2, {T, BS / T, 1}, {p, T * D, 0}};
    g.kind[0].channel = lmcache_core::KVSplitAxis{2, {p, D / p, 1}, {1, T * p, 0}};
    g.kind[1].token = lmcache_core::KVSplitAxis{2, {p, BS / p, 1}, {1, T * p, 0}};
    g.kind[1].channel = lmcache_core::KVSplitAxis{2, {T, D / T, 1}, {p, T * BS, 0}};
  }
  switch (kind) {
    case kSGLang: tensor_elems = NB * H * D; break;
    case kTrtllm: tensor_elems = NB * L * 2 * H * BS * D; break;
    case kMLA: tensor_elems = NB * BS * D; break;
    case kTpu: tensor_elems = NB * BS * m.R * m.Dp; break;
    default: tensor_elems = 2 * NB * BS * H * D; break;
  }
  if (kind == kAscendMla || kind == kAscendDsa) {
    for (int64_t l = 0; l < L; ++l)
      for (int64_t k = 0; k < m.num_kinds; ++k)
        m.tensors.push_back(std::vector<uint8_t>(static_cast<size_t>(NB * BS * m.W[k] * m.kes[k])));
    return m;
  }
  m.tensors.assign(static_cast<size_t>(num_tensors), std::vector<uint8_t>(static_cast<size_t>(tensor_elems * es)));
  return m;
}

/* Bytes of a chunk of n tokens: per kind [L, n, heads * W] of its element size. */
size_t chunk_size(const Model& m, int64_t n) {
  int64_t bytes = 0;
  for (int64_t k = 0; k < m.num_kinds; ++k) bytes += m.L * n * m.heads[k] * m.W[k] * m.kes[k];
  return static_cast<size_t>(bytes);
}

struct Case {
  std::vector<int64_t> slots;
  int64_t skip;
  const char* pattern;
};

Case make_slots(std::mt19937_64& rng, const Model& m, int pattern_index, bool with_skip) {
  const int64_t num_slots = m.NB * m.BS;
  const int64_t n = std::min<int64_t>(num_slots, 5 + static_cast<int64_t>(rng() % 30));
  Case c;
  c.skip = 0;
  static const char* names[] = {"runs", "distinct", "holes", "all_skipped", "repeats"};
  c.pattern = names[pattern_index];
  std::vector<int64_t> perm(static_cast<size_t>(num_slots));
  for (int64_t i = 0; i < num_slots; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  if (pattern_index == 0 || pattern_index == 2) {  /* runs of whole blocks in random order */
    std::vector<int64_t> blocks(static_cast<size_t>(m.NB));
    for (int64_t b = 0; b < m.NB; ++b) blocks[b] = b;
    std::shuffle(blocks.begin(), blocks.end(), rng);
    int64_t start = static_cast<int64_t>(rng() % static_cast<uint64_t>(m.BS));
    for (int64_t b : blocks) {
      for (int64_t k = start; k < m.BS && static_cast<int64_t>(c.slots.size()) < n; ++k) c.slots.push_back(b * m.BS + k);
      start = 0;
    }
    if (pattern_index == 2) {
      for (auto& s : c.slots) if (rng() % 3 == 0) s = -1;
    }
  } else if (pattern_index == 1) {
    c.slots.assign(perm.begin(), perm.begin() + n);
  } else if (pattern_index == 3) {
    c.slots.assign(static_cast<size_t>(n), -1);
  } else {
    for (int64_t i = 0; i < n; ++i) c.slots.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(num_slots)));
  }
  if (with_skip && c.slots.size() > 1) {
    c.skip = 1 + static_cast<int64_t>(rng() % (c.slots.size() - 1));
    const int64_t garbage[] = {num_slots, -7, int64_t(1) << 40};
    for (int64_t t = 0; t < c.skip; ++t) if (rng() % 2) c.slots[t] = garbage[rng() % 3];
  }
  return c;
}

void fill_random(std::mt19937_64& rng, std::vector<uint8_t>& v) {
  for (auto& b : v) b = static_cast<uint8_t>(rng());
}

lmcache_arm::TransferArgs make_args(const Model& m, std::vector<uintptr_t>& addr, std::vector<int64_t>& nbytes,
                                    const Case& c, std::vector<uint8_t>& chunk, int threads) {
  addr.clear();
  nbytes.clear();
  for (const auto& t : m.tensors) {
    addr.push_back(reinterpret_cast<uintptr_t>(t.data()));
    nbytes.push_back(static_cast<int64_t>(t.size()));
  }
  lmcache_arm::TransferArgs a;
  a.tensor_address = addr.data();
  a.tensor_nbytes = nbytes.data();
  a.num_tensors = static_cast<int64_t>(addr.size());
  a.plane_tensor = m.plane_tensor.data();
  a.plane_offset = m.plane_offset.data();
  a.plane_table_len = static_cast<int64_t>(m.plane_tensor.size());
  a.geometry = m.g;
  a.slot_mapping = c.slots.data();
  a.num_tokens = static_cast<int64_t>(c.slots.size());
  a.chunk_address = reinterpret_cast<uintptr_t>(chunk.data());
  a.chunk_nbytes = static_cast<int64_t>(chunk.size());
  a.skip_prefix = c.skip;
  a.num_threads = threads;
  return a;
}

/* Scalar reference, element by element through the engine tensor shapes. */
void reference(Model& m, const Case& c, std::vector<uint8_t>& chunk, bool gather) {
  const int64_t n = static_cast<int64_t>(c.slots.size());
  for (int64_t tok = c.skip; tok < n; ++tok) {
    const int64_t slot = c.slots[tok];
    if (slot < 0) continue;
    int64_t section = 0;
    for (int64_t kv = 0; kv < m.num_kinds; ++kv) {
      const int64_t es = m.kes[kv], hidden = m.heads[kv] * m.W[kv];
      for (int64_t l = 0; l < m.L; ++l)
        for (int64_t h = 0; h < m.heads[kv]; ++h)
          for (int64_t ch = 0; ch < m.W[kv]; ++ch) {
            int64_t t = 0, off = 0;
            m.locate(kv, l, slot, h, ch, &t, &off);
            uint8_t* k = m.tensors[t].data() + off * es;
            uint8_t* x = chunk.data() + section + ((l * n + tok) * hidden + h * m.W[kv] + ch) * es;
            if (gather) memcpy(x, k, es); else memcpy(k, x, es);
          }
      section += m.L * n * hidden * es;
    }
  }
}

struct Tally {
  int passed = 0, failed = 0;
  void check(bool ok, const std::string& what) {
    if (ok) { ++passed; return; }
    ++failed;
    if (failed <= 20) printf("FAIL %s\n", what.c_str());
  }
};

/* Unique live slots, for scatter (repeated slots have no defined winner). */
Case dedup(Case c) {
  std::vector<int64_t> seen;
  for (size_t t = static_cast<size_t>(c.skip); t < c.slots.size(); ++t) {
    if (c.slots[t] < 0) continue;
    bool dup = false;
    for (int64_t s : seen) dup = dup || s == c.slots[t];
    if (dup) c.slots[t] = -1; else seen.push_back(c.slots[t]);
  }
  return c;
}

void run_case(Tally& tally, std::mt19937_64& rng, Model& m, const Case& c0, int threads, const std::string& label) {
  std::vector<uintptr_t> addr;
  std::vector<int64_t> nbytes;
  const int64_t n = static_cast<int64_t>(c0.slots.size());
  const size_t chunk_bytes = chunk_size(m, n);

  /* gather: chunk poisoned on both sides */
  for (auto& t : m.tensors) fill_random(rng, t);
  std::vector<uint8_t> got(chunk_bytes, 0xA5), want(chunk_bytes, 0xA5);
  lmcache_arm::Status st = lmcache_arm::gather(make_args(m, addr, nbytes, c0, got, threads));
  reference(m, c0, want, true);
  tally.check(st.ok && got == want, label + " gather " + (st.ok ? "mismatch" : st.error));

  /* scatter: KV poisoned on both sides, then compared whole */
  const Case c = dedup(c0);
  std::vector<uint8_t> src(chunk_bytes);
  fill_random(rng, src);
  for (auto& t : m.tensors) std::fill(t.begin(), t.end(), 0xA5);
  st = lmcache_arm::scatter(make_args(m, addr, nbytes, c, src, threads));
  std::vector<std::vector<uint8_t>> got_kv = m.tensors;
  for (auto& t : m.tensors) std::fill(t.begin(), t.end(), 0xA5);
  reference(m, c, src, false);
  tally.check(st.ok && got_kv == m.tensors, label + " scatter " + (st.ok ? "mismatch" : st.error));
}

void run_bad_slot(Tally& tally, Model& m, const std::string& label) {
  std::vector<uintptr_t> addr;
  std::vector<int64_t> nbytes;
  const int64_t num_slots = m.NB * m.BS;
  Case c{{0, 1 % num_slots, -1, num_slots}, 0, "bad"};
  const size_t chunk_bytes = chunk_size(m, 4);
  std::vector<uint8_t> chunk(chunk_bytes, 0x5A);
  for (auto& t : m.tensors) std::fill(t.begin(), t.end(), 0xA5);
  const std::vector<std::vector<uint8_t>> before = m.tensors;
  lmcache_arm::Status g = lmcache_arm::gather(make_args(m, addr, nbytes, c, chunk, 2));
  lmcache_arm::Status s = lmcache_arm::scatter(make_args(m, addr, nbytes, c, chunk, 2));
  const std::string want = "slot_mapping[3]: expected -1 <= slot < " + std::to_string(num_slots);
  const bool untouched = m.tensors == before && chunk == std::vector<uint8_t>(chunk_bytes, 0x5A);
  tally.check(!g.ok && !s.ok && g.error.rfind(want, 0) == 0 && untouched, label + " bad slot: " + g.error);
}

/*
 * Hostile plane tables and strides (a KVLayout edited by hand): plane_offset + extent past INT64_MAX
 * once wrapped to a negative end and "fit", writing before the tensor (2-byte elements) or far
 * away (1-byte). Every variant must be refused with nothing written.
 */
void run_overflowing_planes(Tally& tally, Model m, const std::string& label) {
  std::vector<uintptr_t> addr;
  std::vector<int64_t> nbytes;
  const int64_t num_slots = m.NB * m.BS;
  Case c{{0, num_slots - 1}, 0, "overflow"};
  const size_t chunk_bytes = chunk_size(m, 2);
  const int64_t last = static_cast<int64_t>(m.plane_offset.size()) - 1;
  const int64_t last_kind = m.num_kinds - 1;
  const int64_t extent = lmcache_core::kv_plane_extent(m.g, last_kind);
  const int64_t es = m.kes[last_kind], block_stride = m.g.kind[last_kind].block_stride;
  struct Variant { const char* name; int64_t plane_offset; int64_t block_stride; const char* error; };
  const Variant variants[] = {
      {"offset+extent wraps", INT64_MAX - extent + 2, block_stride, "plane_offset["},
      {"offset*element_size wraps", INT64_MAX / es - extent + 2, block_stride, "plane_offset["},
      {"offset near 2^63, large block_stride", int64_t(7) << 60, (int64_t(1) << 62) / m.NB, "plane_offset["},
      {"block_stride overflows the extent", 0, INT64_MAX / 2, "geometry: plane extent"},
      {"negative offset", -1, block_stride, "plane_offset["},
      {"split level stride overflows the extent", 0, -2, "geometry: plane extent"},
  };
  for (const Variant& v : variants) {
    Model bad = m;
    bad.plane_offset[last] = v.plane_offset;
    if (v.block_stride == -2) {  /* the first token level's stride instead */
      lmcache_core::KVSplitAxis& tok = bad.g.kind[last_kind].token;
      if (tok.size[0] < 3) continue;  /* (size - 1) * INT64_MAX / 2 must overflow */
      tok.stride[0] = INT64_MAX / 2;
    } else {
      bad.g.kind[last_kind].block_stride = v.block_stride;
    }
    std::vector<uint8_t> chunk(chunk_bytes, 0x5A);
    for (auto& t : bad.tensors) std::fill(t.begin(), t.end(), 0xA5);
    const std::vector<std::vector<uint8_t>> before = bad.tensors;
    lmcache_arm::Status g = lmcache_arm::gather(make_args(bad, addr, nbytes, c, chunk, 2));
    lmcache_arm::Status s = lmcache_arm::scatter(make_args(bad, addr, nbytes, c, chunk, 2));
    const bool untouched = bad.tensors == before && chunk == std::vector<uint8_t>(chunk_bytes, 0x5A);
    tally.check(!g.ok && !s.ok && g.error.rfind(v.error, 0) == 0 && s.error.rfind(v.error, 0) == 0 && untouched,
                label + " " + v.name + ": " + (g.ok ? "accepted" : g.error));
  }
}

}  // namespace

int main() {
  printf("lmcache-arm kernel check, %s, %d OpenMP threads by default\n", lmcache_arm::isa(),
         lmcache_arm::max_threads());
#if defined(__aarch64__)
  if (strcmp(lmcache_arm::isa(), "NEON native") != 0) {
    printf("FAIL aarch64 build does not use native NEON\n");
    return 1;
  }
#endif
  const lmcache_arm::Tuning def = lmcache_arm::default_tuning();
  struct Policy { const char* name; lmcache_arm::Tuning tuning; };
  const Policy policies[] = {
      {"default", def},
      {"all-neon", {SIZE_MAX, def.max_span_bytes, true, 0, false, 1, 1}},
      {"all-memcpy-tokens-outer", {0, def.max_span_bytes, true, 0, true, 1, 1}},
      {"no-coalescing-heads-outer", {def.memcpy_min_bytes, def.max_span_bytes, false, 0, false, 1, 1}},
      {"one-token-spans-prefetch", {def.memcpy_min_bytes, 1, true, 4096, !def.tokens_outer, 3, 1}},
      {"prefetch", {def.memcpy_min_bytes, def.max_span_bytes, true, 1 << 20, def.tokens_outer, 1, 1}}};
  const int64_t element_sizes[] = {1, 2, 4, 8};
  const int64_t head_sizes[] = {8, 3, 64, 65};
  std::mt19937_64 rng(20240611);
  Tally tally;
  for (int k = 0; k < kNumKinds; ++k) {
    const Kind kind = static_cast<Kind>(k);
    for (int e = 0; e < 4; ++e) {
      const int64_t es = element_sizes[e];
      const bool amx = kind == kVllmCpuAmx;
      int64_t D = kind == kMLA ? (e == 0 ? 576 : head_sizes[e]) : head_sizes[(e + k) % 4];
      if (amx) D = e % 2 ? 32 : 16;  /* multiples of the 16-channel V tile */
      const int64_t H = kind == kMLA ? 1 : 1 + (e + k) % 3;
      const int64_t BS = kind == kSGLang ? 1 : (amx ? (e % 2 ? 32 : 16) : (e % 2 ? 16 : 4));
      const int64_t NB = kind == kSGLang ? 40 : 6;
      Model m = make_model(kind, 2, NB, BS, H, D, es);
      for (const Policy& p : policies) {
        lmcache_arm::set_tuning(p.tuning);
        for (int pattern = 0; pattern < 5; ++pattern) {
          for (int skip = 0; skip < 2; ++skip) {
            const Case c = make_slots(rng, m, pattern, skip == 1);
            const int threads = 1 + (pattern + skip) % 2;
            const std::string label = std::string(kKindName[k]) + " es=" + std::to_string(es) + " H=" +
                                      std::to_string(H) + " D=" + std::to_string(D) + " BS=" + std::to_string(BS) +
                                      " " + p.name + " " + c.pattern + " skip=" + std::to_string(c.skip) +
                                      " threads=" + std::to_string(threads);
            run_case(tally, rng, m, c, threads, label);
          }
        }
      }
      lmcache_arm::set_tuning(def);
      run_bad_slot(tally, m, kKindName[k]);
      run_overflowing_planes(tally, m, kKindName[k]);
    }
  }
  printf("%d passed, %d failed\n", tally.passed, tally.failed);
  return tally.failed == 0 ? 0 : 1;
}
