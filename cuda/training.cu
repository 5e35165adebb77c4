// CUDA training kernels: the fused forward (statistics, FusedBatchNormV3 bookkeeping,
// normalize) and the backward pass (Σdy and Σdy·(x − μ) per channel, then dx), all on
// the device: no host round trip between the passes.
//
// x is viewed as [A, C, B] (channel axis in the middle; NHWC = [N·H·W, C, 1], NCHW =
// [N, C, H·W], any channel axis of any rank folds the same way).
//
// Forward, two-pass plan: the statistics plans of stats.cuh with TrainSink, which turns
// each channel's merged (n, mean, M2) into the FusedBatchNormV3 outputs and a per-channel
// (mean, scale/sqrt(var + ε), offset) table in the same kernel; then the normalize pass of
// channel_apply.cuh reads x again. Persistent plan (channels last, x small enough to stay
// in L2): one cooperative kernel does statistics, grid sync, per-channel merge and
// bookkeeping, grid sync, normalize, so the second read of x comes from L2 and there is
// one launch instead of three.
//
// The bookkeeping is the CPU path's (lib's statsFrom/finishFused over cpu moments) with
// the same roundings: mean and biased variance are rounded to float32 first, and the
// table is built from those float32 values exactly as batchNormalization builds it, so y
// matches the CPU backend's given equal statistics.
//
// Backward: grad_column_kernel (B == 1) / grad_segment_kernel (B > 1) accumulate
// Σdy and Σdy·(x − μ) per thread in float64, combine them in a fixed tree inside the
// block, and across blocks with one warp per channel in fixed order: deterministic, no
// atomics. GradSink turns the sums into dscale = invstd·Σdy·(x − μ), doffset = Σdy and the
// coefficients of dx = g·(dy − a − (x − μ)·b); the dx pass is channel_apply.cuh's GradOp.
//
// Synchronized batch norm replaces only where the statistics come from; TrainSink and
// GradSink::finish stay the one place the bookkeeping is written. Forward: given
// whole-batch statistics reach TrainSink through given_stats_kernel (no pass over x);
// with NCCL, the shard's statistics are packed, all-gathered and folded in rank order by
// merge_ranks_kernel into TrainSink (sync_stats.cuh). Backward: given sums reach
// GradSink::finish through grad_given_sums_kernel (no reduction pass); with NCCL the
// shard's sums are packed, all-reduced into a second buffer, and the same kernel reads
// both (dscale/doffset from the shard's, dx from the whole batch's). The collectives are
// enqueued between the kernels on the same stream: nothing waits on the host.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "../native/backend_api/nccl.h"
#include "channel_apply.cuh"
#include "common.cuh"
#include "stats.cuh"
#include "sync_stats.cuh"

namespace bn {
namespace cuda {

namespace {

namespace cg = cooperative_groups;
using stats::Stats;
constexpr int kThreads = 256;

// ---- forward bookkeeping ------------------------------------------------------------
struct TrainSink {
  const float* scale;   // null = ones
  const float* offset;  // null = zeros
  const float* running_mean;
  const float* running_var;
  double eps, factor;
  float* batch_mean;
  float* batch_var;
  float* batch_var_biased;
  float* running_mean_out;
  float* running_var_out;
  float* saved_mean;
  float* saved_inv_std;
  double* mean64;
  double* m2_64;
  double* tm;
  double* tinv;
  double* to;

