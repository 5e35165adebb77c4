// CPU kernels for the backward pass of per-channel batch normalization.
//
// x and dy are viewed as [A, C, B]: A = product of the dims before the channel axis,
// C = channels, B = product of the dims after it (NHWC: B = 1; NCHW: A = N, B = H·W).
// The reductions are Σdy and Σdy·(x − μ) per channel, accumulated in float64 with
// (x − μ) formed first; the work is cut into blocks of A that depend only on the shape
// (never on the thread count) and combined in block order, so results are bit-identical
// for any thread count (as for moments). At most kMaxBlocks blocks keep partial sums, so
// the scratch memory is O(C), whatever the batch size.
#include <algorithm>
#include <cmath>
#include <new>
#include <vector>

#include "backend_api/ops.h"
#include "simd.h"
#include "threadpool.h"

namespace bn {
namespace {

constexpr int64_t kBlockElems = 16384;  // elements per reduction block (at least)
constexpr int64_t kMaxBlocks = 32;      // blocks with partial sums: 2·C doubles each
constexpr int64_t kChannelTile = 1024;  // channels per task of channels-last rows
constexpr int kLanes = 8;

// Channels-last rows: s1[c] += dy[c], s2[c] += dy[c]·(x[c] − μ[c]) for `rows` rows of
// `width` channels, rows `stride` elements apart.
BN_CLONES void rows_grad_sums(const float* __restrict dy, const float* __restrict x, int64_t rows,
                              int64_t width, int64_t stride, const double* __restrict mu,
                              double* __restrict s1, double* __restrict s2) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* d = dy + r * stride;
    const float* v = x + r * stride;
    for (int64_t c = 0; c < width; ++c) {
      const double g = static_cast<double>(d[c]);
      s1[c] += g;
      s2[c] += g * (static_cast<double>(v[c]) - mu[c]);
    }
  }
}

// One contiguous run of one channel: lane-wise Σdy and Σdy·(x − μ).
BN_CLONES void run_grad_sums(const float* __restrict dy, const float* __restrict x, int64_t n, double mu,
                             double* __restrict a1, double* __restrict a2) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const double g = static_cast<double>(dy[i + k]);
      a1[k] += g;
      a2[k] += g * (static_cast<double>(x[i + k]) - mu);
    }
  for (int k = 0; i < n; ++i, ++k) {
    const double g = static_cast<double>(dy[i]);
    a1[k] += g;
    a2[k] += g * (static_cast<double>(x[i]) - mu);
  }
}

inline double fold_lanes(double* a) {
  for (int w = kLanes / 2; w >= 1; w >>= 1)
    for (int k = 0; k < w; ++k) a[k] += a[k + w];
  return a[0];
}

// dx = g·(dy − a − (x − μ)·b) per channel, in float64; channels-last rows.
BN_CLONES void rows_grad_apply(const float* __restrict dy, const float* __restrict x, float* __restrict dx,
                               int64_t rows, int64_t C, const double* __restrict mu,
                               const double* __restrict g, const double* __restrict a,
                               const double* __restrict b) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = r * C + c;
      dx[i] = static_cast<float>(
          g[c] * (static_cast<double>(dy[i]) - a[c] - (static_cast<double>(x[i]) - mu[c]) * b[c]));
    }
}

BN_CLONES void run_grad_apply(const float* __restrict dy, const float* __restrict x, float* __restrict dx,
                              int64_t n, double mu, double g, double a, double b) {
  for (int64_t i = 0; i < n; ++i)
    dx[i] = static_cast<float>(g * (static_cast<double>(dy[i]) - a - (static_cast<double>(x[i]) - mu) * b));
}

}  // namespace

