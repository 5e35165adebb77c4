// The CUDA side as seen from native/: plain C++ declarations, no CUDA headers, so the
// binding compiles the same with or without nvcc. Implemented by cuda/*.cu when the
// build found nvcc, and by native/cuda_stub.cc otherwise.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ops.h"
#include "status.h"

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
// in dst; copy_to_device may return before the DMA has finished (stream-ordered), and
// an upload of at most 64 KiB goes through a ring of small pinned slots, so it waits
// only for the upload that used its slot 16 uploads earlier, not for queued kernels.
Status copy_to_device(void* dst, const void* src, size_t bytes, const char* op);
Status copy_to_host(void* dst, const void* src, size_t bytes, const char* op);
// Waits for all queued GPU work; reports errors of kernels that already ran.
Status synchronize(const char* op);

// ---- ops (cuda/moments.cu, cuda/batchnorm.cu) --------------------------------------
// Inputs/outputs may be host or device memory as the args' `mem` fields say; host data
// is copied in and results copied out. Device-only calls only enqueue work. moments also
// fills MomentsArgs::mean64/m2_64 when given (same memory kind as mean).
Status moments(const MomentsArgs& a);
Status batch_norm(const BatchNormArgs& a);

// ---- training (cuda/training.cu) ----------------------------------------------------
// Every pointer below is device memory; the calls only enqueue work (no host copies, no
// synchronization). `stream` is a cudaStream_t; nullptr means the backend's own stream
// (the one every other op uses). Work asked for on another stream is ordered after that
// stream's earlier work and before its later work (joined by events).
using Stream = struct CUstream_st*;

// x viewed as [A, C, B] with the channel axis in the middle: A = product of the dims
// before the channel axis, C = channels, B = product of the dims after it (NHWC:
// [N·H·W, C, 1]; NCHW: [N, C, H·W]; any rank >= 2 and any channel axis fold this way).
struct ChannelView {
  int64_t A = 0, C = 0, B = 0;
};

// How the training forward reads x: kTwoPass = statistics pass + normalize pass (x read
// twice); kPersistent = one cooperative kernel (statistics, grid sync, bookkeeping, grid
// sync, normalize; the second read of x hits L2 when x fits there): channels last
// (B == 1) only, else the call fails with kUnsupported. kAuto = kPersistent when it
// applies and x fits in L2, else kTwoPass.
enum class ForwardPlan { kAuto = 0, kTwoPass = 1, kPersistent = 2 };

// fusedBatchNorm (TF FusedBatchNormV3 semantics), training or inference, with the
// bookkeeping on the device:
//   training: batch mean and biased variance M2/n (float64 statistics rounded to float32)
//     normalize y; batch_var = M2/max(n − 1, 1) (Bessel-corrected, TF's batch_variance);
//     running = factor == 1 ? batch : (1 − factor)·running + factor·batch, the variance
//     from the Bessel-corrected one; saved_mean = batch mean, saved_inv_std =
//     1/sqrt(biased variance + ε).
//   inference: running_mean/running_var normalize y and are copied to every statistic
//     output; saved_inv_std = 1/sqrt(running_var + ε).
// scale/offset may be null (ones / zeros). running_mean/running_var are read in inference
// and when factor != 1 (required then), and may be the same buffers as
// running_mean_out/running_var_out (in-place update). Every statistic output may be null
// (not wanted); y may be x (in place). mean64/m2_64 (optional): the float64 batch mean and
// M2 = Σ(x − mean)², the sufficient statistics.
//
// Synchronized batch norm (training only; ignored in inference, which exchanges
// nothing; at most one of the two): x is one shard of the batch, and the statistics
// above are the whole batch's instead of x's own, with n = the whole batch's count.
//   whole_batch: given (count on the host, mean and M2: C device doubles each): no
//     statistics pass over x; the bookkeeping and normalize as above.
//   nccl: this shard's (count, mean, M2) go into device scratch [count, mean[C], M2[C]],
//     are all-gathered over the communicator (2C + 1 float64 per rank), and merged in
//     rank order with Chan et al.'s update (the same bits on every rank); then as
//     whole_batch. Every step, the collective included, is enqueued on the stream.
// Neither runs the persistent plan (kPersistent is then kUnsupported).
struct FusedBatchNormArgs {
  ChannelView view;
  const float* x = nullptr;
  const float* scale = nullptr;
  const float* offset = nullptr;
  const float* running_mean = nullptr;
  const float* running_var = nullptr;
  double epsilon = 1e-3;
  double factor = 1;  // exponentialAvgFactor
  bool training = true;
  ForwardPlan plan = ForwardPlan::kAuto;
  float* y = nullptr;
  float* batch_mean = nullptr;
  float* batch_var = nullptr;         // Bessel-corrected
  float* batch_var_biased = nullptr;  // what normalized y
  float* running_mean_out = nullptr;
  float* running_var_out = nullptr;
  float* saved_mean = nullptr;
  float* saved_inv_std = nullptr;
  double* mean64 = nullptr;
  double* m2_64 = nullptr;
  const WholeBatchStats* whole_batch = nullptr;
  nccl::Comm* nccl = nullptr;
};
// *plan_used (optional) gets the plan that ran.
Status fused_batch_norm(const FusedBatchNormArgs& a, Stream stream = nullptr, ForwardPlan* plan_used = nullptr);

