// CUDA moments over the same collapsed (kept/reduced group) plans as the CPU path.
//
// Numerics: each thread sums its elements' deviations from a shift (its own first
// element) in float64, s1 = Σd and s2 = Σd², and turns them into (n, mean, M2) =
// (n, shift + s1/n, s2 − s1²/n). With the shift inside the data the subtraction loses
// nothing that float64 cannot afford (the E[x²]−E[x]² failure needs float32 and a shift
// far from the data). Partial results are merged with Chan et al.'s pairwise update, in
// float64, in a fixed tree order inside warps and blocks and a fixed left-to-right order
// across blocks (two-stage grid reduction): no atomics, so results are bit-identical run
// after run. float64 per element costs about 4 DP operations per 4 bytes read, well
// inside the DP throughput of data-center GPUs (A100/H100/H200); on consumer cards with
// 1/64-rate fp64 these kernels are compute-bound instead (correct, slower).
//
// Plans (g = collapsed groups, R = reduced, K = kept):
//   [L]R, [K L]K R, [R1 K L]R K R  -> segment_stats_kernel (block per output and split)
//   [K L] with short rows          -> row_stats_kernel (warp per row)
//   [R C], [K0 R C]                -> column_stats_kernel (columns contiguous, NHWC)
//   anything else                  -> general_stats_kernel (index arithmetic per element)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.cuh"