Status cpu_channel_grad_sums(const ChannelGradArgs& p, double* sum_dy, double* sum_dy_xmu) {
  const int64_t A = p.A, C = p.C, B = p.B;
  std::fill(sum_dy, sum_dy + C, 0.0);
  std::fill(sum_dy_xmu, sum_dy_xmu + C, 0.0);
  if (A * C * B == 0) return Status::Ok();
  // Blocks of rows of A; each block's partial sums are kept and folded in order.
  const int64_t per_a = C * B;
  int64_t rows = std::max<int64_t>(1, kBlockElems / per_a);
  if ((A + rows - 1) / rows > kMaxBlocks) rows = (A + kMaxBlocks - 1) / kMaxBlocks;
  const int64_t blocks = (A + rows - 1) / rows;
  std::vector<double> part;
  try {
    part.assign(static_cast<size_t>(blocks * 2 * C), 0.0);
  } catch (const std::bad_alloc&) {
    return Status::Error(Code::kOutOfMemory, "batchNormalizationGrad: out of host memory for partial sums");
  }
  if (B == 1) {
    // One task per (block, tile of channels).
    const int64_t tiles = (C + kChannelTile - 1) / kChannelTile;
    parallel_for(static_cast<size_t>(blocks * tiles), [&](size_t t) {
      const int64_t k = static_cast<int64_t>(t) / tiles, c0 = (static_cast<int64_t>(t) % tiles) * kChannelTile;
      const int64_t a0 = k * rows, n = std::min(rows, A - a0), w = std::min(kChannelTile, C - c0);
      double* s1 = part.data() + static_cast<size_t>(k) * 2 * static_cast<size_t>(C);
      rows_grad_sums(p.dy + a0 * C + c0, p.x + a0 * C + c0, n, w, C, p.mean + c0, s1 + c0, s1 + C + c0);
    });
  } else {
    // One task per (block, channel): runs of B contiguous elements.
    parallel_for(static_cast<size_t>(blocks * C), [&](size_t t) {
      const int64_t k = static_cast<int64_t>(t) / C, c = static_cast<int64_t>(t) % C;
      const int64_t a0 = k * rows, n = std::min(rows, A - a0);
      double a1[kLanes] = {}, a2[kLanes] = {};
      for (int64_t a = a0; a < a0 + n; ++a) {
        const int64_t off = (a * C + c) * B;
        run_grad_sums(p.dy + off, p.x + off, B, p.mean[c], a1, a2);
      }
      double* s1 = part.data() + static_cast<size_t>(k) * 2 * static_cast<size_t>(C);
      s1[c] = fold_lanes(a1);
      s1[C + c] = fold_lanes(a2);
    });
  }
  for (int64_t k = 0; k < blocks; ++k) {
    const double* s1 = part.data() + static_cast<size_t>(k) * 2 * static_cast<size_t>(C);
    for (int64_t c = 0; c < C; ++c) {
      sum_dy[c] += s1[c];
      sum_dy_xmu[c] += s1[C + c];
    }
  }
  return Status::Ok();
}

Status cpu_channel_grad_apply(const ChannelGradArgs& p, const double* g, const double* a, const double* b,
                              float* dx) {
  const int64_t A = p.A, C = p.C, B = p.B;
  if (A * C * B == 0) return Status::Ok();
  if (B == 1) {
    const int64_t rows = std::max<int64_t>(1, kBlockElems / C);
    const int64_t blocks = (A + rows - 1) / rows;
    parallel_for(static_cast<size_t>(blocks), [&](size_t k) {
      const int64_t a0 = static_cast<int64_t>(k) * rows, n = std::min(rows, A - a0);
      rows_grad_apply(p.dy + a0 * C, p.x + a0 * C, dx + a0 * C, n, C, p.mean, g, a, b);
    });
  } else {
    parallel_for(static_cast<size_t>(A * C), [&](size_t t) {
      const int64_t c = static_cast<int64_t>(t) % C;
      const int64_t off = static_cast<int64_t>(t) * B;
      run_grad_apply(p.dy + off, p.x + off, dx + off, B, p.mean[c], g[c], a[c], b[c]);
    });
  }
  return Status::Ok();
}