  // Running inputs are read before the running outputs are written by the same thread,
  // so they may be the same buffers (in-place update).
  __device__ __forceinline__ void operator()(long long c, const Stats& s) const {
    const double nan_ = nan("");
    const double n = s.n;
    const double mean = n > 0 ? s.mean : nan_;
    const double m2 = n > 0 ? s.m2 : nan_;
    const float mean_f = static_cast<float>(mean);
    const float var_b = static_cast<float>(m2 / n);
    const float var_u = static_cast<float>(m2 / (n - 1 > 1 ? n - 1 : 1.0));  // Bessel, n − 1 ≥ 1
    float rm = mean_f, rv = var_u;
    if (factor != 1) {
      rm = static_cast<float>((1 - factor) * static_cast<double>(running_mean[c]) +
                              factor * static_cast<double>(mean_f));
      rv = static_cast<float>((1 - factor) * static_cast<double>(running_var[c]) +
                              factor * static_cast<double>(var_u));
    }
    const double root = sqrt(static_cast<double>(var_b) + eps);
    if (mean64) {
      mean64[c] = mean;
      m2_64[c] = m2;
    }
    if (batch_mean) batch_mean[c] = mean_f;
    if (batch_var) batch_var[c] = var_u;
    if (batch_var_biased) batch_var_biased[c] = var_b;
    if (running_mean_out) running_mean_out[c] = rm;
    if (running_var_out) running_var_out[c] = rv;
    if (saved_mean) saved_mean[c] = mean_f;
    if (saved_inv_std) saved_inv_std[c] = static_cast<float>(1.0 / root);
    tm[c] = static_cast<double>(mean_f);
    tinv[c] = (scale ? static_cast<double>(scale[c]) : 1.0) / root;
    to[c] = offset ? static_cast<double>(offset[c]) : 0.0;
  }
};

// Inference: the running statistics are the statistics; the outputs are theirs.
__global__ void __launch_bounds__(kThreads) inference_prepare_kernel(long long C, TrainSink k) {
  for (long long c = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; c < C;
       c += static_cast<long long>(gridDim.x) * kThreads) {
    const float m = k.running_mean[c], v = k.running_var[c];
    const double root = sqrt(static_cast<double>(v) + k.eps);
    if (k.batch_mean) k.batch_mean[c] = m;
    if (k.batch_var) k.batch_var[c] = v;
    if (k.batch_var_biased) k.batch_var_biased[c] = v;
    if (k.running_mean_out) k.running_mean_out[c] = m;
    if (k.running_var_out) k.running_var_out[c] = v;
    if (k.saved_mean) k.saved_mean[c] = m;
    if (k.saved_inv_std) k.saved_inv_std[c] = static_cast<float>(1.0 / root);
    k.tm[c] = static_cast<double>(m);
    k.tinv[c] = (k.scale ? static_cast<double>(k.scale[c]) : 1.0) / root;
    k.to[c] = k.offset ? static_cast<double>(k.offset[c]) : 0.0;
  }
}

// ---- persistent forward (channels last, cooperative launch) -------------------------
// Grid (gx, S): block (bx, s) owns columns [bx·TX·VEC, ...) and rows [s·rps, (s+1)·rps).
// Phase 1 is column_stats_kernel's, always into partials; after a grid sync, warp w of
// the grid merges channel w's S partials and runs the sink (which writes the table);
// after another grid sync every thread normalizes exactly the elements it read.
struct PersistentParams {
  const float* x;
  float* y;
  long long R, C, S, rows_per_split, gx;
  int TX, TY;
  Stats* partial;  // [C * S]
};

template <int VEC>
__global__ void __launch_bounds__(kThreads) persistent_forward_kernel(PersistentParams p, TrainSink sink) {
  __shared__ Stats sh[kThreads * VEC];
  cg::grid_group grid = cg::this_grid();
  const int tx = threadIdx.x % p.TX, ty = threadIdx.x / p.TX;
  const long long c = (static_cast<long long>(blockIdx.x) * p.TX + tx) * VEC;
  const long long s = blockIdx.y;
  const long long r0 = s * p.rows_per_split;
  const long long r1 = min(p.R, r0 + p.rows_per_split);
  const bool col_ok = c < p.C;
  stats::Acc acc[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) stats::acc_init(acc[v]);
  if (col_ok) stats::column_accumulate<VEC>(acc, p.x + c, p.C, r0 + ty, r1, p.TY);
#pragma unroll
  for (int v = 0; v < VEC; ++v) sh[(ty * p.TX + tx) * VEC + v] = stats::acc_finish(acc[v]);
  __syncthreads();
  for (int h = p.TY / 2; h > 0; h >>= 1) {
    if (ty < h) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        Stats a = sh[(ty * p.TX + tx) * VEC + v];
        stats::merge(a, sh[((ty + h) * p.TX + tx) * VEC + v]);
        sh[(ty * p.TX + tx) * VEC + v] = a;
      }
    }
    __syncthreads();
  }
  if (ty == 0 && col_ok) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) p.partial[(c + v) * p.S + s] = sh[tx * VEC + v];
  }
  grid.sync();
  {
    const int lane = threadIdx.x & 31;
    const long long warps = static_cast<long long>(gridDim.x) * gridDim.y * (kThreads / 32);
    const long long block = static_cast<long long>(blockIdx.y) * gridDim.x + blockIdx.x;
    for (long long o = block * (kThreads / 32) + (threadIdx.x >> 5); o < p.C; o += warps) {
      Stats t{0, 0, 0};
      for (long long q = lane; q < p.S; q += 32) stats::merge(t, p.partial[o * p.S + q]);
      t = stats::warp_merge(t);
      if (lane == 0) sink(o, t);
    }
  }
  grid.sync();
  if (!col_ok) return;
  chan::NormalizeOp op{{p.x}, p.y, sink.tm, sink.tinv, sink.to};
  chan::NormalizeOp::Coef k[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) k[e] = op.coef(c + e);
  long long r = r0 + ty;
  for (; r + (chan::kUnroll - 1) * p.TY < r1; r += chan::kUnroll * p.TY) {
    long long off[chan::kUnroll];
#pragma unroll
    for (int u = 0; u < chan::kUnroll; ++u) off[u] = (r + u * p.TY) * p.C + c;
    chan::apply_groups<chan::NormalizeOp, VEC, chan::kUnroll>(op, off, k);
  }
  for (; r < r1; r += p.TY) {
    const long long off = r * p.C + c;
    chan::apply_groups<chan::NormalizeOp, VEC, 1>(op, &off, k);
  }
}

