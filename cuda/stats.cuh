// Per-output statistics (n, mean, M2) over any reduced axes, on the same collapsed
// (kept/reduced group) plans as the CPU path. Shared by moments (cuda/moments.cu) and the
// training forward (cuda/training.cu): the kernels hand each output's merged statistics
// to a Sink, so moments writes mean/variance and the training forward does its
// per-channel bookkeeping in the same place, without another pass.
//
// Numerics: each thread sums its elements' deviations from a shift (its own first
// element) in float64, s1 = Σd and s2 = Σd², and turns them into (n, mean, M2) =
// (n, shift + s1/n, s2 − s1²/n). With the shift inside the data the subtraction loses
// nothing that float64 cannot afford (the E[x²]−E[x]² failure needs float32 and a shift
// far from the data). Partial results are merged with Chan et al.'s pairwise update, in
// float64, in a fixed tree order inside warps and blocks, and across blocks by a second
// kernel with one warp per output (each lane merges a fixed strided subset of the
// partials left to right, then a fixed shuffle tree): no atomics, so results are
// bit-identical run after run. float64 per element costs about 4 DP operations per 4
// bytes read, well inside the DP throughput of data-center GPUs (A100/H100/H200); on
// consumer cards with 1/64-rate fp64 these kernels are compute-bound instead.
//
// Plans (g = collapsed groups, R = reduced, K = kept):
//   [L]R, [K L]K R, [R1 K L]R K R  -> segment_stats_kernel (block per output and split)
//   [K L] with short rows          -> row_stats_kernel (warp per row)
//   [R C], [K0 R C]                -> column_stats_kernel (columns contiguous, NHWC)
//   anything else                  -> general_stats_kernel (index arithmetic per element)
// A Sink is a small value type with `__device__ void operator()(long long o, const Stats&)
// const`, called exactly once per output with its merged statistics (n = 0 for an empty
// reduction).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.cuh"

