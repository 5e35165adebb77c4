// The CUDA side as seen from native/: plain C++ declarations, no CUDA headers, so the
// binding compiles the same with or without nvcc. Implemented by cuda/*.cu when the
// build found nvcc, and by native/cuda_stub.cc otherwise.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "../native/ops.h"
#include "../native/status.h"

namespace bn {
namespace cuda {

struct DeviceInfo {
  bool available = false;
  std::string reason;  // why not, when !available
  std::string name;    // device 0
  int cc_major = 0, cc_minor = 0;
  double total_memory_bytes = 0;
  int driver_version = 0;   // e.g. 13000, 0 when no driver
  int runtime_version = 0;  // the statically linked cudart's version
  int device_count = 0;
  int multiprocessors = 0;
};

// True when this binary contains CUDA code.
bool compiled();
// Lazily probes the driver and device 0 once per process (thread-safe) and caches it.
const DeviceInfo& device_info();

// ---- device memory (cuda/memory.cu) ----------------------------------------------
// A caching allocator over cudaMalloc: freed blocks go back to a per-size-class free
// list and are reused by later allocations of the same class. All work runs on one
// stream, so a block freed on the host can be reused at once (stream order protects
// the kernels that still read it). Thread-safe.
Status device_alloc(size_t bytes, void** p, const char* op);  // bytes == 0 gives nullptr
void device_free(void* p);                                     // nullptr is fine; never fails

struct MemoryStats {
  double allocated_bytes = 0;  // in live blocks (size-class rounded)
  double cached_bytes = 0;     // in freed blocks kept for reuse
  double peak_allocated_bytes = 0;
  double malloc_calls = 0;     // cudaMalloc calls so far
  double cache_hits = 0;       // allocations served from the cache
};
MemoryStats memory_stats();
Status empty_cache();  // cudaFree every cached block

// Copies through a reused pinned staging buffer in chunks, so the host-side memcpy of
// one chunk overlaps the DMA of the previous one. copy_to_host returns when the data is
// in dst; copy_to_device may return before the DMA has finished (stream-ordered).
Status copy_to_device(void* dst, const void* src, size_t bytes, const char* op);
Status copy_to_host(void* dst, const void* src, size_t bytes, const char* op);
// Waits for all queued GPU work; reports errors of kernels that already ran.
Status synchronize(const char* op);

// ---- ops (cuda/moments.cu, cuda/batchnorm.cu) --------------------------------------
// Inputs/outputs may be host or device memory as the args' `mem` fields say; host data
// is copied in and results copied out. Device-only calls only enqueue work.
Status moments(const MomentsArgs& a);
Status batch_norm(const BatchNormArgs& a);

// ---- timing (cuda/timing.cu) ------------------------------------------------------
// Runs the op `warmup` times, then `reps` times each between two CUDA events; *ms gets
// the per-run milliseconds. Device-resident args only.
Status time_moments(const MomentsArgs& a, int warmup, int reps, std::vector<double>* ms);
Status time_batch_norm(const BatchNormArgs& a, int warmup, int reps, std::vector<double>* ms);
// Device-to-device cudaMemcpy of `bytes` and a read-only kernel over `bytes`: the floors.
Status time_copy(size_t bytes, int warmup, int reps, std::vector<double>* ms);
Status time_read(size_t bytes, int warmup, int reps, std::vector<double>* ms);

}  // namespace cuda
}  // namespace bn