struct DeviceLimits {
  bool cooperative = false;
  long long l2_bytes = 0;
  int blocks_per_sm[2] = {0, 0};  // persistent_forward_kernel<1>, <4>
};

const DeviceLimits& device_limits() {
  static DeviceLimits lim;
  static std::once_flag once;
  std::call_once(once, [] {
    int dev = 0, coop = 0, l2 = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return;
    if (cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) == cudaSuccess) lim.cooperative = coop != 0;
    if (cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev) == cudaSuccess) lim.l2_bytes = l2;
    int b = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, persistent_forward_kernel<1>, kThreads, 0) == cudaSuccess)
      lim.blocks_per_sm[0] = b;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, persistent_forward_kernel<4>, kThreads, 0) == cudaSuccess)
      lim.blocks_per_sm[1] = b;
    cudaGetLastError();
  });
  return lim;
}

// The persistent plan's grid for [R, C], or false when it does not apply: the
// cooperative grid must be co-resident, with room for at least two row splits.
bool persistent_config(long long R, long long C, bool vec, PersistentParams* p) {
  const DeviceLimits& lim = device_limits();
  if (!lim.cooperative) return false;
  const int per_sm = lim.blocks_per_sm[vec ? 1 : 0];
  const long long sms = device_info().multiprocessors;
  if (per_sm <= 0 || sms <= 0) return false;
  const long long resident = per_sm * sms;
  const long long lanes = vec ? C / 4 : C;
  int TX = 1;
  while (TX < 32 && TX < lanes) TX *= 2;
  const long long gx = (lanes + TX - 1) / TX;
  if (gx * 2 > resident) return false;
  p->R = R;
  p->C = C;
  p->gx = gx;
  p->TX = TX;
  p->TY = kThreads / TX;
  long long S = std::min<long long>(resident / gx, (R + p->TY - 1) / p->TY);
  S = std::max<long long>(1, std::min<long long>(S, 65535));
  p->rows_per_split = (R + S - 1) / S;
  p->S = (R + p->rows_per_split - 1) / p->rows_per_split;
  return true;
}

// ---- backward reductions --------------------------------------------------------------
struct GradSums {
  double s1, s2;  // Σdy, Σdy·(x − μ)
};

__device__ __forceinline__ GradSums warp_sum(GradSums g) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    g.s1 += __shfl_down_sync(0xffffffffu, g.s1, off);
    g.s2 += __shfl_down_sync(0xffffffffu, g.s2, off);
  }
  return g;
}

// Per-channel μ in float64: the saved float32 mean, or a float64 mean.
struct MeanSource {
  const float* f;
  const double* d;
  __device__ __forceinline__ double operator()(long long c) const {
    return d ? d[c] : static_cast<double>(f[c]);
  }
};

// x, dy as [A, C] (B == 1): block TX x TY, thread owns VEC channels over its split's rows.
struct GradColumnParams {
  const float* dy;
  const float* x;
  MeanSource mu;
  long long R, C, S, rows_per_split;
  int TX, TY;
  GradSums* partial;
};

template <int VEC, class Sink>
__global__ void __launch_bounds__(kThreads) grad_column_kernel(GradColumnParams p, Sink sink) {
  __shared__ GradSums sh[kThreads * VEC];
  const int tx = threadIdx.x % p.TX, ty = threadIdx.x / p.TX;
  const long long c = (static_cast<long long>(blockIdx.x) * p.TX + tx) * VEC;
  const long long s = blockIdx.y;
  const long long r0 = s * p.rows_per_split;
  const long long r1 = min(p.R, r0 + p.rows_per_split);
  const bool col_ok = c < p.C;
  GradSums acc[VEC];
  double mu[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    acc[v] = GradSums{0, 0};
    mu[v] = col_ok ? p.mu(c + v) : 0.0;
  }
  if (col_ok) {
    constexpr int U = chan::kUnroll;
    long long r = r0 + ty;
    for (; r + (U - 1) * p.TY < r1; r += U * p.TY) {
      float d[U][VEC], xv[U][VEC];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const long long off = (r + u * p.TY) * p.C + c;
        chan::load_vec<VEC>(p.dy + off, d[u]);
        chan::load_vec<VEC>(p.x + off, xv[u]);
      }
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          const double g = static_cast<double>(d[u][v]);
          acc[v].s1 += g;
          acc[v].s2 += g * (static_cast<double>(xv[u][v]) - mu[v]);
        }
    }
    for (; r < r1; r += p.TY) {
      float d[VEC], xv[VEC];
      const long long off = r * p.C + c;
      chan::load_vec<VEC>(p.dy + off, d);
      chan::load_vec<VEC>(p.x + off, xv);
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const double g = static_cast<double>(d[v]);
        acc[v].s1 += g;
        acc[v].s2 += g * (static_cast<double>(xv[v]) - mu[v]);
      }
    }
  }