// ---- the training ops: bookkeeping around the kernels ------------------------------
// The roundings: mean and variances are rounded to float32 once, from float64 statistics;
// the running update and 1/sqrt(v + ε) are computed in float64 from those float32 values
// (what sufficientStatistics + batchNormalization give when composed by hand, and what
// the tests check bit for bit).
namespace {

// The per-channel parameter shape that broadcasts against x: C at `axis`, 1 after it.
Shape param_shape(const ChannelLayout& l) {
  Shape s(l.shape.begin() + l.axis, l.shape.end());
  for (size_t i = 1; i < s.size(); ++i) s[i] = 1;
  return s;
}

Status normalize(const FusedArgs& a, const float* mean, const float* variance) {
  BatchNormArgs b;
  const Shape ps = param_shape(a.layout);
  b.x = {a.x, a.layout.shape, Memory::kHost};
  b.mean = {mean, ps, Memory::kHost};
  b.variance = {variance, ps, Memory::kHost};
  b.offset = {a.offset, a.offset ? ps : Shape{}, Memory::kHost};
  b.scale = {a.scale, a.scale ? ps : Shape{}, Memory::kHost};
  b.epsilon = a.epsilon;
  b.y = a.y;
  b.out_shape = a.layout.shape;
  return cpu_batch_norm(b);
}

// FusedBatchNormV3's bookkeeping from float64 per-channel statistics (count n, mean and
// M2 = Σ(x − mean)²), written once for the local statistics and the whole batch's of a
// synchronized call: the same roundings either way, so a synchronized call on one rank
// gives the local op's results bit for bit.
Status finish_training(const FusedArgs& a, double n, const double* mean64, const double* m2) {
  const int64_t C = a.layout.C;
  const double bessel = std::max(n - 1, 1.0);
  const double f = a.factor;
  for (int64_t c = 0; c < C; ++c) {
    const float mean = static_cast<float>(mean64[c]);
    const float biased = static_cast<float>(m2[c] / n);
    const float unbiased = static_cast<float>(m2[c] / bessel);
    a.batch_mean[c] = mean;
    a.saved_mean[c] = mean;
    a.batch_var_biased[c] = biased;
    a.batch_var[c] = unbiased;
    a.saved_inv_std[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(biased) + a.epsilon));
    // Read before written: running_*_out may be the running_* inputs (in-place update).
    const float rm = f == 1 ? mean : static_cast<float>((1 - f) * static_cast<double>(a.running_mean[c]) + f * static_cast<double>(mean));
    const float rv = f == 1 ? unbiased : static_cast<float>((1 - f) * static_cast<double>(a.running_var[c]) + f * static_cast<double>(unbiased));
    a.running_mean_out[c] = rm;
    a.running_var_out[c] = rv;
  }
  return normalize(a, a.batch_mean, a.batch_var_biased);
}

}  // namespace

Status cpu_fused_batch_norm(const FusedArgs& a) {
  const int64_t C = a.layout.C;
  const size_t uc = static_cast<size_t>(C);
  if (a.nccl) return Status::Error(Code::kUnsupported, "fusedBatchNorm: backend 'cpu' has no device communicator (options.nccl needs backend 'cuda' and DeviceTensor inputs)");
  if (!a.training) {
    Status s = normalize(a, a.running_mean, a.running_var);
    if (!s.ok()) return s;
    for (float* o : {a.batch_mean, a.running_mean_out, a.saved_mean}) std::copy(a.running_mean, a.running_mean + C, o);
    for (float* o : {a.batch_var, a.batch_var_biased, a.running_var_out}) std::copy(a.running_var, a.running_var + C, o);
    for (int64_t c = 0; c < C; ++c)
      a.saved_inv_std[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(a.running_var[c]) + a.epsilon));
    return Status::Ok();
  }
  // Synchronized: the caller exchanged the statistics; no pass over x for them.
  if (a.whole_batch) return finish_training(a, a.whole_batch->count, a.whole_batch->mean, a.whole_batch->m2);
  std::vector<double> mean64, m2;
  std::vector<float> scratch;
  try {
    mean64.assign(uc, 0.0);
    m2.assign(uc, 0.0);
    scratch.assign(2 * uc, 0.0f);
  } catch (const std::bad_alloc&) {
    return Status::Error(Code::kOutOfMemory, "fusedBatchNorm: out of host memory for the statistics");
  }
  MomentsArgs m;
  m.x = a.x;
  m.shape = a.layout.shape;
  m.reduce.assign(m.shape.size(), true);
  m.reduce[static_cast<size_t>(a.layout.axis)] = false;
  m.mean = scratch.data();
  m.variance = scratch.data() + uc;
  m.mean64 = mean64.data();
  m.m2_64 = m2.data();
  Status s = cpu_moments(m);
  if (!s.ok()) return s;
  return finish_training(a, static_cast<double>(a.layout.A * a.layout.B), mean64.data(), m2.data());
}