namespace bn {
namespace cuda {
namespace stats {

constexpr int kThreads = 256;
constexpr int kMaxGroups = 64;  // rank limit checked by the binding
constexpr int kColumnUnroll = 4;  // independent row loads in flight per thread (apex PARALLEL_LOADS)

struct Stats {
  double n, mean, m2;
};

// Per-thread accumulator: deviations from the first element seen.
struct Acc {
  double shift, s1, s2;
  float s0;  // plain float32 sum: only used when the data has Inf/NaN (see acc_finish)
  long long n;
};

__device__ __forceinline__ void acc_init(Acc& a) {
  a.shift = 0;
  a.s1 = 0;
  a.s2 = 0;
  a.s0 = 0;
  a.n = 0;
}

__device__ __forceinline__ void acc_add(Acc& a, float v) {
  if (a.n == 0) a.shift = static_cast<double>(v);
  const double d = static_cast<double>(v) - a.shift;
  a.s1 += d;
  a.s2 = fma(d, d, a.s2);
  a.s0 += v;
  a.n += 1;
}

__device__ __forceinline__ void acc_add4(Acc& a, float4 v) {
  acc_add(a, v.x);
  acc_add(a, v.y);
  acc_add(a, v.z);
  acc_add(a, v.w);
}

// s1/s2 are finite exactly when the data is (finite floats give |d| < 7e38, d² < 5e77).
// Otherwise the mean is the plain sum's (±Inf when the infinities agree, NaN otherwise,
// as TF and the CPU path) and M2 is NaN.
__device__ __forceinline__ Stats acc_finish(const Acc& a) {
  Stats s;
  s.n = static_cast<double>(a.n);
  s.mean = 0;
  s.m2 = 0;
  if (a.n == 0) return s;
  if (isfinite(a.s1) && isfinite(a.s2)) {
    s.mean = a.shift + a.s1 / s.n;
    const double m2 = a.s2 - a.s1 * a.s1 / s.n;
    s.m2 = m2 < 0 ? 0.0 : m2;
  } else {
    s.mean = static_cast<double>(a.s0) / s.n;
    s.m2 = nan("");
  }
  return s;
}

// Chan, Golub & LeVeque's pairwise update; the same arithmetic as the CPU's chan_merge.
__device__ __forceinline__ void merge(Stats& a, const Stats& b) {
  if (b.n == 0) return;
  if (a.n == 0) {
    a = b;
    return;
  }
  const double nab = a.n + b.n;
  const double delta = b.mean - a.mean;
  a.mean = isfinite(delta) ? a.mean + delta * (b.n / nab) : a.mean * (a.n / nab) + b.mean * (b.n / nab);
  a.m2 += b.m2 + delta * delta * (a.n * b.n / nab);
  a.n = nab;
}

// Tree merge down to lane 0 (fixed order: deterministic). Every lane must call it.
__device__ __forceinline__ Stats warp_merge(Stats s) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Stats o;
    o.n = __shfl_down_sync(0xffffffffu, s.n, off);
    o.mean = __shfl_down_sync(0xffffffffu, s.mean, off);
    o.m2 = __shfl_down_sync(0xffffffffu, s.m2, off);
    merge(s, o);
  }
  return s;
}

// Merge over a 1-D block of kThreads threads; the result is valid in thread 0. Every
// thread must call it; it may be called repeatedly (it synchronizes before returning).
__device__ __forceinline__ Stats block_merge(Stats s) {
  __shared__ double sh_n[kThreads / 32], sh_mean[kThreads / 32], sh_m2[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  s = warp_merge(s);
  if (lane == 0) {
    sh_n[warp] = s.n;
    sh_mean[warp] = s.mean;
    sh_m2[warp] = s.m2;
  }
  __syncthreads();
  if (warp == 0) {
    Stats t{0, 0, 0};
    if (lane < kThreads / 32) t = Stats{sh_n[lane], sh_mean[lane], sh_m2[lane]};
    s = warp_merge(t);
  }
  __syncthreads();  // shared memory is free for the next call
  return s;
}

// Where a block's result goes: straight to the sink when one block covers the output
// (S == 1), else to the partials that a merge kernel combines (T: Stats here, the
// backward's sums in training.cu).
template <class Sink, class T>
__device__ __forceinline__ void emit(const Sink& sink, T* partial, long long S, long long o, long long s,
                                     const T& t) {
  if (S == 1) sink(o, t);
  else partial[o * S + s] = t;
}

// ---- segment plan: x is [R1, K, L], outputs k, reduce over r and l --------------------
// Work item b = k * S + s covers the logical range m = r * L + l in [s * chunk, ...).
// With VEC = 4, L % 4 == 0 and x 16-byte aligned, so every float4 lies in one segment
// and is aligned. (r, l) advance by (rstep, lstep) with one carry (lstep < L).
struct SegmentParams {
  const float* x;
  long long R1, K, L, S, chunk;  // chunk % 4 == 0
  long long rstep, lstep;        // step = kThreads * VEC = rstep * L + lstep
  Stats* partial;                // [K * S] when S > 1
};

template <int VEC, class Sink>
__global__ void __launch_bounds__(kThreads) segment_stats_kernel(SegmentParams p, Sink sink) {
  const long long M = p.R1 * p.L;
  const long long items = p.K * p.S;
  for (long long b = blockIdx.x; b < items; b += gridDim.x) {
    const long long k = b / p.S, s = b - k * p.S;
    const long long m0 = s * p.chunk;
    const long long m1 = min(M, m0 + p.chunk);
    Acc acc;
    acc_init(acc);
    long long m = m0 + static_cast<long long>(threadIdx.x) * VEC;
    long long r = m / p.L, l = m - r * p.L;
    for (; m < m1; m += static_cast<long long>(kThreads) * VEC) {
      const float* q = p.x + (r * p.K + k) * p.L + l;
      if (VEC == 4) acc_add4(acc, __ldg(reinterpret_cast<const float4*>(q)));
      else acc_add(acc, __ldg(q));
      l += p.lstep;
      r += p.rstep;
      if (l >= p.L) {
        l -= p.L;
        r += 1;
      }
    }
    const Stats t = block_merge(acc_finish(acc));
    if (threadIdx.x == 0) emit(sink, p.partial, p.S, k, s, t);
  }
}

// ---- rows: x is [K, L] with short rows; one warp per row ------------------------------
template <int VEC, class Sink>
__global__ void __launch_bounds__(kThreads) row_stats_kernel(const float* __restrict__ x, long long K, long long L,
                                                             Sink sink) {
  const int lane = threadIdx.x & 31;
  const long long warps = static_cast<long long>(gridDim.x) * (kThreads / 32);
  for (long long row = static_cast<long long>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5); row < K;
       row += warps) {
    const float* base = x + row * L;
    Acc acc;
    acc_init(acc);
    for (long long l = static_cast<long long>(lane) * VEC; l < L; l += 32 * VEC) {
      if (VEC == 4) acc_add4(acc, __ldg(reinterpret_cast<const float4*>(base + l)));
      else acc_add(acc, __ldg(base + l));
    }
    const Stats t = warp_merge(acc_finish(acc));
    if (lane == 0) sink(row, t);
  }
}

// ---- columns: x is [K0, R, C], outputs o = k0 * C + c, reduce over r ------------------
// Block = TX x TY threads (TX * TY = kThreads); thread (tx, ty) owns VEC adjacent columns
// and rows r0 + ty, r0 + ty + TY, ... of its split, loading kColumnUnroll rows before
// accumulating any (independent loads in flight hide DRAM latency); then a tree over ty
// in shared memory.
struct ColumnParams {
  const float* x;
  long long K0, R, C, S, rows_per_split;
  int TX, TY;
  Stats* partial;  // [(K0 * C) * S] when S > 1
};

template <int VEC>
__device__ __forceinline__ void column_add(Acc* acc, const float* q) {
  if (VEC == 4) {
    const float4 v4 = __ldg(reinterpret_cast<const float4*>(q));
    acc_add(acc[0], v4.x);
    acc_add(acc[VEC > 1 ? 1 : 0], v4.y);
    acc_add(acc[VEC > 2 ? 2 : 0], v4.z);
    acc_add(acc[VEC > 3 ? 3 : 0], v4.w);
  } else {
    acc_add(acc[0], __ldg(q));
  }
}

template <int VEC>
__device__ __forceinline__ void column_accumulate(Acc* acc, const float* x, long long row_stride, long long r,
                                                  long long r1, long long step) {
  for (; r + (kColumnUnroll - 1) * step < r1; r += kColumnUnroll * step) {
    float v[kColumnUnroll][VEC];
#pragma unroll
    for (int u = 0; u < kColumnUnroll; ++u) {
      const float* q = x + (r + u * step) * row_stride;
      if (VEC == 4) {
        const float4 v4 = __ldg(reinterpret_cast<const float4*>(q));
        v[u][0] = v4.x;
        v[u][VEC > 1 ? 1 : 0] = v4.y;
        v[u][VEC > 2 ? 2 : 0] = v4.z;
        v[u][VEC > 3 ? 3 : 0] = v4.w;
      } else {
        v[u][0] = __ldg(q);
      }
    }
#pragma unroll
    for (int u = 0; u < kColumnUnroll; ++u)
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc_add(acc[e], v[u][e]);
  }
  for (; r < r1; r += step) column_add<VEC>(acc, x + r * row_stride);
}

template <int VEC, class Sink>
__global__ void __launch_bounds__(kThreads) column_stats_kernel(ColumnParams p, Sink sink) {
  __shared__ Stats sh[kThreads * VEC];
  const int tx = threadIdx.x % p.TX, ty = threadIdx.x / p.TX;
  const long long c = (static_cast<long long>(blockIdx.x) * p.TX + tx) * VEC;
  const long long s = blockIdx.y, k0 = blockIdx.z;
  const long long r0 = s * p.rows_per_split;
  const long long r1 = min(p.R, r0 + p.rows_per_split);
  const bool col_ok = c < p.C;  // with VEC = 4, C % 4 == 0, so c + 3 < C too
  Acc acc[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) acc_init(acc[v]);
  if (col_ok) column_accumulate<VEC>(acc, p.x + k0 * p.R * p.C + c, p.C, r0 + ty, r1, p.TY);
#pragma unroll
  for (int v = 0; v < VEC; ++v) sh[(ty * p.TX + tx) * VEC + v] = acc_finish(acc[v]);
  __syncthreads();
  // Tree over ty (TY is a power of two): fixed pairing, deterministic.
  for (int h = p.TY / 2; h > 0; h >>= 1) {
    if (ty < h) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        Stats a = sh[(ty * p.TX + tx) * VEC + v];
        merge(a, sh[((ty + h) * p.TX + tx) * VEC + v]);
        sh[(ty * p.TX + tx) * VEC + v] = a;
      }
    }
    __syncthreads();
  }
  if (ty == 0 && col_ok) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) emit(sink, p.partial, p.S, k0 * p.C + c + v, s, sh[tx * VEC + v]);
  }
}

