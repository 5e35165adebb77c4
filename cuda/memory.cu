// The stream, the caching allocator and the pinned staging buffer.
//
// Allocator: blocks are rounded up to a size class (512 B steps below 1 MiB, 2 MiB steps
// above) and freed blocks go to a free list keyed by class, so a training loop that
// allocates the same shapes every step calls cudaMalloc only in its first step. When
// cudaMalloc runs out of memory, the cache is released and the allocation retried once.
// Global state is allocated once and never destroyed: at process exit the CUDA runtime
// may already be gone, and cudaFree from a static destructor would crash.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

#include "common.cuh"

namespace bn {
namespace cuda {

namespace {

struct StreamState {
  std::once_flag once;
  cudaStream_t stream = nullptr;
  cudaError_t error = cudaSuccess;
};
StreamState& stream_state() {
  static StreamState* s = new StreamState;
  return *s;
}

struct Allocator {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;  // size class -> block
  std::unordered_map<void*, size_t> live;    // block -> size class
  size_t allocated = 0, cached = 0, peak = 0;
  double mallocs = 0, hits = 0;
};
Allocator& allocator() {
  static Allocator* a = new Allocator;
  return *a;
}

size_t size_class(size_t bytes) {
  const size_t small = 512, large = size_t{2} << 20;
  if (bytes < (size_t{1} << 20)) return (bytes + small - 1) / small * small;
  return (bytes + large - 1) / large * large;
}

// Frees every cached block; the caller holds a.mu.
cudaError_t release_cached(Allocator& a) {
  cudaError_t first = cudaSuccess;
  for (auto& kv : a.free_blocks) {
    const cudaError_t e = cudaFree(kv.second);
    if (e != cudaSuccess && first == cudaSuccess) first = e;
  }
  a.free_blocks.clear();
  a.cached = 0;
  return first;
}

// Pinned staging: two chunks used alternately, each with an event that says when the
// DMA that last used it has finished.
constexpr size_t kStageChunk = size_t{4} << 20;
// Small uploads (per-channel parameters, a few KiB) take the next slot of a ring instead:
// a slot's last DMA was queued kSmallSlots uploads ago, so a run of small uploads (gamma
// and beta every training step) does not wait for the GPU work queued before them, and
// the host still stays at most kSmallSlots uploads ahead of the device.
constexpr size_t kSmallBytes = size_t{64} << 10;
constexpr int kSmallSlots = 16;

struct Staging {
  std::mutex mu;
  bool ready = false;
  char* buf[2] = {nullptr, nullptr};
  cudaEvent_t done[2] = {nullptr, nullptr};
  char* small = nullptr;  // kSmallSlots slots of kSmallBytes
  cudaEvent_t small_done[kSmallSlots] = {};
  int next_small = 0;
};
Staging& staging() {
  static Staging* s = new Staging;
  return *s;
}

Status staging_init(Staging& st, const char* op) {
  if (st.ready) return Status::Ok();
  for (int k = 0; k < 2; ++k) {
    if (!st.buf[k]) BN_CUDA_TRY(cudaHostAlloc(reinterpret_cast<void**>(&st.buf[k]), kStageChunk, cudaHostAllocDefault), op,
                                "cudaHostAlloc of the staging buffer");
    if (!st.done[k]) BN_CUDA_TRY(cudaEventCreateWithFlags(&st.done[k], cudaEventDisableTiming), op, "cudaEventCreate");
  }
  if (!st.small)
    BN_CUDA_TRY(cudaHostAlloc(reinterpret_cast<void**>(&st.small), kSmallBytes * kSmallSlots, cudaHostAllocDefault), op,
                "cudaHostAlloc of the small staging ring");
  for (int k = 0; k < kSmallSlots; ++k)
    if (!st.small_done[k])
      BN_CUDA_TRY(cudaEventCreateWithFlags(&st.small_done[k], cudaEventDisableTiming), op, "cudaEventCreate");
  st.ready = true;
  return Status::Ok();
}

}  // namespace

Status get_stream(cudaStream_t* s, const char* op) {
  BN_TRY(require_device(op));
  StreamState& st = stream_state();
  std::call_once(st.once, [&st] {
    // Non-blocking: no implicit synchronization with the legacy default stream.
    st.error = cudaStreamCreateWithFlags(&st.stream, cudaStreamNonBlocking);
  });
  if (st.error != cudaSuccess) return cuda_error(st.error, op, "cudaStreamCreate");
  *s = st.stream;
  return Status::Ok();
}

Status device_alloc(size_t bytes, void** p, const char* op) {
  *p = nullptr;
  if (bytes == 0) return Status::Ok();
  BN_TRY(require_device(op));
  const size_t cls = size_class(bytes);
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  auto it = a.free_blocks.find(cls);
  if (it != a.free_blocks.end()) {
    *p = it->second;
    a.free_blocks.erase(it);
    a.cached -= cls;
    a.hits += 1;
  } else {
    cudaError_t e = cudaMalloc(p, cls);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cached(a);
      e = cudaMalloc(p, cls);
    }
    if (e != cudaSuccess) {
      *p = nullptr;
      return cuda_error(e, op, ("cudaMalloc of " + std::to_string(cls) + " bytes").c_str());
    }
    a.mallocs += 1;
  }
  a.live[*p] = cls;
  a.allocated += cls;
  a.peak = std::max(a.peak, a.allocated);
  return Status::Ok();
}

void device_free(void* p) {
  if (!p) return;
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  auto it = a.live.find(p);
  if (it == a.live.end()) return;  // not ours: ignore rather than corrupt the cache
  a.free_blocks.emplace(it->second, p);
  a.allocated -= it->second;
  a.cached += it->second;
  a.live.erase(it);
}

MemoryStats memory_stats() {
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  MemoryStats m;
  m.allocated_bytes = static_cast<double>(a.allocated);
  m.cached_bytes = static_cast<double>(a.cached);
  m.peak_allocated_bytes = static_cast<double>(a.peak);
  m.malloc_calls = a.mallocs;
  m.cache_hits = a.hits;
  return m;
}

Status empty_cache() {
  if (!device_info().available) return Status::Ok();
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  const cudaError_t e = release_cached(a);
  if (e != cudaSuccess) return cuda_error(e, "emptyCache", "cudaFree");
  return Status::Ok();
}

Status copy_to_device(void* dst, const void* src, size_t bytes, const char* op) {
  if (bytes == 0) return Status::Ok();
  cudaStream_t s;
  BN_TRY(get_stream(&s, op));
  Staging& st = staging();
  std::lock_guard<std::mutex> lock(st.mu);
  BN_TRY(staging_init(st, op));
  if (bytes <= kSmallBytes) {
    const int k = st.next_small;
    st.next_small = (k + 1) % kSmallSlots;
    char* slot = st.small + static_cast<size_t>(k) * kSmallBytes;
    BN_CUDA_TRY(cudaEventSynchronize(st.small_done[k]), op, "cudaEventSynchronize (small staging)");
    std::memcpy(slot, src, bytes);
    BN_CUDA_TRY(cudaMemcpyAsync(dst, slot, bytes, cudaMemcpyHostToDevice, s), op, "cudaMemcpyAsync host->device");
    BN_CUDA_TRY(cudaEventRecord(st.small_done[k], s), op, "cudaEventRecord");
    return Status::Ok();
  }
  const char* from = static_cast<const char*>(src);
  char* to = static_cast<char*>(dst);
  int k = 0;
  for (size_t off = 0; off < bytes; off += kStageChunk, k ^= 1) {
    const size_t n = std::min(kStageChunk, bytes - off);
    // The chunk is free once the DMA that last read it has finished.
    BN_CUDA_TRY(cudaEventSynchronize(st.done[k]), op, "cudaEventSynchronize (staging)");
    std::memcpy(st.buf[k], from + off, n);
    BN_CUDA_TRY(cudaMemcpyAsync(to + off, st.buf[k], n, cudaMemcpyHostToDevice, s), op, "cudaMemcpyAsync host->device");
    BN_CUDA_TRY(cudaEventRecord(st.done[k], s), op, "cudaEventRecord");
  }
  return Status::Ok();
}

Status copy_to_host(void* dst, const void* src, size_t bytes, const char* op) {
  if (bytes == 0) return Status::Ok();
  cudaStream_t s;
  BN_TRY(get_stream(&s, op));
  Staging& st = staging();
  std::lock_guard<std::mutex> lock(st.mu);
  BN_TRY(staging_init(st, op));
  const char* from = static_cast<const char*>(src);
  char* to = static_cast<char*>(dst);
  const size_t chunks = (bytes + kStageChunk - 1) / kStageChunk;
  auto issue = [&](size_t c) -> Status {
    const size_t off = c * kStageChunk, n = std::min(kStageChunk, bytes - off);
    BN_CUDA_TRY(cudaMemcpyAsync(st.buf[c & 1], from + off, n, cudaMemcpyDeviceToHost, s), op,
                "cudaMemcpyAsync device->host");
    BN_CUDA_TRY(cudaEventRecord(st.done[c & 1], s), op, "cudaEventRecord");
    return Status::Ok();
  };
  // Chunk c+1 is in flight while the host copies chunk c out of the other half.
  BN_TRY(issue(0));
  for (size_t c = 0; c < chunks; ++c) {
    if (c + 1 < chunks) BN_TRY(issue(c + 1));
    BN_CUDA_TRY(cudaEventSynchronize(st.done[c & 1]), op, "waiting for device->host copy");
    const size_t off = c * kStageChunk, n = std::min(kStageChunk, bytes - off);
    std::memcpy(to + off, st.buf[c & 1], n);
  }
  return Status::Ok();
}

Status synchronize(const char* op) {
  if (!device_info().available) return Status::Ok();
  cudaStream_t s;
  BN_TRY(get_stream(&s, op));
  BN_CUDA_TRY(cudaStreamSynchronize(s), op, "cudaStreamSynchronize");
  return Status::Ok();
}

}  // namespace cuda
}  // namespace bn
