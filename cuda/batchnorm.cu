// CUDA batchNormalization: y = (x − mean) · scale / sqrt(variance + ε) + offset with
// numpy broadcasting, the same semantics and the same float64 arithmetic as
// native/cpu_batchnorm.cc (so results match the CPU bit for bit: IEEE float64 sqrt and
// division on both, no FMA contraction on either: --fmad=false / -ffp-contract=off).
//
// When the parameters vary along few elements, a table of (mean, inv, offset) in float64
// is built first (bn_table_fill_kernel), then one pass reads x once and writes y once:
//   - x not broadcast and the table index is (i / inner) % T (per-tensor, NCHW, NHWC and
//     every layout whose varying dims are adjacent): the per-channel passes of
//     channel_apply.cuh (no per-element index arithmetic, float4 loads and stores);
//   - otherwise bn_table_general_kernel (index arithmetic per element).
// When the parameters are as large as x, bn_elementwise_kernel computes inv per element.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../native/backend_api/broadcast.h"
#include "channel_apply.cuh"
#include "common.cuh"

namespace bn {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxDims = 64;

// Row-major decomposition of a flat index over `size`, giving K operands' offsets.
template <int K>
struct Indexer {
  int rank;
  long long size[kMaxDims];
  long long st[K][kMaxDims];

  __device__ __forceinline__ void offsets(long long i, long long* off) const {
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] = 0;
    for (int d = rank - 1; d >= 0; --d) {
      const long long q = i / size[d];
      const long long c = i - q * size[d];
      i = q;
#pragma unroll
      for (int k = 0; k < K; ++k) off[k] += c * st[k][d];
    }
  }
};

__device__ __forceinline__ double inv_std(double var, double scale, double eps) { return scale / sqrt(var + eps); }

// Table entry t for every t in [0, T): idx.offsets gives mean, variance, offset, scale.
__global__ void __launch_bounds__(kThreads) bn_table_fill_kernel(Indexer<4> idx, long long T, const float* mean,
                                                                 const float* var, const float* offset,
                                                                 const float* scale, double eps, double* tm,
                                                                 double* tinv, double* to) {
  for (long long t = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; t < T;
       t += static_cast<long long>(gridDim.x) * kThreads) {
    long long off[4];
    idx.offsets(t, off);
    const double m = mean[off[0]];
    const double v = var[off[1]];
    const double o = offset ? static_cast<double>(offset[off[2]]) : 0.0;
    const double s = scale ? static_cast<double>(scale[off[3]]) : 1.0;
    tm[t] = m;
    tinv[t] = inv_std(v, s, eps);
    to[t] = o;
  }
}

// Any layout: offsets of x and of the table entry from the collapsed output dims.
__global__ void __launch_bounds__(kThreads) bn_table_general_kernel(Indexer<2> idx, long long n, const float* x,
                                                                    float* y, const double* __restrict__ tm,
                                                                    const double* __restrict__ tinv,
                                                                    const double* __restrict__ to) {
  for (long long i = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * kThreads) {
    long long off[2];
    idx.offsets(i, off);
    y[i] = static_cast<float>((static_cast<double>(x[off[0]]) - tm[off[1]]) * tinv[off[1]] + to[off[1]]);
  }
}

// Parameters as large as x: inv per element.
__global__ void __launch_bounds__(kThreads) bn_elementwise_kernel(Indexer<5> idx, long long n, const float* x,
                                                                  const float* mean, const float* var,
                                                                  const float* offset, const float* scale,
                                                                  double eps, float* y) {
  for (long long i = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * kThreads) {
    long long off[5];
    idx.offsets(i, off);
    const double xv = x[off[0]];
    const double m = mean[off[1]];
    const double v = var[off[2]];
    const double o = offset ? static_cast<double>(offset[off[3]]) : 0.0;
    const double s = scale ? static_cast<double>(scale[off[4]]) : 1.0;
    y[i] = static_cast<float>((xv - m) * inv_std(v, s, eps) + o);
  }
}

// The CPU's collapsed walk (native/broadcast.h) as a kernel argument.
template <int K>
Indexer<K> collapse_indexer(const Shape& out, const std::vector<std::vector<int64_t>>& strides) {
  const Dims d = collapse(out, strides);
  Indexer<K> idx{};
  idx.rank = static_cast<int>(d.size.size());
  for (int i = 0; i < idx.rank; ++i) {
    idx.size[i] = d.size[static_cast<size_t>(i)];
    for (int k = 0; k < K; ++k) idx.st[k][i] = d.st[static_cast<size_t>(k)][static_cast<size_t>(i)];
  }
  return idx;
}