#pragma unroll
  for (int v = 0; v < VEC; ++v) sh[(ty * p.TX + tx) * VEC + v] = acc[v];
  __syncthreads();
  for (int h = p.TY / 2; h > 0; h >>= 1) {
    if (ty < h) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        GradSums a = sh[(ty * p.TX + tx) * VEC + v];
        const GradSums b = sh[((ty + h) * p.TX + tx) * VEC + v];
        a.s1 += b.s1;
        a.s2 += b.s2;
        sh[(ty * p.TX + tx) * VEC + v] = a;
      }
    }
    __syncthreads();
  }
  if (ty == 0 && col_ok) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) stats::emit(sink, p.partial, p.S, c + v, s, sh[tx * VEC + v]);
  }
}

// x, dy as [A, C, B] with B > 1: work item (c, split) covers m = a·B + b in
// [split·chunk, ...); with VEC = 4, B % 4 == 0 and the pointers are 16-byte aligned.
struct GradSegmentParams {
  const float* dy;
  const float* x;
  MeanSource mu;
  long long A, C, B, S, chunk;  // chunk % 4 == 0
  long long astep, bstep;       // kThreads·VEC = astep·B + bstep
  GradSums* partial;
};

template <int VEC, class Sink>
__global__ void __launch_bounds__(kThreads) grad_segment_kernel(GradSegmentParams p, Sink sink) {
  __shared__ double sh1[kThreads / 32], sh2[kThreads / 32];
  const long long M = p.A * p.B;
  const long long items = p.C * p.S;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (long long it = blockIdx.x; it < items; it += gridDim.x) {
    const long long c = it / p.S, s = it - c * p.S;
    const double mu = p.mu(c);
    const long long m0 = s * p.chunk;
    const long long m1 = min(M, m0 + p.chunk);
    GradSums acc{0, 0};
    long long m = m0 + static_cast<long long>(threadIdx.x) * VEC;
    long long a = m / p.B, b = m - a * p.B;
    for (; m < m1; m += static_cast<long long>(kThreads) * VEC) {
      const long long off = (a * p.C + c) * p.B + b;
      float d[VEC], xv[VEC];
      chan::load_vec<VEC>(p.dy + off, d);
      chan::load_vec<VEC>(p.x + off, xv);
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const double g = static_cast<double>(d[v]);
        acc.s1 += g;
        acc.s2 += g * (static_cast<double>(xv[v]) - mu);
      }
      b += p.bstep;
      a += p.astep;
      if (b >= p.B) {
        b -= p.B;
        a += 1;
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) {
      sh1[warp] = acc.s1;
      sh2[warp] = acc.s2;
    }
    __syncthreads();
    if (warp == 0) {
      GradSums t{0, 0};
      if (lane < kThreads / 32) t = GradSums{sh1[lane], sh2[lane]};
      t = warp_sum(t);
      if (lane == 0) stats::emit(sink, p.partial, p.S, c, s, t);
    }
    __syncthreads();
  }
}

// One warp per channel sums its S partials (lane-strided, then a fixed shuffle tree).
template <class Sink>
__global__ void __launch_bounds__(kThreads) grad_merge_kernel(const GradSums* __restrict__ partial, long long C,
                                                              long long S, Sink sink) {
  const int lane = threadIdx.x & 31;
  const long long warps = static_cast<long long>(gridDim.x) * (kThreads / 32);
  for (long long c = static_cast<long long>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5); c < C; c += warps) {
    GradSums t{0, 0};
    for (long long q = lane; q < S; q += 32) {
      t.s1 += partial[c * S + q].s1;
      t.s2 += partial[c * S + q].s2;
    }
    t = warp_sum(t);
    if (lane == 0) sink(c, t);
  }
}

// The sums as they are (channel_grad_sums).
struct SumsSink {
  double* s1;
  double* s2;
  __device__ __forceinline__ void operator()(long long c, const GradSums& g) const {
    s1[c] = g.s1;
    s2[c] = g.s2;
  }
};