Status cpu_batch_norm_grad(const GradArgs& a) {
  const int64_t C = a.layout.C;
  const size_t uc = static_cast<size_t>(C);
  if (a.nccl) return Status::Error(Code::kUnsupported, "batchNormalizationGrad: backend 'cpu' has no device communicator (options.nccl needs backend 'cuda' and DeviceTensor inputs)");
  std::vector<double> mu, s1, s2, g, ca, cb;
  try {
    for (std::vector<double>* v : {&mu, &g, &ca, &cb}) v->assign(uc, 0.0);
    if (!a.whole_batch)
      for (std::vector<double>* v : {&s1, &s2}) v->assign(uc, 0.0);
  } catch (const std::bad_alloc&) {
    return Status::Error(Code::kOutOfMemory, "batchNormalizationGrad: out of host memory for the channel sums");
  }
  for (int64_t c = 0; c < C; ++c) mu[c] = static_cast<double>(a.saved_mean[c]);
  ChannelGradArgs p;
  p.dy = a.dy;
  p.x = a.x;
  p.A = a.layout.A;
  p.C = C;
  p.B = a.layout.B;
  p.mean = mu.data();
  // The sums dx needs (the whole batch's when synchronized) and the ones dscale/doffset
  // are (always this shard's); without a whole batch both are this call's own.
  const double* sum_dy = nullptr;
  const double* sum_dy_xmu = nullptr;
  const double* shard_sum_dy = nullptr;
  const double* shard_sum_dy_xmu = nullptr;
  double N = 0;
  if (a.whole_batch) {
    sum_dy = a.whole_batch->sum_dy;
    sum_dy_xmu = a.whole_batch->sum_dy_xmu;
    shard_sum_dy = a.whole_batch->shard_sum_dy;
    shard_sum_dy_xmu = a.whole_batch->shard_sum_dy_xmu;
    N = a.whole_batch->count;
  } else {
    Status s = cpu_channel_grad_sums(p, s1.data(), s2.data());
    if (!s.ok()) return s;
    sum_dy = shard_sum_dy = s1.data();
    sum_dy_xmu = shard_sum_dy_xmu = s2.data();
    N = static_cast<double>(a.layout.A * a.layout.B);
  }
  // dx = g·(dy − a − (x − μ)·b): g = scale·invstd; training adds a = Σdy/N and
  // b = invstd²·Σdy(x − μ)/N (the two reduction terms of the batch statistics' gradient).
  for (int64_t c = 0; c < C; ++c) {
    const double inv = static_cast<double>(a.saved_inv_std[c]);
    g[c] = (a.scale ? static_cast<double>(a.scale[c]) : 1.0) * inv;
    if (a.training && N > 0) {
      ca[c] = sum_dy[c] / N;
      cb[c] = (inv * inv * sum_dy_xmu[c]) / N;
    }
  }
  // The per-channel outputs are written after every input was read: they may not alias
  // an input (the binding checks), but dscale/doffset are written last regardless.
  Status s = cpu_channel_grad_apply(p, g.data(), ca.data(), cb.data(), a.dx);
  if (!s.ok()) return s;
  for (int64_t c = 0; c < C; ++c) {
    a.dscale[c] = static_cast<float>(static_cast<double>(a.saved_inv_std[c]) * shard_sum_dy_xmu[c]);
    a.doffset[c] = static_cast<float>(shard_sum_dy[c]);
  }
  return Status::Ok();
}

}  // namespace bn
