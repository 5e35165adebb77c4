// Backend-agnostic descriptions of the operations. lib/ has already validated and
// normalized everything (axes sorted and unique, output shapes computed); the binding
// re-checks the invariants these structs rely on before any kernel runs.
#pragma once
#include <cstdint>
#include <vector>

#include "status.h"

namespace bn {

namespace nccl {
struct Comm;  // an NCCL communicator (backend_api/nccl.h)
}

using Shape = std::vector<int64_t>;

inline int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

enum class Backend { kCpu = 0, kCuda = 1, kCudnn = 2 };

// Where a buffer lives: host memory (a Float32Array) or device memory (a DeviceTensor).
enum class Memory { kHost = 0, kDevice = 1 };

struct MomentsArgs {
  const float* x = nullptr;
  Shape shape;              // shape of x
  std::vector<bool> reduce; // reduce[d]: axis d is reduced (same rank as shape)
  double correction = 0;    // variance = M2 / (n - correction)
  float* mean = nullptr;    // prod(kept dims) elements, kept dims in order
  float* variance = nullptr;
  // Optional float64 sufficient statistics (mean and M2 = Σ(x − mean)²), for exact
  // merging of shards (Chan); null when not wanted. Same memory kind as mean.
  double* mean64 = nullptr;
  double* m2_64 = nullptr;
  Memory mem = Memory::kHost;  // location of x, mean and variance (always the same)
};

// One operand of batchNormalization: data plus its shape (numpy-broadcast against the
// output shape, aligned to the right). data == nullptr means "absent" (offset 0 / scale 1).
struct Operand {
  const float* data = nullptr;
  Shape shape;
  Memory mem = Memory::kHost;
};

struct BatchNormArgs {
  Operand x, mean, variance, offset, scale;
  double epsilon = 0;
  float* y = nullptr;
  Shape out_shape;  // broadcast of all operand shapes
  Memory mem = Memory::kHost;  // location of y (always that of x)
};

// Per-channel view of the training backward pass: x and dy as [A, C, B] (channel axis
// in the middle), mean = the per-channel μ used to normalize, in float64.
struct ChannelGradArgs {
  const float* dy = nullptr;
  const float* x = nullptr;
  int64_t A = 0, C = 0, B = 0;
  const double* mean = nullptr;
};

// The per-channel training ops. x (and dy) are viewed as [A, C, B] around the channel
// axis `axis` of `shape` (NHWC: [N·H·W, C, 1]; NCHW: [N, C, H·W]). Every pointer lives in
// `mem`; optional pointers are null when absent (scale = ones, offset = zeros).
struct ChannelLayout {
  Shape shape;
  int axis = 0;
  int64_t A = 0, C = 0, B = 0;
};

// Synchronized batch norm: x is one shard of a batch split across ranks along axis 0.
// The whole batch's per-channel statistics, float64, in the args' memory: count =
// elements per channel over every shard, mean and M2 = Σ(x − mean)².
struct WholeBatchStats {
  double count = 0;
  const double* mean = nullptr;
  const double* m2 = nullptr;
};

// The synchronized backward's per-channel sums, float64, in the args' memory: the whole
// batch's (what dx needs: Σdy, Σdy·(x − μ) and the count, summed over the ranks) and this
// shard's own (what dscale/doffset are, as in PyTorch's SyncBatchNorm).
struct WholeBatchGradSums {
  double count = 0;
  const double* sum_dy = nullptr;
  const double* sum_dy_xmu = nullptr;
  const double* shard_sum_dy = nullptr;
  const double* shard_sum_dy_xmu = nullptr;
};

// fusedBatchNorm, TF FusedBatchNormV3 semantics (see cuda/cuda_backend.h,
// FusedBatchNormArgs, for the exact bookkeeping; every backend implements the same).
// running_mean/running_var: read in inference and when factor != 1 (required then).
struct FusedArgs {
  ChannelLayout layout;
  const float* x = nullptr;
  const float* scale = nullptr;
  const float* offset = nullptr;
  const float* running_mean = nullptr;
  const float* running_var = nullptr;
  double epsilon = 1e-3;
  double factor = 1;  // exponentialAvgFactor
  bool training = true;
  float* y = nullptr;  // may be x (in place)
  float* batch_mean = nullptr;
  float* batch_var = nullptr;         // Bessel-corrected
  float* batch_var_biased = nullptr;  // what normalized y
  float* running_mean_out = nullptr;
  float* running_var_out = nullptr;
  float* saved_mean = nullptr;
  float* saved_inv_std = nullptr;
  Memory mem = Memory::kHost;
  // Training only; at most one of the two is set. whole_batch: the statistics were
  // exchanged by the caller (host data): skip the statistics pass, do the bookkeeping and
  // normalization with these. nccl: device data; the backend computes this shard's
  // (count, mean, M2), all-gathers them over the communicator on its own stream, merges
  // them in rank order (Chan et al.) on the device, then goes on as with whole_batch.
  const WholeBatchStats* whole_batch = nullptr;
  nccl::Comm* nccl = nullptr;
};

// batchNormalizationGrad from the forward's saved statistics. training: μ and invstd come
// from x's own batch (dx has the two reduction terms); false: frozen statistics,
// dx = scale·invstd·dy. dscale = Σdy·x̂, doffset = Σdy. epsilon: the forward's (cuDNN asks).
struct GradArgs {
  ChannelLayout layout;
  const float* dy = nullptr;
  const float* x = nullptr;
  const float* scale = nullptr;
  const float* saved_mean = nullptr;
  const float* saved_inv_std = nullptr;
  double epsilon = 1e-3;
  bool training = true;
  float* dx = nullptr;
  float* dscale = nullptr;
  float* doffset = nullptr;
  Memory mem = Memory::kHost;
  // Training only; at most one of the two is set. whole_batch: dx from the whole batch's
  // sums, dscale/doffset from the shard's, no reduction pass over the data. nccl: device
  // data; the backend reduces this shard's sums, all-reduces a copy over the communicator
  // on its own stream, then applies dx with the whole batch's.
  const WholeBatchGradSums* whole_batch = nullptr;
  nccl::Comm* nccl = nullptr;
};

// CPU kernels (native/cpu_*.cc). Multi-threaded, deterministic for any thread count.
Status cpu_moments(const MomentsArgs& a);
Status cpu_batch_norm(const BatchNormArgs& a);
// Σdy and Σdy·(x − μ) per channel (float64).
Status cpu_channel_grad_sums(const ChannelGradArgs& p, double* sum_dy, double* sum_dy_xmu);
// dx = g·(dy − a − (x − μ)·b) with per-channel g, a, b (float64).
Status cpu_channel_grad_apply(const ChannelGradArgs& p, const double* g, const double* a, const double* b,
                              float* dx);
// The training ops on the CPU (native/cpu_training.cc): statistics from cpu_moments'
// float64 sufficient statistics, normalization by cpu_batch_norm, backward by the two
// kernels above; the bookkeeping between them in float64, rounded as stated there.
Status cpu_fused_batch_norm(const FusedArgs& a);
Status cpu_batch_norm_grad(const GradArgs& a);

}  // namespace bn