// lib's gradCoefficients: g = scale·invstd; training: a = Σdy/N, b = invstd²·Σdy(x−μ)/N;
// frozen statistics: a = b = 0. dscale = invstd·Σdy(x−μ), doffset = Σdy. finish() is the
// one place these are computed: the local backward hands it its own sums twice (from the
// reduction kernels' epilogue), the synchronized one the shard's and the whole batch's.
struct GradSink {
  const float* scale;  // null = ones
  const float* saved_mean;
  const float* saved_inv_std;
  double N;
  bool training;
  float* dscale;
  float* doffset;
  double* sum_dy;
  double* sum_dy_xmu;
  double* tmu;
  double* tg;
  double* ta;
  double* tb;
  // shard: what dscale, doffset and the float64 sum outputs are; whole (count n): what
  // the coefficients of dx are.
  __device__ __forceinline__ void finish(long long c, const GradSums& shard, const GradSums& whole, double n) const {
    const double inv = static_cast<double>(saved_inv_std[c]);
    const double g = (scale ? static_cast<double>(scale[c]) : 1.0) * inv;
    double a = 0, b = 0;
    if (training && n > 0) {
      a = whole.s1 / n;
      b = inv * inv * whole.s2 / n;
    }
    if (dscale) dscale[c] = static_cast<float>(inv * shard.s2);
    if (doffset) doffset[c] = static_cast<float>(shard.s1);
    if (sum_dy) sum_dy[c] = shard.s1;
    if (sum_dy_xmu) sum_dy_xmu[c] = shard.s2;
    tmu[c] = static_cast<double>(saved_mean[c]);
    tg[c] = g;
    ta[c] = a;
    tb[c] = b;
  }
  __device__ __forceinline__ void operator()(long long c, const GradSums& s) const { finish(c, s, s, N); }
};

// The synchronized backward's finish, per channel, from sums already in device memory:
// no pass over the data. The whole batch's count is `count`, or *count_dev when given
// (the all-reduced one, which only the device knows without a synchronization).
__global__ void __launch_bounds__(kThreads) grad_given_sums_kernel(long long C, GradSink sink,
                                                                   const double* __restrict__ shard_s1,
                                                                   const double* __restrict__ shard_s2,
                                                                   const double* __restrict__ whole_s1,
                                                                   const double* __restrict__ whole_s2,
                                                                   const double* __restrict__ count_dev,
                                                                   double count) {
  const double n = count_dev ? *count_dev : count;
  for (long long c = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; c < C;
       c += static_cast<long long>(gridDim.x) * kThreads)
    sink.finish(c, GradSums{shard_s1[c], shard_s2[c]}, GradSums{whole_s1[c], whole_s2[c]}, n);
}

// The synchronized backward's packed block [count, Σdy[C], Σdy·(x − μ)[C]] of this shard.
struct PackedSumsSink {
  double* packed;
  long long C;
  double count;
  __device__ __forceinline__ void operator()(long long c, const GradSums& g) const {
    if (c == 0) packed[0] = count;
    packed[1 + c] = g.s1;
    packed[1 + C + c] = g.s2;
  }
};

template <class Sink>
__global__ void __launch_bounds__(kThreads) grad_empty_kernel(long long C, Sink sink) {
  for (long long c = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; c < C;
       c += static_cast<long long>(gridDim.x) * kThreads)
    sink(c, GradSums{0, 0});
}

// Enqueues Σdy and Σdy·(x − μ) per channel of [A, C, B]; the sink sees each channel once.
template <class Sink>
Status launch_grad_sums(const float* dy, const float* x, MeanSource mu, long long A, long long C, long long B,
                        const Sink& sink, cudaStream_t st, const char* op) {
  if (C == 0) return Status::Ok();
  if (A * B == 0) {
    grad_empty_kernel<Sink><<<grid_for(C, kThreads), kThreads, 0, st>>>(C, sink);
    return check_launch(op, "grad_empty_kernel");
  }
  const bool aligned = aligned16(dy) && aligned16(x);
  Scratch partial;
  long long S = 1;
  if (B == 1) {
    GradColumnParams p;
    p.dy = dy;
    p.x = x;
    p.mu = mu;
    p.R = A;
    p.C = C;
    const bool vec = aligned && C % 4 == 0;
    const long long lanes = vec ? C / 4 : C;
    int TX = 1;
    while (TX < 32 && TX < lanes) TX *= 2;
    p.TX = TX;
    p.TY = kThreads / TX;
    const long long gx = stats::ceil_div(lanes, TX);
    S = stats::choose_splits(gx, A, static_cast<long long>(p.TY) * 16, 65535);
    p.rows_per_split = stats::ceil_div(A, S);
    S = p.S = stats::ceil_div(A, p.rows_per_split);
    p.partial = nullptr;
    if (S > 1) {
      BN_TRY(partial.alloc(static_cast<size_t>(C * S) * sizeof(GradSums), op));
      p.partial = partial.as<GradSums>();
    }
    if (gx > 0x7fffffffLL) return Status::Error(Code::kUnsupported, std::string(op) + ": too many channels");
    const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(S));
    if (vec) grad_column_kernel<4, Sink><<<grid, kThreads, 0, st>>>(p, sink);
    else grad_column_kernel<1, Sink><<<grid, kThreads, 0, st>>>(p, sink);
    BN_TRY(check_launch(op, "grad_column_kernel"));
    if (S > 1) {
      grad_merge_kernel<Sink><<<grid_for(C * 32, kThreads), kThreads, 0, st>>>(p.partial, C, S, sink);
      BN_TRY(check_launch(op, "grad_merge_kernel"));
    }
    return Status::Ok();
  }
  GradSegmentParams p;
  p.dy = dy;
  p.x = x;
  p.mu = mu;
  p.A = A;
  p.C = C;
  p.B = B;
  const bool vec = aligned && B % 4 == 0;
  const long long M = A * B;
  S = stats::choose_splits(C, M, 16 * kThreads, 65536);
  p.chunk = stats::ceil_div(stats::ceil_div(M, S), 4) * 4;
  S = p.S = stats::ceil_div(M, p.chunk);
  const long long step = static_cast<long long>(kThreads) * (vec ? 4 : 1);
  p.astep = step / B;
  p.bstep = step % B;
  p.partial = nullptr;
  if (S > 1) {
    BN_TRY(partial.alloc(static_cast<size_t>(C * S) * sizeof(GradSums), op));
    p.partial = partial.as<GradSums>();
  }
  const unsigned grid = static_cast<unsigned>(std::min<long long>(C * S, 1 << 30));
  if (vec) grad_segment_kernel<4, Sink><<<grid, kThreads, 0, st>>>(p, sink);
  else grad_segment_kernel<1, Sink><<<grid, kThreads, 0, st>>>(p, sink);
  BN_TRY(check_launch(op, "grad_segment_kernel"));
  if (S > 1) {
    grad_merge_kernel<Sink><<<grid_for(C * 32, kThreads), kThreads, 0, st>>>(p.partial, C, S, sink);
    BN_TRY(check_launch(op, "grad_merge_kernel"));
  }
  return Status::Ok();
}

