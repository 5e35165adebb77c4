// Per-channel elementwise passes over x viewed as [A, C, B] (channel axis in the middle:
// NHWC is [N·H·W, C, 1], NCHW is [N, C, H·W], any other channel axis of any rank folds
// the same way). Each pass reads per-channel float64 coefficients and one or two inputs,
// writes one output; shared by batchNormalization (cuda/batchnorm.cu), the training
// forward's normalize and the backward's dx (cuda/training.cu).
//
// The channel of an element is known without per-element index arithmetic:
//   - B == 1 (channels last): a thread owns VEC adjacent channels for all the rows it
//     visits, so it loads their coefficients once and streams float4s down the rows;
//   - B large (NCHW planes): a block owns a chunk of one (a, c) plane, one coefficient
//     lookup per chunk;
//   - otherwise: one division per VEC elements (B % VEC == 0 keeps a float4 in a plane).
// Loads of several rows are issued before any store (independent loads in flight); every
// element is read and written by the same thread, so y may be x (in place).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>

#include "common.cuh"

namespace bn {
namespace cuda {
namespace chan {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

template <int VEC>
__device__ __forceinline__ void load_vec(const float* p, float* v) {
  if (VEC == 4) {
    // A plain load, not the read-only path: the output may be this input (in place).
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x;
    v[VEC > 1 ? 1 : 0] = q.y;
    v[VEC > 2 ? 2 : 0] = q.z;
    v[VEC > 3 ? 3 : 0] = q.w;
  } else {
    v[0] = *p;
  }
}

template <int VEC>
__device__ __forceinline__ void store_vec(float* p, const float* v) {
  if (VEC == 4) {
    float4 q;
    q.x = v[0];
    q.y = v[VEC > 1 ? 1 : 0];
    q.z = v[VEC > 2 ? 2 : 0];
    q.w = v[VEC > 3 ? 3 : 0];
    *reinterpret_cast<float4*>(p) = q;
  } else {
    *p = v[0];
  }
}

// y = (x − m)·inv + o in float64 with inv = scale/sqrt(var + ε) folded per channel: the
// arithmetic of the CPU path (native/cpu_batchnorm.cc), so results agree bit for bit.
struct NormalizeOp {
  static constexpr int kIn = 1;
  const float* in[1];
  float* out;
  const double* tm;
  const double* tinv;
  const double* to;
  struct Coef {
    double m, inv, o;
  };
  __device__ __forceinline__ Coef coef(long long c) const { return Coef{tm[c], tinv[c], to[c]}; }
  __device__ __forceinline__ float f(const float* v, const Coef& k) const {
    return static_cast<float>((static_cast<double>(v[0]) - k.m) * k.inv + k.o);
  }
};

// dx = g·(dy − a − (x − μ)·b) in float64, the CPU's cpu_channel_grad_apply.
struct GradOp {
  static constexpr int kIn = 2;
  const float* in[2];  // dy, x
  float* out;
  const double* tmu;
  const double* tg;
  const double* ta;
  const double* tb;
  struct Coef {
    double mu, g, a, b;
  };
  __device__ __forceinline__ Coef coef(long long c) const { return Coef{tmu[c], tg[c], ta[c], tb[c]}; }
  __device__ __forceinline__ float f(const float* v, const Coef& k) const {
    return static_cast<float>(k.g * (static_cast<double>(v[0]) - k.a - (static_cast<double>(v[1]) - k.mu) * k.b));
  }
};

// U groups of VEC elements at offsets off[u], each element e with coefficient k[e].
template <class Op, int VEC, int U>
__device__ __forceinline__ void apply_groups(const Op& op, const long long* off, const typename Op::Coef* k) {
  float v[U][Op::kIn][VEC];
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int j = 0; j < Op::kIn; ++j) load_vec<VEC>(op.in[j] + off[u], v[u][j]);
#pragma unroll
  for (int u = 0; u < U; ++u) {
    float r[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      float a[Op::kIn];
#pragma unroll
      for (int j = 0; j < Op::kIn; ++j) a[j] = v[u][j][e];
      r[e] = op.f(a, k[e]);
    }
    store_vec<VEC>(op.out + off[u], r);
  }
}

// ---- B == 1: rows of C channels --------------------------------------------------------
// Block = TX x TY threads; thread (tx, ty) owns channels c .. c + VEC − 1 and visits rows
// blockIdx.y·TY + ty, stepping by gridDim.y·TY.
template <class Op, int VEC>
__global__ void __launch_bounds__(kThreads) channels_last_kernel(Op op, long long rows, long long C, int TX,
                                                                 int TY) {
  const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;
  const long long c = (static_cast<long long>(blockIdx.x) * TX + tx) * VEC;
  if (c >= C) return;  // with VEC = 4, C % 4 == 0, so c + 3 < C too
  typename Op::Coef k[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) k[e] = op.coef(c + e);
  const long long step = static_cast<long long>(gridDim.y) * TY;
  long long r = static_cast<long long>(blockIdx.y) * TY + ty;
  for (; r + (kUnroll - 1) * step < rows; r += kUnroll * step) {
    long long off[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) off[u] = (r + u * step) * C + c;
    apply_groups<Op, VEC, kUnroll>(op, off, k);
  }
  for (; r < rows; r += step) {
    const long long off = r * C + c;
    apply_groups<Op, VEC, 1>(op, &off, k);
  }
}

// ---- B large: chunks of (a, c) planes --------------------------------------------------
// Work item = (plane, chunk); plane p = a·C + c has channel p % C and starts at p·B.
template <class Op, int VEC>
__global__ void __launch_bounds__(kThreads) planes_kernel(Op op, long long planes, long long C, long long B,
                                                          long long chunks, long long chunk_len) {
  const long long items = planes * chunks;
  const long long step = static_cast<long long>(kThreads) * VEC;
  for (long long it = blockIdx.x; it < items; it += gridDim.x) {
    const long long p = it / chunks, q = it - p * chunks;
    const typename Op::Coef k1 = op.coef(p % C);
    typename Op::Coef k[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) k[e] = k1;
    const long long base = p * B;
    const long long j1 = min(B, (q + 1) * chunk_len);
    long long j = q * chunk_len + static_cast<long long>(threadIdx.x) * VEC;
    for (; j + (kUnroll - 1) * step < j1; j += kUnroll * step) {
      long long off[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) off[u] = base + j + u * step;
      apply_groups<Op, VEC, kUnroll>(op, off, k);
    }
    for (; j < j1; j += step) {
      const long long off = base + j;
      apply_groups<Op, VEC, 1>(op, &off, k);
    }
  }
}

// ---- anything else: one division per VEC elements (B % VEC == 0) ---------------------
template <class Op, int VEC>
__global__ void __launch_bounds__(kThreads) flat_kernel(Op op, long long n, long long C, long long B) {
  const long long nvec = n / VEC;
  for (long long v = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; v < nvec;
       v += static_cast<long long>(gridDim.x) * kThreads) {
    const long long i = v * VEC;
    const typename Op::Coef k1 = op.coef((i / B) % C);
    typename Op::Coef k[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) k[e] = k1;
    apply_groups<Op, VEC, 1>(op, &i, k);
  }
}

// Enqueues the pass over [A, C, B]; every pointer of `op` is device memory.
template <class Op>
Status launch_apply(const Op& op, long long A, long long C, long long B, cudaStream_t st, const char* op_name) {
  const long long n = A * C * B;
  if (n == 0) return Status::Ok();
  bool aligned = aligned16(op.out);
  for (int j = 0; j < Op::kIn; ++j) aligned = aligned && aligned16(op.in[j]);
  const long long sms = device_info().multiprocessors > 0 ? device_info().multiprocessors : 80;
  if (B == 1) {
    const bool vec = aligned && C % 4 == 0;
    const long long lanes = vec ? C / 4 : C;
    int TX = 1;
    while (TX < 32 && TX < lanes) TX *= 2;
    const int TY = kThreads / TX;
    const long long gx = (lanes + TX - 1) / TX;
    const long long row_blocks = (A + TY - 1) / TY;
    const long long gy = std::max<long long>(1, std::min<long long>({row_blocks, (sms * 8 + gx - 1) / gx, 65535}));
    if (gx <= 0x7fffffffLL) {
      const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
      if (vec) channels_last_kernel<Op, 4><<<grid, kThreads, 0, st>>>(op, A, C, TX, TY);
      else channels_last_kernel<Op, 1><<<grid, kThreads, 0, st>>>(op, A, C, TX, TY);
      return check_launch(op_name, "channels_last_kernel");
    }
  }
  const bool vec = aligned && B % 4 == 0;
  if (B >= 2048) {
    const long long chunk_len = static_cast<long long>(kThreads) * 4 * kUnroll;  // a multiple of every VEC
    const long long chunks = (B + chunk_len - 1) / chunk_len;
    const long long items = A * C * chunks;
    const unsigned grid = static_cast<unsigned>(std::min<long long>(items, 1 << 30));
    if (vec) planes_kernel<Op, 4><<<grid, kThreads, 0, st>>>(op, A * C, C, B, chunks, chunk_len);
    else planes_kernel<Op, 1><<<grid, kThreads, 0, st>>>(op, A * C, C, B, chunks, chunk_len);
    return check_launch(op_name, "planes_kernel");
  }
  if (vec) flat_kernel<Op, 4><<<grid_for(n / 4, kThreads), kThreads, 0, st>>>(op, n, C, B);
  else flat_kernel<Op, 1><<<grid_for(n, kThreads), kThreads, 0, st>>>(op, n, C, B);
  return check_launch(op_name, "flat_kernel");
}

}  // namespace chan
}  // namespace cuda
}  // namespace bn