// ---- general: any alternation of kept and reduced groups -----------------------------
struct Groups {
  int n;
  long long size[kMaxGroups];
  long long stride[kMaxGroups];
};

__device__ __forceinline__ long long group_offset(const Groups& g, long long i) {
  long long off = 0;
  for (int k = g.n - 1; k >= 0; --k) {
    const long long q = i / g.size[k];
    off += (i - q * g.size[k]) * g.stride[k];
    i = q;
  }
  return off;
}

struct GeneralParams {
  const float* x;
  long long P, J, S, chunk;  // outputs, reduced elements per output, splits, chunk
  Stats* partial;
};

template <class Sink>
__global__ void __launch_bounds__(kThreads) general_stats_kernel(GeneralParams p, Groups kept, Groups red,
                                                                 Sink sink) {
  const long long items = p.P * p.S;
  for (long long b = blockIdx.x; b < items; b += gridDim.x) {
    const long long o = b / p.S, s = b - o * p.S;
    const float* base = p.x + group_offset(kept, o);
    const long long j1 = min(p.J, (s + 1) * p.chunk);
    Acc acc;
    acc_init(acc);
    for (long long j = s * p.chunk + threadIdx.x; j < j1; j += kThreads) acc_add(acc, __ldg(base + group_offset(red, j)));
    const Stats t = block_merge(acc_finish(acc));
    if (threadIdx.x == 0) emit(sink, p.partial, p.S, o, s, t);
  }
}