// ---- streams --------------------------------------------------------------------------
// Scratch memory comes from the caching allocator, whose reuse is safe in the order of
// the backend's stream. A caller's other stream is therefore joined by events: the
// backend's stream waits for the caller's work so far, runs the op, and the caller's
// stream waits for the op. Nothing blocks the host.
struct StreamScope {
  cudaStream_t st = nullptr;
  cudaStream_t foreign = nullptr;
  Status init(Stream s, const char* op) {
    BN_TRY(get_stream(&st, op));
    const cudaStream_t caller = reinterpret_cast<cudaStream_t>(s);
    if (!caller || caller == st) return Status::Ok();
    foreign = caller;
    return join(foreign, st, op);
  }
  Status finish(const char* op) const {
    if (!foreign) return Status::Ok();
    return join(st, foreign, op);
  }
  // `waiter` runs what is enqueued after this only when `first`'s work so far is done.
  static Status join(cudaStream_t first, cudaStream_t waiter, const char* op) {
    cudaEvent_t e;
    BN_CUDA_TRY(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), op, "cudaEventCreate");
    cudaError_t err = cudaEventRecord(e, first);
    if (err == cudaSuccess) err = cudaStreamWaitEvent(waiter, e, 0);
    cudaEventDestroy(e);  // released once the recorded work completes
    if (err != cudaSuccess) return cuda_error(err, op, "cudaEventRecord/cudaStreamWaitEvent");
    return Status::Ok();
  }
};

Status check_view(const ChannelView& v, const char* op) {
  if (v.A < 0 || v.C < 0 || v.B < 0)
    return Status::Error(Code::kRangeError, std::string(op) + ": negative extent in the [A, C, B] view");
  return Status::Ok();
}

Status missing(const char* op, const char* what) {
  return Status::Error(Code::kRangeError, std::string(op) + ": " + what + " is required");
}

// Synchronized forward over NCCL: this shard's packed statistics, all-gathered, merged
// in rank order into the sink. Enqueued on `st`, nothing waited for.
template <class Sink>
Status gather_stats(const FusedBatchNormArgs& a, const Sink& sink, cudaStream_t st, const char* op) {
  const long long A = a.view.A, C = a.view.C, B = a.view.B;
  const int R = nccl::comm_size(a.nccl);
  if (R < 1) return Status::Error(Code::kRangeError, std::string(op) + ": the NCCL communicator has no ranks");
  const long long P = syncbn::packed_size(C);
  Scratch packed;  // this rank's block, then the R gathered ones
  BN_TRY(packed.alloc(static_cast<size_t>(P) * (1 + static_cast<size_t>(R)) * sizeof(double), op));
  double* mine = packed.as<double>();
  double* gathered = mine + P;
  BN_TRY(stats::launch_stats(Shape{A, C, B}, {true, false, true}, a.x, syncbn::PackedStatsSink{mine, C}, st, op));
  BN_TRY(nccl::all_gather_enqueue(a.nccl, mine, gathered, static_cast<size_t>(P), st, op));
  syncbn::merge_ranks_kernel<Sink><<<grid_for(C, kThreads), kThreads, 0, st>>>(gathered, R, C, sink);
  return check_launch(op, "merge_ranks_kernel");
}