// Gradients of y = (x − μ)·invstd·scale + offset per channel, from the forward's saved
// statistics (saved_mean, saved_inv_std: C floats each):
//   training (μ, invstd from x's own batch, n = A·B):
//     dx = scale·invstd·(dy − Σdy/n − (x − μ)·invstd²·Σdy(x − μ)/n);
//   frozen statistics (training = false): dx = scale·invstd·dy;
//   both: dscale = invstd·Σdy(x − μ) = Σdy·x̂, doffset = Σdy.
// Σdy and Σdy·(x − μ) are accumulated in float64 in a fixed order (deterministic). scale
// may be null (ones); dx, dscale, doffset, sum_dy, sum_dy_xmu may each be null (not
// wanted); dx may be dy (in place).
//
// Synchronized batch norm (training only; ignored for frozen statistics; at most one):
// dx uses the whole batch's Σdy, Σdy·(x − μ) and count N; dscale, doffset, sum_dy and
// sum_dy_xmu stay this shard's (as PyTorch's SyncBatchNorm).
//   whole_batch: all four sums given (C device doubles each): no reduction pass.
//   nccl: this shard's sums go into device scratch [count, Σdy[C], Σdy·(x − μ)[C]],
//     are all-reduced (sum, 2C + 1 float64) over the communicator into a second
//     buffer, and dx is applied with the result. Enqueued on the stream, as the rest.
struct BatchNormGradArgs {
  ChannelView view;
  const float* dy = nullptr;
  const float* x = nullptr;
  const float* scale = nullptr;
  const float* saved_mean = nullptr;
  const float* saved_inv_std = nullptr;
  bool training = true;
  float* dx = nullptr;
  float* dscale = nullptr;
  float* doffset = nullptr;
  double* sum_dy = nullptr;      // float64 Σdy per channel
  double* sum_dy_xmu = nullptr;  // float64 Σdy·(x − μ) per channel
  const WholeBatchGradSums* whole_batch = nullptr;
  nccl::Comm* nccl = nullptr;
};
Status batch_norm_grad(const BatchNormGradArgs& a, Stream stream = nullptr);

// The CPU backend's two backward building blocks (cpu_channel_grad_sums / _apply in
// native/ops.h) on device pointers: p.dy, p.x, p.mean (C doubles), the outputs and
// g, a, b (C doubles each) all device memory.
Status channel_grad_sums(const ChannelGradArgs& p, double* sum_dy, double* sum_dy_xmu, Stream stream = nullptr);
Status channel_grad_apply(const ChannelGradArgs& p, const double* g, const double* a, const double* b, float* dx,
                          Stream stream = nullptr);

// The training ops as the dispatcher calls them (cuda/training_ops.cu): device data only
// enqueues; host data is staged in and out (the call returns when the results are there),
// the whole_batch vectors included. nccl needs device data (kUnsupported otherwise).
// The cudnn_ variants run cuDNN's training forward / backward (batch statistics only:
// whole_batch or nccl is kUnsupported).
Status fused_batch_norm_op(const FusedArgs& a);
Status batch_norm_grad_op(const GradArgs& a);
Status cudnn_fused_batch_norm_op(const FusedArgs& a);
Status cudnn_batch_norm_grad_op(const GradArgs& a);

// ---- timing (cuda/timing.cu) ------------------------------------------------------
// Runs the op `warmup` times, then `reps` times each between two CUDA events; *ms gets
// the per-run milliseconds. Device-resident args only.
Status time_moments(const MomentsArgs& a, int warmup, int reps, std::vector<double>* ms);
Status time_batch_norm(const BatchNormArgs& a, int warmup, int reps, std::vector<double>* ms);
Status time_fused_batch_norm(const FusedBatchNormArgs& a, int warmup, int reps, std::vector<double>* ms);
Status time_batch_norm_grad(const BatchNormGradArgs& a, int warmup, int reps, std::vector<double>* ms);
// Device-to-device cudaMemcpy of `bytes` and a read-only kernel over `bytes`: the floors.
Status time_copy(size_t bytes, int warmup, int reps, std::vector<double>* ms);
Status time_read(size_t bytes, int warmup, int reps, std::vector<double>* ms);

}  // namespace cuda
}  // namespace bn
