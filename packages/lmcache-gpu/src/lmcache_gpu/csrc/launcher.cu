/*
 * launcher.cu - the transfer launcher: checks, the caches a transfer keeps (plane tables,
 * per-stream staging and slot buffers) and the launch of kv_transfer_kernel (kv_transfer.cuh).
 * The runtime services it builds on (devices, host memory, streams, events) are runtime.cu's.
 * lmcache-cuda compiles it with nvcc; lmcache-rocm compiles this same file as HIP
 * (set_source_files_properties(... LANGUAGE HIP)). Every runtime call goes through gpu_compat.h's
 * LMC_ macros.
 *
 * Order of work for one transfer (see launcher.h):
 *   1. check_layout (plan.cpp): geometry, plane table, extents, chunk sizes - host only;
 *   2. slot checks on the host, on a copy: the caller's slots are read once - a host mapping into
 *      pageable memory of ours, a device mapping device-to-device into per-stream scratch and from
 *      there into page-locked scratch (one stream synchronisation) - and the kernel reads only the
 *      checked copy in device scratch. A bad slot raises before any kernel is queued, so nothing
 *      is written;
 *   3. the device pointer table of plane addresses: uploaded once per (device, plane addresses)
 *      and reused (an LRU of kMaxPlaneTables). Each table remembers an event per stream that
 *      used it; an evicted table waits for those events only (never the whole device) and its
 *      memory is reused by the next table. Checked host slot copies are uploaded into the
 *      per-stream device scratch (stream-ordered, so reuse is safe);
 *   4. per chunk: device memory directly, page-locked host memory through its mapped device
 *      address (HostPath::kMapped) or through a per-stream device staging buffer and 2-D async
 *      copies of the live token runs only (HostPath::kStaged; pageable memory always);
 *   5. one kernel launch per kMaxJobsPerLaunch chunks, vector width from plan_copy.
 */
#include <algorithm>
#include <atomic>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kv_transfer.cuh"
#include "launcher.h"
#include "runtime.h"
#include "runtime_check.h"