Status launch_forward(const FusedBatchNormArgs& a, cudaStream_t st, const char* op, ForwardPlan* used) {
  const long long A = a.view.A, C = a.view.C, B = a.view.B;
  *used = ForwardPlan::kTwoPass;
  if (C == 0) return Status::Ok();
  if (A * B > 0 && (!a.x || !a.y)) return missing(op, "x and y (device pointers)");
  if (!a.training || a.factor != 1) {
    if (!a.running_mean || !a.running_var)
      return Status::Error(Code::kRangeError, std::string(op) + ": running mean and variance are required " +
                                                  (a.training ? "when factor != 1" : "in inference"));
  }
  // Synchronized statistics replace x's own in training; inference exchanges nothing.
  const WholeBatchStats* whole = a.training ? a.whole_batch : nullptr;
  nccl::Comm* comm = a.training ? a.nccl : nullptr;
  if (whole && comm)
    return Status::Error(Code::kRangeError, std::string(op) + ": whole-batch statistics and an NCCL communicator "
                                                              "were both given (at most one)");
  if (whole && (!whole->mean || !whole->m2)) return missing(op, "the whole batch's mean and M2 (device pointers)");
  if ((whole || comm) && a.plan == ForwardPlan::kPersistent)
    return Status::Error(Code::kUnsupported, std::string(op) + ": the persistent plan computes x's own statistics; "
                                                               "synchronized batch norm runs the two-pass plan");
  Scratch table;
  BN_TRY(table.alloc(3 * static_cast<size_t>(C) * sizeof(double), op));
  TrainSink sink{a.scale, a.offset, a.running_mean, a.running_var, a.epsilon, a.factor,
                 a.batch_mean, a.batch_var, a.batch_var_biased, a.running_mean_out, a.running_var_out,
                 a.saved_mean, a.saved_inv_std, a.mean64, a.m2_64,
                 table.as<double>(), table.as<double>() + C, table.as<double>() + 2 * C};
  if (!a.training) {
    inference_prepare_kernel<<<grid_for(C, kThreads), kThreads, 0, st>>>(C, sink);
    BN_TRY(check_launch(op, "inference_prepare_kernel"));
  } else if (whole) {
    syncbn::given_stats_kernel<TrainSink>
        <<<grid_for(C, kThreads), kThreads, 0, st>>>(C, whole->count, whole->mean, whole->m2, sink);
    BN_TRY(check_launch(op, "given_stats_kernel"));
  } else if (comm) {
    BN_TRY(gather_stats(a, sink, st, op));
  } else {
    const long long n = A * C * B;
    // Persistent plan: channels last and a co-resident grid; under kAuto also x in L2.
    PersistentParams pp;
    const bool vec = aligned16(a.x) && aligned16(a.y) && C % 4 == 0;
    const bool can_persist = B == 1 && A > 0 && a.plan != ForwardPlan::kTwoPass && persistent_config(A, C, vec, &pp);
    const bool want_persist =
        can_persist && (a.plan == ForwardPlan::kPersistent ||
                        static_cast<long long>(n * sizeof(float)) <= device_limits().l2_bytes);
    if (a.plan == ForwardPlan::kPersistent && !can_persist)
      return Status::Error(Code::kUnsupported, std::string(op) + ": the persistent plan needs channels last (B == 1), "
                                                                 "cooperative launch and a grid that fits the GPU");
    if (want_persist) {
      Scratch partial;
      BN_TRY(partial.alloc(static_cast<size_t>(C * pp.S) * sizeof(Stats), op));
      pp.x = a.x;
      pp.y = a.y;
      pp.partial = partial.as<Stats>();
      const dim3 grid(static_cast<unsigned>(pp.gx), static_cast<unsigned>(pp.S));
      void* args[] = {&pp, &sink};
      const void* fn = vec ? reinterpret_cast<const void*>(persistent_forward_kernel<4>)
                           : reinterpret_cast<const void*>(persistent_forward_kernel<1>);
      BN_CUDA_TRY(cudaLaunchCooperativeKernel(fn, grid, dim3(kThreads), args, 0, st), op,
                  "cudaLaunchCooperativeKernel (persistent_forward_kernel)");
      *used = ForwardPlan::kPersistent;
      return Status::Ok();
    }
    const Shape shape{A, C, B};
    const std::vector<bool> reduce{true, false, true};
    BN_TRY(stats::launch_stats(shape, reduce, a.x, sink, st, op));
  }
  chan::NormalizeOp nop{{a.x}, a.y, sink.tm, sink.tinv, sink.to};
  return chan::launch_apply(nop, A, C, B, st, op);
}

}  // namespace

Status fused_batch_norm(const FusedBatchNormArgs& a, Stream stream, ForwardPlan* plan_used) {
  const char* op = "fusedBatchNorm";
  BN_TRY(check_view(a.view, op));
  StreamScope s;
  BN_TRY(s.init(stream, op));
  ForwardPlan used = ForwardPlan::kTwoPass;
  BN_TRY(launch_forward(a, s.st, op, &used));
  if (plan_used) *plan_used = used;
  return s.finish(op);
}