// ---- second stage: one warp per output merges its S partials ---------------------------
// Lane l merges partials l, l + 32, l + 64, ... left to right, then the warp's shuffle
// tree combines the lanes: a fixed order for every S, so the result is deterministic, and
// P·32 threads share the work instead of one thread per output walking all S partials.
template <class Sink>
__global__ void __launch_bounds__(kThreads) merge_partials_kernel(const Stats* __restrict__ partial, long long P,
                                                                  long long S, Sink sink) {
  const int lane = threadIdx.x & 31;
  const long long warps = static_cast<long long>(gridDim.x) * (kThreads / 32);
  for (long long o = static_cast<long long>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5); o < P; o += warps) {
    Stats t{0, 0, 0};
    for (long long s = lane; s < S; s += 32) merge(t, partial[o * S + s]);
    t = warp_merge(t);
    if (lane == 0) sink(o, t);
  }
}

// Outputs of an empty reduction: the sink sees n = 0.
template <class Sink>
__global__ void __launch_bounds__(kThreads) empty_stats_kernel(long long P, Sink sink) {
  for (long long o = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; o < P;
       o += static_cast<long long>(gridDim.x) * kThreads)
    sink(o, Stats{0, 0, 0});
}

inline long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }

// Splits per output so that the grid fills the GPU, with at least `min_per_split`
// elements per split. 1 when the outputs alone fill it.
inline long long choose_splits(long long outputs_blocks, long long per_output, long long min_per_split,
                               long long max_splits) {
  const long long sms = device_info().multiprocessors > 0 ? device_info().multiprocessors : 80;
  const long long want = sms * 8;  // 8 resident blocks of 256 threads per SM
  long long S = ceil_div(want, std::max<long long>(1, outputs_blocks));
  S = std::min(S, std::max<long long>(1, per_output / min_per_split));
  S = std::min(S, max_splits);
  return std::max<long long>(1, S);
}