namespace bn {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxGroups = 64;  // rank limit checked by the binding

struct Stats {
  double n, mean, m2;
};

// Per-thread accumulator: deviations from the first element seen.
struct Acc {
  double shift, s1, s2;
  float s0;  // plain float32 sum: only used when the data has Inf/NaN (see finish)
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
__device__ Stats acc_finish(const Acc& a) {
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
__device__ Stats block_merge(Stats s) {
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

// The CPU's write_result: NaN statistics for an empty reduction or n <= correction.
__device__ __forceinline__ void write_result(const Stats& s, double correction, float* mean, float* var,
                                             long long o) {
  const double nan_ = nan("");
  const double denom = s.n - correction;
  mean[o] = static_cast<float>(s.n > 0 ? s.mean : nan_);
  var[o] = static_cast<float>(s.n > 0 && denom > 0 ? s.m2 / denom : nan_);
}

__device__ __forceinline__ void store(Stats* partial, long long i, const Stats& s) { partial[i] = s; }

// ---- segment plan: x is [R1, K, L], outputs k, reduce over r and l --------------------
// Work item b = k * S + s covers the logical range m = r * L + l in [s * chunk, ...).
// With VEC = 4, L % 4 == 0 and x 16-byte aligned, so every float4 lies in one segment
// and is aligned. (r, l) advance by (rstep, lstep) with one carry (lstep < L).
struct SegmentParams {
  const float* x;
  long long R1, K, L, S, chunk;  // chunk % 4 == 0
  long long rstep, lstep;        // step = kThreads * VEC = rstep * L + lstep
  Stats* partial;                // [K * S] when S > 1
  float* mean;
  float* var;
  double correction;
};

template <int VEC>
__global__ void __launch_bounds__(kThreads) segment_stats_kernel(SegmentParams p) {
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
    if (threadIdx.x == 0) {
      if (p.S == 1) write_result(t, p.correction, p.mean, p.var, k);
      else store(p.partial, b, t);
    }
  }
}

// ---- rows: x is [K, L] with short rows; one warp per row ------------------------------
template <int VEC>
__global__ void __launch_bounds__(kThreads) row_stats_kernel(const float* __restrict__ x, long long K, long long L,
                                                             float* mean, float* var, double correction) {
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
    if (lane == 0) write_result(t, correction, mean, var, row);
  }
}

// ---- columns: x is [K0, R, C], outputs o = k0 * C + c, reduce over r ------------------
// Block = TX x TY threads (TX * TY = kThreads); thread (tx, ty) owns VEC adjacent columns
// and rows r0 + ty, r0 + ty + TY, ... of its split; then a tree over ty in shared memory.
struct ColumnParams {
  const float* x;
  long long K0, R, C, S, rows_per_split;
  int TX, TY;
  Stats* partial;  // [(K0 * C) * S] when S > 1
  float* mean;
  float* var;
  double correction;
};

template <int VEC>
__global__ void __launch_bounds__(kThreads) column_stats_kernel(ColumnParams p) {
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
  if (col_ok) {
    for (long long r = r0 + ty; r < r1; r += p.TY) {
      const float* q = p.x + (k0 * p.R + r) * p.C + c;
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
  }
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
    for (int v = 0; v < VEC; ++v) {
      const long long o = k0 * p.C + c + v;
      if (p.S == 1) write_result(sh[tx * VEC + v], p.correction, p.mean, p.var, o);
      else store(p.partial, o * p.S + s, sh[tx * VEC + v]);
    }
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
  float* mean;
  float* var;
  double correction;
};

__global__ void __launch_bounds__(kThreads) general_stats_kernel(GeneralParams p, Groups kept, Groups red) {
  const long long items = p.P * p.S;
  for (long long b = blockIdx.x; b < items; b += gridDim.x) {
    const long long o = b / p.S, s = b - o * p.S;
    const float* base = p.x + group_offset(kept, o);
    const long long j1 = min(p.J, (s + 1) * p.chunk);
    Acc acc;
    acc_init(acc);
    for (long long j = s * p.chunk + threadIdx.x; j < j1; j += kThreads) acc_add(acc, __ldg(base + group_offset(red, j)));
    const Stats t = block_merge(acc_finish(acc));
    if (threadIdx.x == 0) {
      if (p.S == 1) write_result(t, p.correction, p.mean, p.var, o);
      else store(p.partial, b, t);
    }
  }
}

// ---- second stage: merge the S partials of each output left to right ----------------
__global__ void __launch_bounds__(kThreads) finalize_stats_kernel(const Stats* __restrict__ partial, long long P,
                                                                  long long S, float* mean, float* var,
                                                                  double correction) {
  for (long long o = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; o < P;
       o += static_cast<long long>(gridDim.x) * kThreads) {
    Stats t = partial[o * S];
    for (long long s = 1; s < S; ++s) merge(t, partial[o * S + s]);
    write_result(t, correction, mean, var, o);
  }
}

__global__ void __launch_bounds__(kThreads) fill_nan_kernel(float* a, float* b, long long n) {
  const float v = nanf("");
  for (long long i = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * kThreads) {
    a[i] = v;
    b[i] = v;
  }
}

long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }

// Splits per output so that the grid fills the GPU, with at least `min_per_split`
// elements per split. 1 when the outputs alone fill it.
long long choose_splits(long long outputs_blocks, long long per_output, long long min_per_split, long long max_splits) {
  const long long sms = device_info().multiprocessors > 0 ? device_info().multiprocessors : 80;
  const long long want = sms * 8;  // 8 resident blocks of 256 threads per SM
  long long S = ceil_div(want, std::max<long long>(1, outputs_blocks));
  S = std::min(S, std::max<long long>(1, per_output / min_per_split));
  S = std::min(S, max_splits);
  return std::max<long long>(1, S);
}

struct GroupSpec {
  long long size;
  long long stride;
  bool reduced;
};

// Enqueues the kernels for device-resident x/mean/var.
Status launch_moments(const MomentsArgs& a, const float* x, float* mean, float* var, cudaStream_t st) {
  const char* op = "moments";
  const size_t rank = a.shape.size();
  long long kept_count = 1, red_count = 1;
  for (size_t d = 0; d < rank; ++d) (a.reduce[d] ? red_count : kept_count) *= a.shape[d];
  if (kept_count == 0) return Status::Ok();
  if (red_count == 0) {
    fill_nan_kernel<<<grid_for(kept_count, kThreads), kThreads, 0, st>>>(mean, var, kept_count);
    return check_launch(op, "fill_nan_kernel");
  }
  // Collapse exactly as cpu_moments: drop size-1 axes, merge neighbours of one kind.
  std::vector<GroupSpec> gs;
  for (size_t d = 0; d < rank; ++d) {
    if (a.shape[d] == 1) continue;
    if (!gs.empty() && gs.back().reduced == static_cast<bool>(a.reduce[d])) gs.back().size *= a.shape[d];
    else gs.push_back({a.shape[d], 0, static_cast<bool>(a.reduce[d])});
  }
  if (gs.empty()) gs.push_back({1, 0, false});
  long long str = 1;
  for (size_t k = gs.size(); k-- > 0;) {
    gs[k].stride = str;
    str *= gs[k].size;
  }
  const double corr = a.correction;
  const size_t G = gs.size();
  const bool vec_ok = aligned16(x);
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
      if (vec) row_stats_kernel<4><<<grid, kThreads, 0, st>>>(x, K, L, mean, var, corr);
      else row_stats_kernel<1><<<grid, kThreads, 0, st>>>(x, K, L, mean, var, corr);
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
    p.correction = corr;
    p.mean = mean;
    p.var = var;
    p.partial = nullptr;
    if (p.S > 1) {
      BN_TRY(partial.alloc(static_cast<size_t>(K * p.S) * sizeof(Stats), op));
      p.partial = partial.as<Stats>();
    }
    const unsigned grid = static_cast<unsigned>(std::min<long long>(K * p.S, 1 << 30));
    if (vec) segment_stats_kernel<4><<<grid, kThreads, 0, st>>>(p);
    else segment_stats_kernel<1><<<grid, kThreads, 0, st>>>(p);
    BN_TRY(check_launch(op, "segment_stats_kernel"));
    if (p.S > 1) {
      finalize_stats_kernel<<<grid_for(K, kThreads), kThreads, 0, st>>>(p.partial, K, p.S, mean, var, corr);
      BN_TRY(check_launch(op, "finalize_stats_kernel"));
    }
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
    p.S = choose_splits(col_blocks * p.K0, p.R, static_cast<long long>(p.TY) * 16, 65535);
    p.rows_per_split = ceil_div(p.R, p.S);
    p.S = ceil_div(p.R, p.rows_per_split);
    p.correction = corr;
    p.mean = mean;
    p.var = var;
    p.partial = nullptr;
    const long long P = p.K0 * p.C;
    if (p.S > 1) {
      BN_TRY(partial.alloc(static_cast<size_t>(P * p.S) * sizeof(Stats), op));
      p.partial = partial.as<Stats>();
    }
    if (col_blocks <= 0x7fffffffLL) {
      const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(p.S), static_cast<unsigned>(p.K0));
      if (vec) column_stats_kernel<4><<<grid, kThreads, 0, st>>>(p);
      else column_stats_kernel<1><<<grid, kThreads, 0, st>>>(p);
      BN_TRY(check_launch(op, "column_stats_kernel"));
      if (p.S > 1) {
        finalize_stats_kernel<<<grid_for(P, kThreads), kThreads, 0, st>>>(p.partial, P, p.S, mean, var, corr);
        BN_TRY(check_launch(op, "finalize_stats_kernel"));
      }
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
  p.correction = corr;
  p.mean = mean;
  p.var = var;
  p.partial = nullptr;
  if (p.S > 1) {
    BN_TRY(partial.alloc(static_cast<size_t>(p.P * p.S) * sizeof(Stats), op));
    p.partial = partial.as<Stats>();
  }
  const unsigned grid = static_cast<unsigned>(std::min<long long>(p.P * p.S, 1 << 30));
  general_stats_kernel<<<grid, kThreads, 0, st>>>(p, kept, red);
  BN_TRY(check_launch(op, "general_stats_kernel"));
  if (p.S > 1) {
    finalize_stats_kernel<<<grid_for(p.P, kThreads), kThreads, 0, st>>>(p.partial, p.P, p.S, mean, var, corr);
    BN_TRY(check_launch(op, "finalize_stats_kernel"));
  }
  return Status::Ok();
}

}  // namespace

Status moments(const MomentsArgs& a) {
  const char* op = "moments";
  cudaStream_t st;
  BN_TRY(get_stream(&st, op));
  if (a.mem == Memory::kDevice) return launch_moments(a, a.x, a.mean, a.variance, st);
  // Host arrays: copy in, compute, copy out.
  int64_t kept = 1;
  for (size_t d = 0; d < a.shape.size(); ++d)
    if (!a.reduce[d]) kept *= a.shape[d];
  const size_t n = static_cast<size_t>(numel(a.shape));
  DeviceOperand x;
  BN_TRY(to_device(a.x, Memory::kHost, n, &x, op));
  Scratch out;
  BN_TRY(out.alloc(2 * static_cast<size_t>(kept) * sizeof(float), op));
  float* mean = out.as<float>();
  float* var = mean + kept;
  BN_TRY(launch_moments(a, x.p, mean, var, st));
  BN_TRY(copy_to_host(a.mean, mean, static_cast<size_t>(kept) * sizeof(float), op));
  BN_TRY(copy_to_host(a.variance, var, static_cast<size_t>(kept) * sizeof(float), op));
  return Status::Ok();
}

}  // namespace cuda
}  // namespace bn