Status channel_grad_sums(const ChannelGradArgs& p, double* sum_dy, double* sum_dy_xmu, Stream stream) {
  const char* op = "batchNormalizationGrad";
  BN_TRY(check_view(ChannelView{p.A, p.C, p.B}, op));
  if (p.C > 0 && (!p.mean || !sum_dy || !sum_dy_xmu)) return missing(op, "mean, sum_dy and sum_dy_xmu");
  StreamScope s;
  BN_TRY(s.init(stream, op));
  BN_TRY(launch_grad_sums(p.dy, p.x, MeanSource{nullptr, p.mean}, p.A, p.C, p.B, SumsSink{sum_dy, sum_dy_xmu}, s.st,
                          op));
  return s.finish(op);
}

Status channel_grad_apply(const ChannelGradArgs& p, const double* g, const double* a, const double* b, float* dx,
                          Stream stream) {
  const char* op = "batchNormalizationGrad";
  BN_TRY(check_view(ChannelView{p.A, p.C, p.B}, op));
  if (p.A * p.C * p.B > 0 && (!p.mean || !g || !a || !b || !dx)) return missing(op, "mean, g, a, b and dx");
  StreamScope s;
  BN_TRY(s.init(stream, op));
  chan::GradOp gop{{p.dy, p.x}, dx, p.mean, g, a, b};
  BN_TRY(chan::launch_apply(gop, p.A, p.C, p.B, s.st, op));
  return s.finish(op);
}

Status batch_norm_grad(const BatchNormGradArgs& a, Stream stream) {
  const char* op = "batchNormalizationGrad";
  BN_TRY(check_view(a.view, op));
  StreamScope s;
  BN_TRY(s.init(stream, op));
  const long long A = a.view.A, C = a.view.C, B = a.view.B;
  if (C == 0) return Status::Ok();
  if (!a.saved_mean || !a.saved_inv_std) return missing(op, "saved_mean and saved_inv_std");
  if (A * B > 0 && (!a.dy || !a.x)) return missing(op, "dy and x (device pointers)");
  // Synchronized sums replace x's own in dx when training; frozen statistics exchange nothing.
  const WholeBatchGradSums* whole = a.training ? a.whole_batch : nullptr;
  nccl::Comm* comm = a.training ? a.nccl : nullptr;
  if (whole && comm)
    return Status::Error(Code::kRangeError, std::string(op) + ": whole-batch sums and an NCCL communicator were "
                                                              "both given (at most one)");
  if (whole && (!whole->sum_dy || !whole->sum_dy_xmu || !whole->shard_sum_dy || !whole->shard_sum_dy_xmu))
    return missing(op, "the whole batch's and the shard's sums (device pointers)");
  {
    Scratch table;
    BN_TRY(table.alloc(4 * static_cast<size_t>(C) * sizeof(double), op));
    double* t = table.as<double>();
    const double n_shard = static_cast<double>(A) * static_cast<double>(B);
    const GradSink sink{a.scale, a.saved_mean, a.saved_inv_std, n_shard, a.training, a.dscale, a.doffset,
                        a.sum_dy, a.sum_dy_xmu, t, t + C, t + 2 * C, t + 3 * C};
    const MeanSource mu{a.saved_mean, nullptr};
    Scratch packed;  // nccl: this shard's block, then the all-reduced one
    if (whole) {
      grad_given_sums_kernel<<<grid_for(C, kThreads), kThreads, 0, s.st>>>(
          C, sink, whole->shard_sum_dy, whole->shard_sum_dy_xmu, whole->sum_dy, whole->sum_dy_xmu, nullptr,
          whole->count);
      BN_TRY(check_launch(op, "grad_given_sums_kernel"));
    } else if (comm) {
      const long long P = syncbn::packed_size(C);
      BN_TRY(packed.alloc(2 * static_cast<size_t>(P) * sizeof(double), op));
      double* mine = packed.as<double>();
      double* all = mine + P;
      BN_TRY(launch_grad_sums(a.dy, a.x, mu, A, C, B, PackedSumsSink{mine, C, n_shard}, s.st, op));
      BN_TRY(nccl::all_reduce_enqueue(comm, mine, all, static_cast<size_t>(P), s.st, op));
      grad_given_sums_kernel<<<grid_for(C, kThreads), kThreads, 0, s.st>>>(C, sink, mine + 1, mine + 1 + C, all + 1,
                                                                            all + 1 + C, all, 0);
      BN_TRY(check_launch(op, "grad_given_sums_kernel"));
    } else {
      BN_TRY(launch_grad_sums(a.dy, a.x, mu, A, C, B, sink, s.st, op));
    }
    if (a.dx) {
      chan::GradOp gop{{a.dy, a.x}, a.dx, t, t + C, t + 2 * C, t + 3 * C};
      BN_TRY(chan::launch_apply(gop, A, C, B, s.st, op));
    }
  }
  return s.finish(op);
}

}  // namespace cuda
}  // namespace bn