template <class Sink>
Status launch_merge(const Stats* partial, long long P, long long S, const Sink& sink, cudaStream_t st,
                    const char* op) {
  merge_partials_kernel<Sink><<<grid_for(P * 32, kThreads), kThreads, 0, st>>>(partial, P, S, sink);
  return check_launch(op, "merge_partials_kernel");
}

struct GroupSpec {
  long long size;
  long long stride;
  bool reduced;
};

// Collapses exactly as cpu_moments: drops size-1 axes, merges neighbours of one kind.
inline std::vector<GroupSpec> collapse_groups(const Shape& shape, const std::vector<bool>& reduce) {
  std::vector<GroupSpec> gs;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (!gs.empty() && gs.back().reduced == static_cast<bool>(reduce[d])) gs.back().size *= shape[d];
    else gs.push_back({shape[d], 0, static_cast<bool>(reduce[d])});
  }
  if (gs.empty()) gs.push_back({1, 0, false});
  long long str = 1;
  for (size_t k = gs.size(); k-- > 0;) {
    gs[k].stride = str;
    str *= gs[k].size;
  }
  return gs;
}

// Enqueues the statistics of device-resident x over the reduced axes; the sink gets
// every output (kept dims in row-major order) exactly once.
template <class Sink>
Status launch_stats(const Shape& shape, const std::vector<bool>& reduce, const float* x, const Sink& sink,
                    cudaStream_t st, const char* op) {
  const size_t rank = shape.size();
  long long kept_count = 1, red_count = 1;
  for (size_t d = 0; d < rank; ++d) (reduce[d] ? red_count : kept_count) *= shape[d];
  if (kept_count == 0) return Status::Ok();
  if (red_count == 0) {
    empty_stats_kernel<Sink><<<grid_for(kept_count, kThreads), kThreads, 0, st>>>(kept_count, sink);
    return check_launch(op, "empty_stats_kernel");
  }
  const std::vector<GroupSpec> gs = collapse_groups(shape, reduce);
  const size_t G = gs.size();
  const bool vec_ok = aligned16(x);
  // Returned to the cache on scope exit; stream order keeps it valid for the kernels.
  Scratch partial;

  // Segment plans: [L], [K L], [R1 K L] (last group reduced, at most one kept group).
  const bool seg = gs.back().reduced &&
                   (G == 1 || (G == 2 && !gs[0].reduced) || (G == 3 && gs[0].reduced && !gs[1].reduced));
  if (seg) {
    const long long L = gs.back().size;
    const long long K = G >= 2 ? gs[G - 2].size : 1;
    const long long R1 = G == 3 ? gs[0].size : 1;
    const bool vec = vec_ok && L % 4 == 0;
    if (R1 == 1 && L <= 2048 && K >= 1024) {
      // Short rows, many of them: a warp per row keeps every lane busy.
      const unsigned grid = grid_for(K * 32, kThreads);
      if (vec) row_stats_kernel<4, Sink><<<grid, kThreads, 0, st>>>(x, K, L, sink);
      else row_stats_kernel<1, Sink><<<grid, kThreads, 0, st>>>(x, K, L, sink);
      return check_launch(op, "row_stats_kernel");
    }
    SegmentParams p;
    p.x = x;
    p.R1 = R1;
    p.K = K;
    p.L = L;
    const long long M = R1 * L;
    p.S = choose_splits(K, M, 16 * kThreads, 65536);
    p.chunk = ceil_div(ceil_div(M, p.S), 4) * 4;
    p.S = ceil_div(M, p.chunk);  // no empty splits
    const long long step = static_cast<long long>(kThreads) * (vec ? 4 : 1);
    p.rstep = step / L;
    p.lstep = step % L;
    p.partial = nullptr;
    if (p.S > 1) {
      BN_TRY(partial.alloc(static_cast<size_t>(K * p.S) * sizeof(Stats), op));
      p.partial = partial.as<Stats>();
    }
    const unsigned grid = static_cast<unsigned>(std::min<long long>(K * p.S, 1 << 30));
    if (vec) segment_stats_kernel<4, Sink><<<grid, kThreads, 0, st>>>(p, sink);
    else segment_stats_kernel<1, Sink><<<grid, kThreads, 0, st>>>(p, sink);
    BN_TRY(check_launch(op, "segment_stats_kernel"));
    if (p.S > 1) BN_TRY(launch_merge(p.partial, K, p.S, sink, st, op));
    return Status::Ok();
  }

  // Column plans: [R C], [K0 R C] (last group kept).
  const bool col = !gs.back().reduced && ((G == 2 && gs[0].reduced) || (G == 3 && !gs[0].reduced && gs[1].reduced));
  if (col && (G == 2 || gs[0].size <= 65535)) {
    ColumnParams p;
    p.x = x;
    p.C = gs.back().size;
    p.R = gs[G - 2].size;
    p.K0 = G == 3 ? gs[0].size : 1;
    const bool vec = vec_ok && p.C % 4 == 0;
    const int V = vec ? 4 : 1;
    const long long lanes = ceil_div(p.C, V);
    int TX = 1;
    while (TX < 32 && TX < lanes) TX *= 2;
    p.TX = TX;
    p.TY = kThreads / TX;
    const long long col_blocks = ceil_div(lanes, TX);
    // At least 16 rows per thread (kColumnUnroll loads in flight for most of them).
    p.S = choose_splits(col_blocks * p.K0, p.R, static_cast<long long>(p.TY) * 16, 65535);
    p.rows_per_split = ceil_div(p.R, p.S);
    p.S = ceil_div(p.R, p.rows_per_split);
    p.partial = nullptr;
    const long long P = p.K0 * p.C;
    if (p.S > 1) {
      BN_TRY(partial.alloc(static_cast<size_t>(P * p.S) * sizeof(Stats), op));
      p.partial = partial.as<Stats>();
    }
    if (col_blocks <= 0x7fffffffLL) {
      const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(p.S), static_cast<unsigned>(p.K0));
      if (vec) column_stats_kernel<4, Sink><<<grid, kThreads, 0, st>>>(p, sink);
      else column_stats_kernel<1, Sink><<<grid, kThreads, 0, st>>>(p, sink);
      BN_TRY(check_launch(op, "column_stats_kernel"));
      if (p.S > 1) BN_TRY(launch_merge(p.partial, P, p.S, sink, st, op));
      return Status::Ok();
    }
  }

  // General fallback.
  Groups kept{}, red{};
  for (const GroupSpec& g : gs) {
    Groups& t = g.reduced ? red : kept;
    t.size[t.n] = g.size;
    t.stride[t.n] = g.stride;
    ++t.n;
  }
  GeneralParams p;
  p.x = x;
  p.P = kept_count;
  p.J = red_count;
  p.S = choose_splits(p.P, p.J, 16 * kThreads, 65536);
  p.chunk = ceil_div(p.J, p.S);
  p.S = ceil_div(p.J, p.chunk);
  p.partial = nullptr;
  if (p.S > 1) {
    BN_TRY(partial.alloc(static_cast<size_t>(p.P * p.S) * sizeof(Stats), op));
    p.partial = partial.as<Stats>();
  }
  const unsigned grid = static_cast<unsigned>(std::min<long long>(p.P * p.S, 1 << 30));
  general_stats_kernel<Sink><<<grid, kThreads, 0, st>>>(p, kept, red, sink);
  BN_TRY(check_launch(op, "general_stats_kernel"));
  if (p.S > 1) BN_TRY(launch_merge(p.partial, p.P, p.S, sink, st, op));
  return Status::Ok();
}

}  // namespace stats
}  // namespace cuda
}  // namespace bn
