// The device side of synchronized batch norm's statistics: what one rank sends and how
// the ranks' statistics become the whole batch's. Shared by the training ops
// (cuda/training.cu) and the self-test, which checks the merge on its own.
//
// One rank's packed statistics are 2C + 1 float64: [count, mean[C], M2[C]] (the count is
// the same for every channel: elements per channel in the shard). An all-gather of the
// packed block gives every rank the same R·(2C + 1) doubles in rank order, and
// merge_ranks_kernel folds them per channel in that order with Chan et al.'s update
// (stats::merge, the arithmetic of every other merge on the device): the same inputs in
// the same order give the same bits on every rank, run after run, whatever NCCL's
// algorithm. An empty shard (count 0) leaves the merge unchanged, whatever its mean/M2.
//
// The backward's packed sums are [count, Σdy[C], Σdy·(x − μ)[C]], all-reduced (summed).
#pragma once
#include <cuda_runtime.h>

#include "stats.cuh"

namespace bn {
namespace cuda {
namespace syncbn {

constexpr int kThreads = 256;

__host__ __device__ inline long long packed_size(long long C) { return 2 * C + 1; }

// Writes a shard's per-channel statistics into the packed block (a stats.cuh sink).
struct PackedStatsSink {
  double* packed;  // [count, mean[C], M2[C]]
  long long C;
  __device__ __forceinline__ void operator()(long long c, const stats::Stats& s) const {
    if (c == 0) packed[0] = s.n;
    packed[1 + c] = s.mean;
    packed[1 + C + c] = s.m2;
  }
};

// Per channel: fold the R ranks' packed statistics in rank order, hand the result to the
// sink (n = the whole batch's count; 0 when every shard is empty).
template <class Sink>
__global__ void __launch_bounds__(kThreads) merge_ranks_kernel(const double* __restrict__ gathered, int ranks,
                                                               long long C, Sink sink) {
  const long long P = packed_size(C);
  for (long long c = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; c < C;
       c += static_cast<long long>(gridDim.x) * kThreads) {
    stats::Stats t{0, 0, 0};
    for (int r = 0; r < ranks; ++r) {
      const double* g = gathered + r * P;
      stats::merge(t, stats::Stats{g[0], g[1 + c], g[1 + C + c]});
    }
    sink(c, t);
  }
}

// Per channel: the given whole-batch statistics, as the statistics kernels would hand
// them to the sink (so the bookkeeping after them is the same code).
template <class Sink>
__global__ void __launch_bounds__(kThreads) given_stats_kernel(long long C, double count,
                                                               const double* __restrict__ mean,
                                                               const double* __restrict__ m2, Sink sink) {
  for (long long c = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; c < C;
       c += static_cast<long long>(gridDim.x) * kThreads)
    sink(c, stats::Stats{count, mean[c], m2[c]});
}

}  // namespace syncbn
}  // namespace cuda
}  // namespace bn