namespace lmcache_gpu {

namespace {

constexpr size_t kMaxPlaneTables = 256;
constexpr size_t kStagingAlign = 256;   /* bytes between staged chunks in the staging buffer */

/* ---- plane tables: device arrays of plane addresses, one per (device, addresses) ---------- */

struct PlaneTable {
  int device = 0;
  std::vector<uintptr_t> planes;
  void* memory = nullptr;
  size_t nbytes = 0;
  std::vector<std::pair<uintptr_t, LMC_EVENT_T>> last_use;  /* per stream: recorded after its last launch */
};

std::mutex g_table_mutex;
std::list<PlaneTable> g_tables;  // most recently used first
std::atomic<int64_t> g_table_uploads{0};
std::atomic<int64_t> g_table_hits{0};

/* Wait for the launches that read `t` (their streams only), then drop its events. */
void retire_table(PlaneTable& t) {
  for (auto& use : t.last_use) {
    check(LMC_EVENT_SYNCHRONIZE(use.second), "EventSynchronize (plane-table eviction)");
    (void)LMC_EVENT_DESTROY(use.second);
  }
  t.last_use.clear();
}

PlaneTable& plane_table(int device, const std::vector<uintptr_t>& planes, LMC_STREAM_T stream) {
  /* g_table_mutex held by the caller */
  for (auto it = g_tables.begin(); it != g_tables.end(); ++it) {
    if (it->device == device && it->planes == planes) {
      g_tables.splice(g_tables.begin(), g_tables, it);
      g_table_hits.fetch_add(1);
      return g_tables.front();
    }
  }
  const size_t nbytes = planes.size() * sizeof(uintptr_t);
  void* memory = nullptr;
  size_t capacity = 0;
  if (g_tables.size() >= kMaxPlaneTables) {  /* reuse the oldest table's memory once its readers are done */
    PlaneTable& oldest = g_tables.back();
    DeviceGuard guard(oldest.device);
    retire_table(oldest);
    if (oldest.device == device && oldest.nbytes >= nbytes) {
      memory = oldest.memory;
      capacity = oldest.nbytes;
    } else {
      check(LMC_FREE(oldest.memory), "Free (plane table)");
    }
    g_tables.pop_back();
  }
  if (memory == nullptr) {
    check(LMC_MALLOC(&memory, nbytes), "Malloc (plane table)");
    capacity = nbytes;
  }
  LMC_ERROR_T st = LMC_MEMCPY_ASYNC(memory, planes.data(), nbytes, LMC_MEMCPY_HOST_TO_DEVICE, stream);
  if (st == LMC_SUCCESS) st = LMC_STREAM_SYNCHRONIZE(stream);  // once per table: later calls on any stream may use it
  if (st != LMC_SUCCESS) {
    (void)LMC_FREE(memory);
    check(st, "MemcpyAsync (plane table upload)");
  }
  PlaneTable t;
  t.device = device;
  t.planes = planes;
  t.memory = memory;
  t.nbytes = capacity;
  g_tables.push_front(std::move(t));
  g_table_uploads.fetch_add(1);
  return g_tables.front();
}

/* Remember that work queued on `stream` so far reads `t` (current device == t.device). */
void mark_table_use(PlaneTable& t, uintptr_t stream_handle) {
  LMC_EVENT_T* event = nullptr;
  for (auto& use : t.last_use) {
    if (use.first == stream_handle) event = &use.second;
  }
  if (event == nullptr) {
    LMC_EVENT_T e = nullptr;
    check(LMC_EVENT_CREATE_NO_TIMING(&e), "EventCreateWithFlags (plane-table use)");
    t.last_use.emplace_back(stream_handle, e);
    event = &t.last_use.back().second;
  }
  check(LMC_EVENT_RECORD(*event, as_stream(stream_handle)), "EventRecord (plane-table use)");
}

/* ---- per-stream resources: device staging, page-locked slot scratch ------------------------ */

struct StreamResources {
  std::mutex mutex;       /* held for a whole transfer on this stream */
  int device = 0;
  void* staging = nullptr;
  size_t staging_bytes = 0;
  void* slot_scratch = nullptr;  /* page-locked host memory: device slot mappings copied for checking */
  size_t slot_scratch_bytes = 0;
  void* slot_upload = nullptr;   /* device memory: the checked slot copies the kernel reads */
  size_t slot_upload_bytes = 0;
};

std::mutex g_stream_mutex;
std::map<std::pair<int, uintptr_t>, std::unique_ptr<StreamResources>> g_streams;
std::atomic<int64_t> g_slot_copies{0};

StreamResources& stream_resources(int device, uintptr_t stream) {
  std::lock_guard<std::mutex> lock(g_stream_mutex);
  auto& slot = g_streams[{device, stream}];
  if (!slot) {
    slot = std::make_unique<StreamResources>();
    slot->device = device;
  }
  return *slot;
}

/* Grow the staging buffer to at least nbytes; earlier work on the stream may still use it. */
uint8_t* staging(StreamResources& r, size_t nbytes, LMC_STREAM_T stream) {
  if (r.staging_bytes < nbytes) {
    if (r.staging != nullptr) {
      check(LMC_STREAM_SYNCHRONIZE(stream), "StreamSynchronize (staging growth)");
      check(LMC_FREE(r.staging), "Free (staging)");
      r.staging = nullptr;
      r.staging_bytes = 0;
    }
    const size_t grown = std::max({nbytes, r.staging_bytes * 2, static_cast<size_t>(1) << 20});
    check(LMC_MALLOC(&r.staging, grown), "Malloc (staging)");
    r.staging_bytes = grown;
  }
  return static_cast<uint8_t*>(r.staging);
}

int64_t* slot_upload(StreamResources& r, size_t nbytes, LMC_STREAM_T stream) {
  if (r.slot_upload_bytes < nbytes) {
    const size_t grown = std::max({nbytes, r.slot_upload_bytes * 2, static_cast<size_t>(64) << 10});
    if (r.slot_upload != nullptr) {
      check(LMC_STREAM_SYNCHRONIZE(stream), "StreamSynchronize (slot upload growth)");
      check(LMC_FREE(r.slot_upload), "Free (slot upload)");
    }
    r.slot_upload = nullptr;
    r.slot_upload_bytes = 0;
    check(LMC_MALLOC(&r.slot_upload, grown), "Malloc (slot upload)");
    r.slot_upload_bytes = grown;
  }
  return static_cast<int64_t*>(r.slot_upload);
}

int64_t* slot_scratch(StreamResources& r, size_t nbytes) {
  if (r.slot_scratch_bytes < nbytes) {
    const size_t grown = std::max({nbytes, r.slot_scratch_bytes * 2, static_cast<size_t>(64) << 10});
    if (r.slot_scratch != nullptr) check(LMC_FREE_HOST(r.slot_scratch), "FreeHost (slot scratch)");
    r.slot_scratch = nullptr;
    r.slot_scratch_bytes = 0;
    check(LMC_HOST_ALLOC(&r.slot_scratch, grown), "HostAlloc (slot scratch)");
    r.slot_scratch_bytes = grown;
  }
  return static_cast<int64_t*>(r.slot_scratch);
}

/* Runs [first, last) of consecutive live tokens (slot >= 0) from skip_prefix on. */
std::vector<std::pair<int64_t, int64_t>> live_runs(const int64_t* slots, int64_t num_tokens, int64_t skip_prefix) {
  std::vector<std::pair<int64_t, int64_t>> runs;
  int64_t t = skip_prefix;
  while (t < num_tokens) {
    if (slots[t] < 0) {
      ++t;
      continue;
    }
    const int64_t first = t;
    while (t < num_tokens && slots[t] >= 0) ++t;
    runs.emplace_back(first, t);
  }
  return runs;
}

/*
 * Copy the live token rows of every plane between a host chunk and its staging copy: one 2-D copy
 * per run of live tokens (height = planes, pitch = one plane of the chunk). Rows of skipped tokens
 * are never copied, so a staged gather leaves them untouched in the host chunk, as the contract
 * says.
 */
/* The live token rows [first, second) of every run, in every layer of every kind's section of a
   chunk of num_tokens tokens: one 2-D copy (layers as rows of the copy) per run and kind. */
void copy_live_rows(uint8_t* dst, const uint8_t* src, const std::vector<std::pair<int64_t, int64_t>>& runs,
                    const KVGeometry& g, int64_t num_tokens, bool to_host, LMC_STREAM_T stream) {
  for (int64_t k = 0; k < g.num_kinds; ++k) {
    const int64_t row_bytes = lmcache_core::kv_kind_row_bytes(g, k);
    const size_t section = static_cast<size_t>(lmcache_core::kv_chunk_section_offset_bytes(g, k, num_tokens));
    const size_t pitch = static_cast<size_t>(num_tokens * row_bytes);
    for (const auto& run : runs) {
      const size_t offset = section + static_cast<size_t>(run.first * row_bytes);
      const size_t width = static_cast<size_t>((run.second - run.first) * row_bytes);
      check(LMC_MEMCPY_2D_ASYNC(dst + offset, pitch, src + offset, pitch, width, static_cast<size_t>(g.num_layers),
                                to_host ? LMC_MEMCPY_DEVICE_TO_HOST : LMC_MEMCPY_HOST_TO_DEVICE, stream),
            to_host ? "Memcpy2DAsync (staging -> host chunk)" : "Memcpy2DAsync (host chunk -> staging)");
    }
  }
}

template <int D>
void launch_kernel(const KernelParams& p, dim3 grid, int width, LMC_STREAM_T stream) {
  (void)LMC_GET_LAST_ERROR();  /* a stale error from an earlier call is not this launch's */
  switch (width) {
    case 16: kv_transfer_kernel<16, D><<<grid, kThreads, 0, stream>>>(p); break;
    case 8: kv_transfer_kernel<8, D><<<grid, kThreads, 0, stream>>>(p); break;
    case 4: kv_transfer_kernel<4, D><<<grid, kThreads, 0, stream>>>(p); break;
    case 2: kv_transfer_kernel<2, D><<<grid, kThreads, 0, stream>>>(p); break;
    default: kv_transfer_kernel<1, D><<<grid, kThreads, 0, stream>>>(p); break;
  }
  check(LMC_GET_LAST_ERROR(), "kernel launch (kv_transfer_kernel)");
}

}  // namespace

std::vector<std::string> transfer(const TransferArgs& args, bool gather, HostPath host_path, uintptr_t stream_handle) {
  check_layout(args);
  const KVGeometry& g = args.geometry;
  const int64_t n_jobs = args.num_jobs;
  std::vector<std::string> paths(static_cast<size_t>(n_jobs), "nothing to move");

  /* 2. slots: host copies first (no device needed), so a bad slot never reaches the device. The
     values are copied once into pageable memory of our own; the check, the run planning and any
     upload all use that copy, so the caller may reuse its buffer as soon as this returns. */
  std::vector<const int64_t*> host_slots(static_cast<size_t>(n_jobs), nullptr);
  std::vector<std::vector<int64_t>> copied(static_cast<size_t>(n_jobs));
  bool need_device_copy = false;
  for (int64_t j = 0; j < n_jobs; ++j) {
    const Job& job = args.jobs[j];
    if (job.num_tokens <= job.skip_prefix) continue;
    if (job.slots_host != 0) {
      const int64_t* given = reinterpret_cast<const int64_t*>(job.slots_host);
      copied[j].assign(given, given + job.num_tokens);
      host_slots[j] = copied[j].data();
      check_slots(g, host_slots[j], job.num_tokens, job.skip_prefix, job_field(args, j, "slot_mapping"));
    } else {
      need_device_copy = true;
    }
  }
  bool any_live_job = false;
  for (int64_t j = 0; j < n_jobs; ++j) any_live_job |= args.jobs[j].num_tokens > args.jobs[j].skip_prefix;
  if (!any_live_job) return paths;

  DeviceGuard guard(args.device);
  const LMC_STREAM_T stream = as_stream(stream_handle);
  StreamResources& res = stream_resources(args.device, stream_handle);
  std::lock_guard<std::mutex> lock(res.mutex);

  /* Every live job's slots reach the kernel from per-stream device scratch (`upload`), never from
     the caller's memory: host mappings as the copy checked above; device mappings copied device to
     device first, and that copy brought back to the host and checked. The caller's slots are read
     once, so a writer changing them after the check cannot steer the kernel. A job giving both
     host and device slots uses its (checked) host ones. */
  std::vector<uintptr_t> kernel_slots(static_cast<size_t>(n_jobs), 0);
  std::vector<size_t> upload_at(static_cast<size_t>(n_jobs), 0);
  size_t upload_total = 0;
  for (int64_t j = 0; j < n_jobs; ++j) {
    const Job& job = args.jobs[j];
    if (job.num_tokens <= job.skip_prefix) continue;
    upload_at[j] = upload_total;
    upload_total += static_cast<size_t>(job.num_tokens);
  }
  int64_t* upload = slot_upload(res, upload_total * sizeof(int64_t), stream);
  for (int64_t j = 0; j < n_jobs; ++j) {
    if (args.jobs[j].num_tokens > args.jobs[j].skip_prefix) {
      kernel_slots[j] = reinterpret_cast<uintptr_t>(upload + upload_at[j]);
    }
  }

  if (need_device_copy) {
    size_t total = 0;
    for (int64_t j = 0; j < n_jobs; ++j) {
      const Job& job = args.jobs[j];
      if (job.num_tokens > job.skip_prefix && host_slots[j] == nullptr) total += static_cast<size_t>(job.num_tokens);
    }
    int64_t* scratch = slot_scratch(res, total * sizeof(int64_t));
    size_t at = 0;
    std::vector<size_t> where(static_cast<size_t>(n_jobs), 0);
    for (int64_t j = 0; j < n_jobs; ++j) {
      const Job& job = args.jobs[j];
      if (job.num_tokens <= job.skip_prefix || host_slots[j] != nullptr) continue;
      where[j] = at;
      const size_t nbytes = static_cast<size_t>(job.num_tokens) * sizeof(int64_t);
      check(LMC_MEMCPY_ASYNC(upload + upload_at[j], reinterpret_cast<const void*>(job.slots_device), nbytes,
                             LMC_MEMCPY_DEVICE_TO_DEVICE, stream),
            "MemcpyAsync (slot mapping -> device scratch)");
      check(LMC_MEMCPY_ASYNC(scratch + at, upload + upload_at[j], nbytes, LMC_MEMCPY_DEVICE_TO_HOST, stream),
            "MemcpyAsync (slot mapping -> host for checking)");
      at += static_cast<size_t>(job.num_tokens);
    }
    check(LMC_STREAM_SYNCHRONIZE(stream), "StreamSynchronize (slot mapping check)");
    g_slot_copies.fetch_add(1);
    for (int64_t j = 0; j < n_jobs; ++j) {
      const Job& job = args.jobs[j];
      if (job.num_tokens <= job.skip_prefix || host_slots[j] != nullptr) continue;
      /* keep a private copy: the scratch is reused by the next transfer on this stream */
      copied[j].assign(scratch + where[j], scratch + where[j] + job.num_tokens);
      host_slots[j] = copied[j].data();
      check_slots(g, host_slots[j], job.num_tokens, job.skip_prefix, job_field(args, j, "slot_mapping"));
    }
  }

  /* host slot mappings: upload our checked pageable copy (the runtime stages pageable sources
     before MemcpyAsync returns, so the copy may die with this call) */
  for (int64_t j = 0; j < n_jobs; ++j) {
    const Job& job = args.jobs[j];
    if (job.num_tokens <= job.skip_prefix || job.slots_host == 0) continue;
    check(LMC_MEMCPY_ASYNC(upload + upload_at[j], host_slots[j], static_cast<size_t>(job.num_tokens) * sizeof(int64_t),
                           LMC_MEMCPY_HOST_TO_DEVICE, stream),
          "MemcpyAsync (host slot mapping -> device)");
  }

  /* 3. pointer table: held under g_table_mutex until this call's launches are marked on it,
     so it cannot be evicted and reused in between */
  const std::vector<uintptr_t> planes = plane_addresses(args);
  std::unique_lock<std::mutex> table_lock(g_table_mutex);
  PlaneTable& table_entry = plane_table(args.device, planes, stream);
  uint8_t* const* table = static_cast<uint8_t* const*>(table_entry.memory);

  /* 4. where each chunk is reached */
  std::vector<uintptr_t> kernel_chunk(static_cast<size_t>(n_jobs), 0);
  std::vector<size_t> staged_offset(static_cast<size_t>(n_jobs), SIZE_MAX);
  std::vector<std::vector<std::pair<int64_t, int64_t>>> runs(static_cast<size_t>(n_jobs));
  size_t staging_needed = 0;
  for (int64_t j = 0; j < n_jobs; ++j) {
    const Job& job = args.jobs[j];
    if (job.num_tokens <= job.skip_prefix) continue;
    runs[j] = live_runs(host_slots[j], job.num_tokens, job.skip_prefix);
    if (runs[j].empty()) {
      paths[j] = "nothing to move";
      continue;
    }
    if (job.chunk_on_device) {
      kernel_chunk[j] = job.chunk;
      paths[j] = "device";
      continue;
    }
    void* mapped = host_path == HostPath::kMapped ? lmc_mapped_device_pointer(reinterpret_cast<void*>(job.chunk)) : nullptr;
    if (mapped != nullptr) {
      kernel_chunk[j] = reinterpret_cast<uintptr_t>(mapped);
      paths[j] = "mapped";
      continue;
    }
    paths[j] = host_path == HostPath::kMapped ? "staged (pageable host memory)" : "staged";
    staged_offset[j] = staging_needed;
    staging_needed += (static_cast<size_t>(job.chunk_nbytes) + kStagingAlign - 1) / kStagingAlign * kStagingAlign;
  }
  uint8_t* stage = staging_needed > 0 ? staging(res, staging_needed, stream) : nullptr;
  std::vector<uintptr_t> chunk_addresses;
  for (int64_t j = 0; j < n_jobs; ++j) {
    if (staged_offset[j] != SIZE_MAX) kernel_chunk[j] = reinterpret_cast<uintptr_t>(stage + staged_offset[j]);
    if (!runs[j].empty()) chunk_addresses.push_back(kernel_chunk[j]);
  }
  const CopyPlan plan = plan_copy(args, planes, chunk_addresses);

  if (!gather) {
    for (int64_t j = 0; j < n_jobs; ++j) {
      if (staged_offset[j] == SIZE_MAX) continue;
      copy_live_rows(reinterpret_cast<uint8_t*>(kernel_chunk[j]), reinterpret_cast<const uint8_t*>(args.jobs[j].chunk),
                     runs[j], g, args.jobs[j].num_tokens, false, stream);
    }
  }

  /* 5. launches: up to kMaxJobsPerLaunch chunks each */
  KernelParams p = make_params(table, g, plan);
  int64_t j = 0;
  try {
  while (j < n_jobs) {
    p.num_jobs = 0;
    for (; j < n_jobs && p.num_jobs < kMaxJobsPerLaunch; ++j) {
      if (runs[j].empty()) continue;
      add_job(&p, reinterpret_cast<uint8_t*>(kernel_chunk[j]), reinterpret_cast<const int64_t*>(kernel_slots[j]),
              args.jobs[j].num_tokens, args.jobs[j].skip_prefix);
    }
    if (p.num_jobs == 0) break;
    const dim3 grid = launch_grid(p, plan);
    if (gather) {
      launch_kernel<kGather>(p, grid, plan.vector_bytes, stream);
    } else {
      launch_kernel<kScatter>(p, grid, plan.vector_bytes, stream);
    }
  }
  } catch (...) {  /* launches already queued read the table: mark it before anything else may evict it */
    try {
      mark_table_use(table_entry, stream_handle);
    } catch (...) {
    }
    throw;
  }
  mark_table_use(table_entry, stream_handle);
  table_lock.unlock();

  if (gather) {
    for (int64_t k = 0; k < n_jobs; ++k) {
      if (staged_offset[k] == SIZE_MAX) continue;
      copy_live_rows(reinterpret_cast<uint8_t*>(args.jobs[k].chunk), reinterpret_cast<const uint8_t*>(kernel_chunk[k]),
                     runs[k], g, args.jobs[k].num_tokens, true, stream);
    }
  }
  return paths;
}

std::string kernel_image_error(int device) {
  DeviceGuard guard(device);
  LMC_FUNC_ATTR_T attr{};
  void (*const kernel)(const KernelParams) = kv_transfer_kernel<16, kGather>;
  const LMC_ERROR_T st = LMC_FUNC_GET_ATTRIBUTES(&attr, kernel);
  if (st == LMC_SUCCESS) return "";
  (void)LMC_GET_LAST_ERROR();
  return std::string(LMC_GET_ERROR_NAME(st)) + ": " + LMC_GET_ERROR_STRING(st);
}

void stream_release(uintptr_t stream) {
  {
    std::lock_guard<std::mutex> lock(g_stream_mutex);
    for (auto it = g_streams.begin(); it != g_streams.end();) {
      if (it->first.second != stream) {
        ++it;
        continue;
      }
      StreamResources& r = *it->second;
      std::lock_guard<std::mutex> busy(r.mutex);
      DeviceGuard guard(r.device);
      (void)LMC_STREAM_SYNCHRONIZE(as_stream(stream));
      if (r.staging != nullptr) (void)LMC_FREE(r.staging);
      if (r.slot_scratch != nullptr) (void)LMC_FREE_HOST(r.slot_scratch);
      if (r.slot_upload != nullptr) (void)LMC_FREE(r.slot_upload);
      it = g_streams.erase(it);
    }
  }
  {
    /* forget the stream in the plane tables' last-use events (its work is done) */
    std::lock_guard<std::mutex> lock(g_table_mutex);
    for (auto& t : g_tables) {
      for (auto it = t.last_use.begin(); it != t.last_use.end();) {
        if (it->first != stream) {
          ++it;
          continue;
        }
        (void)LMC_EVENT_DESTROY(it->second);
        it = t.last_use.erase(it);
      }
    }
  }
  stream_destroy(stream);
}

CacheStats cache_stats() {
  CacheStats s;
  {
    std::lock_guard<std::mutex> lock(g_table_mutex);
    s.plane_tables = static_cast<int64_t>(g_tables.size());
  }
  {
    std::lock_guard<std::mutex> lock(g_stream_mutex);
    for (const auto& kv : g_streams) s.staging_bytes += static_cast<int64_t>(kv.second->staging_bytes);
  }
  s.pooled_events = pooled_events();
  s.plane_table_uploads = g_table_uploads.load();
  s.plane_table_hits = g_table_hits.load();
  s.slot_copies = g_slot_copies.load();
  return s;
}

void release_caches() {
  {
    std::lock_guard<std::mutex> lock(g_table_mutex);
    for (auto& t : g_tables) {
      DeviceGuard guard(t.device);
      retire_table(t);  /* waits for the streams that used it, not the device */
      check(LMC_FREE(t.memory), "Free (plane table)");
    }
    g_tables.clear();
  }
  release_event_pool();
  std::lock_guard<std::mutex> lock(g_stream_mutex);
  for (auto& kv : g_streams) {
    StreamResources& r = *kv.second;
    std::lock_guard<std::mutex> busy(r.mutex);
    DeviceGuard guard(r.device);
    check(LMC_STREAM_SYNCHRONIZE(as_stream(kv.first.second)), "StreamSynchronize (release)");
    if (r.staging != nullptr) check(LMC_FREE(r.staging), "Free (staging)");
    if (r.slot_scratch != nullptr) check(LMC_FREE_HOST(r.slot_scratch), "FreeHost (slot scratch)");
    if (r.slot_upload != nullptr) check(LMC_FREE(r.slot_upload), "Free (slot upload)");
    r.staging = nullptr;
    r.slot_scratch = nullptr;
    r.slot_upload = nullptr;
    r.staging_bytes = r.slot_scratch_bytes = r.slot_upload_bytes = 0;
  }
}

}  // namespace lmcache_gpu