Status launch_batch_norm(const BatchNormArgs& a, const float* x, const float* const p[4], float* y,
                         cudaStream_t st) {
  const char* op = "batchNormalization";
  const Shape& out = a.out_shape;
  const int64_t total = numel(out);
  const size_t r = out.size();
  const Operand* params[4] = {&a.mean, &a.variance, &a.offset, &a.scale};
  std::vector<std::vector<int64_t>> pst(4);
  for (int k = 0; k < 4; ++k) pst[k] = broadcast_strides(p[k] ? params[k]->shape : Shape{}, out);
  const std::vector<int64_t> xst = broadcast_strides(a.x.shape, out);
  const double eps = a.epsilon;

  int64_t T = 1;
  const std::vector<int64_t> tst = table_strides(pst, out, &T);

  if (T <= std::max<int64_t>(65536, total / 8)) {
    Scratch table;
    BN_TRY(table.alloc(3 * static_cast<size_t>(T) * sizeof(double), op));
    double* tm = table.as<double>();
    double* tinv = tm + T;
    double* to = tinv + T;
    {
      // The table dims: output dims along which some parameter varies, in order.
      Indexer<4> idx{};
      idx.rank = 0;
      for (size_t i = 0; i < r; ++i) {
        if (!tst[i]) continue;
        idx.size[idx.rank] = out[i];
        for (int k = 0; k < 4; ++k) idx.st[k][idx.rank] = pst[k][i];
        ++idx.rank;
      }
      if (idx.rank == 0) {
        idx.rank = 1;
        idx.size[0] = 1;
        for (int k = 0; k < 4; ++k) idx.st[k][0] = 0;
      }
      bn_table_fill_kernel<<<grid_for(T, kThreads), kThreads, 0, st>>>(idx, T, p[0], p[1], p[2], p[3], eps, tm, tinv,
                                                                        to);
      BN_TRY(check_launch(op, "bn_table_fill_kernel"));
    }
    Indexer<2> d = collapse_indexer<2>(out, {xst, tst});
    const bool x_dense = numel(a.x.shape) == total;
    int varying = -1, nvary = 0;
    for (int k = 0; k < d.rank; ++k)
      if (d.st[1][k] != 0) {
        varying = k;
        ++nvary;
      }
    const bool simple = x_dense && (nvary == 0 || (nvary == 1 && d.st[1][varying] == 1));
    if (simple) {
      // [outer, T, inner]: the per-channel passes of channel_apply.cuh.
      int64_t inner = 1;
      for (int k = varying + 1; k < d.rank; ++k) inner *= d.size[k];
      if (nvary == 0) inner = total;
      const int64_t Tm = nvary == 0 ? 1 : d.size[varying];
      const int64_t outer = total / (Tm * inner);
      chan::NormalizeOp nop{{x}, y, tm, tinv, to};
      BN_TRY(chan::launch_apply(nop, outer, Tm, inner, st, op));
    } else {
      bn_table_general_kernel<<<grid_for(total, kThreads), kThreads, 0, st>>>(d, total, x, y, tm, tinv, to);
      BN_TRY(check_launch(op, "bn_table_general_kernel"));
    }
    // `table` returns to the cache here; stream order keeps it valid for the kernels.
    return Status::Ok();
  }

  Indexer<5> d = collapse_indexer<5>(out, {xst, pst[0], pst[1], pst[2], pst[3]});
  bn_elementwise_kernel<<<grid_for(total, kThreads), kThreads, 0, st>>>(d, total, x, p[0], p[1], p[2], p[3], eps, y);
  return check_launch(op, "bn_elementwise_kernel");
}

}  // namespace

Status batch_norm(const BatchNormArgs& a) {
  const char* op = "batchNormalization";
  cudaStream_t st;
  BN_TRY(get_stream(&st, op));
  const int64_t total = numel(a.out_shape);
  if (total == 0) return Status::Ok();
  // Host operands (Float32Arrays, numbers) are copied in; device ones used as they are.
  DeviceOperand x, m, v, o, s;
  BN_TRY(to_device(a.x.data, a.x.mem, static_cast<size_t>(numel(a.x.shape)), &x, op));
  BN_TRY(to_device(a.mean.data, a.mean.mem, static_cast<size_t>(numel(a.mean.shape)), &m, op));
  BN_TRY(to_device(a.variance.data, a.variance.mem, static_cast<size_t>(numel(a.variance.shape)), &v, op));
  BN_TRY(to_device(a.offset.data, a.offset.mem, a.offset.data ? static_cast<size_t>(numel(a.offset.shape)) : 0, &o, op));
  BN_TRY(to_device(a.scale.data, a.scale.mem, a.scale.data ? static_cast<size_t>(numel(a.scale.shape)) : 0, &s, op));
  const float* p[4] = {m.p, v.p, o.p, s.p};
  if (a.mem == Memory::kDevice) return launch_batch_norm(a, x.p, p, a.y, st);
  Scratch y;
  BN_TRY(y.alloc(static_cast<size_t>(total) * sizeof(float), op));
  BN_TRY(launch_batch_norm(a, x.p, p, y.as<float>(), st));
  return copy_to_host(a.y, y.as<float>(), static_cast<size_t>(total) * sizeof(float), op);
}

}  // namespace cuda
}  // namespace bn
