// CPU moments: per-output mean and (corrected) variance over any set of axes.
//
// Numerics: every statistic is built from fixed-size "pieces" of at most kPiece
// elements. A piece is summarized exactly enough by a two-pass computation in float64
// while it sits in cache (mean first, then the corrected sum of squared deviations,
// Chan/Golub/LeVeque's "corrected two-pass"), and pieces are combined with Chan's
// pairwise update in a fixed left-to-right order. So memory is read once, the
// E[x²]−E[x]² cancellation never happens, and the bits depend only on the shape —
// never on the thread count (the parallel strategy changes, the arithmetic does not).
#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include <new>
#include <vector>

#include "backend_api/ops.h"
#include "simd.h"
#include "threadpool.h"

namespace bn {
namespace {

constexpr int64_t kPiece = 4096;    // elements per piece: the second pass reads from L1
constexpr int64_t kColTile = 512;   // columns per tile: accumulators stay in L1
constexpr int kLanes = 16;          // independent accumulators in contiguous sums
constexpr int kBlock = 32;          // columns whose accumulators live in registers

// GCC vector extensions: each BN_CLONES clone lowers them to its own ISA (AVX-512, AVX2,
// SSE2) with identical per-lane arithmetic.
typedef float v8f __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));

__attribute__((always_inline)) inline v8d load8(const float* p) {
  v8f f;
  std::memcpy(&f, p, sizeof f);
  return __builtin_convertvector(f, v8d);
}
__attribute__((always_inline)) inline v8d loadd(const double* p) {
  v8d d;
  std::memcpy(&d, p, sizeof d);
  return d;
}
__attribute__((always_inline)) inline void stored(double* p, v8d v) { std::memcpy(p, &v, sizeof v); }

// Chan et al. (1979) pairwise update of (n, mean, M2) with (nb, meanb, m2b).
inline void chan_merge(double& n, double& mean, double& m2, double nb, double meanb, double m2b) {
  if (nb == 0) return;
  if (n == 0) {
    n = nb; mean = meanb; m2 = m2b;
    return;
  }
  const double nab = n + nb;
  const double delta = meanb - mean;
  // With an infinite mean on one side, delta is ±Inf or NaN; the weighted sum keeps TF's
  // answer (mean = ±Inf, NaN only for +Inf with −Inf). M2 is NaN there either way.
  mean = std::isfinite(delta) ? mean + delta * (nb / nab) : mean * (n / nab) + meanb * (nb / nab);
  m2 += m2b + delta * delta * (n * nb / nab);
  n = nab;
}

// The same update for w columns that share their counts (na, nb): the factors are
// computed once, so the per-column arithmetic is identical to chan_merge's.
BN_CLONES void chan_merge_columns(double na, double nb, int64_t w, double* __restrict mean,
                                  double* __restrict m2, const double* __restrict meanb,
                                  const double* __restrict m2b) {
  if (na == 0) {
    std::memcpy(mean, meanb, sizeof(double) * static_cast<size_t>(w));
    std::memcpy(m2, m2b, sizeof(double) * static_cast<size_t>(w));
    return;
  }
  const double nab = na + nb, f1 = nb / nab, f2 = na * nb / nab;
  const double f0 = na / nab;
  for (int64_t c = 0; c < w; ++c) {
    const double delta = meanb[c] - mean[c];
    mean[c] = std::isfinite(delta) ? mean[c] + delta * f1 : mean[c] * f0 + meanb[c] * f1;  // see chan_merge
    m2[c] += m2b[c] + delta * delta * f2;
  }
}

// Lane-wise sums in a fixed order, so the vectorized and scalar clones agree bit for bit.
inline double combine_lanes(const double* acc) {
  double t[kLanes];
  std::memcpy(t, acc, sizeof t);
  for (int w = kLanes / 2; w >= 1; w >>= 1)
    for (int k = 0; k < w; ++k) t[k] += t[k + w];
  return t[0];
}

// acc[k] += x[i] for i ≡ k (mod 16), over one contiguous run.
BN_CLONES void lane_sum(const float* __restrict x, int64_t n, double* __restrict acc) {
  v8d a0 = loadd(acc), a1 = loadd(acc + 8);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    a0 += load8(x + i);
    a1 += load8(x + i + 8);
  }
  stored(acc, a0);
  stored(acc + 8, a1);
  for (int k = 0; i < n; ++i, ++k) acc[k] += static_cast<double>(x[i]);
}

// sd[k] += d, sq[k] += d² with d = x[i] − mean, lanes as in lane_sum.
BN_CLONES void lane_dev(const float* __restrict x, int64_t n, double mean, double* __restrict sd,
                        double* __restrict sq) {
  v8d s0 = loadd(sd), s1 = loadd(sd + 8), q0 = loadd(sq), q1 = loadd(sq + 8);
  const v8d m = {mean, mean, mean, mean, mean, mean, mean, mean};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const v8d d0 = load8(x + i) - m, d1 = load8(x + i + 8) - m;
    s0 += d0;
    s1 += d1;
    q0 += d0 * d0;
    q1 += d1 * d1;
  }
  stored(sd, s0);
  stored(sd + 8, s1);
  stored(sq, q0);
  stored(sq + 8, q1);
  for (int k = 0; i < n; ++i, ++k) {
    const double d = static_cast<double>(x[i]) - mean;
    sd[k] += d;
    sq[k] += d * d;
  }
}

// Two-pass statistics of kBlock adjacent columns over nr rows, accumulators in registers.
// Column c's result: mean[c], m2[c] (corrected two-pass).
BN_CLONES void col_block_stats(const float* const* __restrict rows, int64_t nr, int64_t col,
                               double* __restrict mean, double* __restrict m2) {
  v8d s0 = {}, s1 = {}, s2 = {}, s3 = {};
  for (int64_t r = 0; r < nr; ++r) {
    const float* p = rows[r] + col;
    s0 += load8(p);
    s1 += load8(p + 8);
    s2 += load8(p + 16);
    s3 += load8(p + 24);
  }
  const double inv = 1.0 / static_cast<double>(nr);
  const v8d vinv = {inv, inv, inv, inv, inv, inv, inv, inv};
  const v8d m0 = s0 * vinv, m1 = s1 * vinv, m2v = s2 * vinv, m3 = s3 * vinv;
  v8d d0 = {}, d1 = {}, d2 = {}, d3 = {}, q0 = {}, q1 = {}, q2 = {}, q3 = {};
  for (int64_t r = 0; r < nr; ++r) {
    const float* p = rows[r] + col;
    const v8d e0 = load8(p) - m0, e1 = load8(p + 8) - m1, e2 = load8(p + 16) - m2v, e3 = load8(p + 24) - m3;
    d0 += e0; d1 += e1; d2 += e2; d3 += e3;
    q0 += e0 * e0; q1 += e1 * e1; q2 += e2 * e2; q3 += e3 * e3;
  }
  const double n = static_cast<double>(nr);
  const v8d vn = {n, n, n, n, n, n, n, n};
  const v8d zero = {};
  const v8d ms[4] = {m0, m1, m2v, m3}, ds[4] = {d0, d1, d2, d3}, qs[4] = {q0, q1, q2, q3};
  for (int k = 0; k < 4; ++k) {
    v8d q = qs[k] - ds[k] * ds[k] / vn;
    q = q < zero ? zero : q;
    stored(m2 + 8 * k, q);
    // mean + Σd/n, unless Σd is not finite (an infinite value: keep the plain mean, as TF)
    const v8d corr = ds[k] / vn, inf = corr - corr;  // 0 where finite, NaN elsewhere
    stored(mean + 8 * k, inf == zero ? ms[k] + corr : ms[k]);
  }
}

// ---- float32 fast path ------------------------------------------------------------
//
// The double-precision kernels above are compute-bound on converts. The fast path does
// the per-element work in float32 and keeps the error analysis of the corrected
// two-pass method: pass 1 only picks a shift c ≈ mean (its rounding does not matter,
// because mean = c + Σd/n and M2 = Σd² − (Σd)²/n hold for any c); pass 2 forms
// d = x − c (exact when x is within a factor 2 of c, Sterbenz) and sums d, d² in float32
// over at most kFlush rows per lane before adding into float64. Worst-case relative error
// of a piece's M2 is then about (kFlush + 2)·2⁻²⁴ ≈ 6e-7. A piece whose float32 result is
// not finite (values near FLT_MAX, where d² overflows) is recomputed in float64.
typedef float v16f __attribute__((vector_size(64)));
constexpr int kFlush = 8;

__attribute__((always_inline)) inline v16f loadf16(const float* p) {
  v16f f;
  std::memcpy(&f, p, sizeof f);
  return f;
}
__attribute__((always_inline)) inline v16f splat16(float v) { return v16f{v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v}; }
__attribute__((always_inline)) inline v8d lo8(v16f v) {
  return __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7), v8d);
}
__attribute__((always_inline)) inline v8d hi8(v16f v) {
  return __builtin_convertvector(__builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15), v8d);
}

// Shift for a run list: Σ x·(1/n) in float32 lanes (no overflow for finite x).
BN_CLONES void lane_shift_sum(const float* __restrict x, int64_t n, float invn, float* __restrict acc) {
  v16f a = loadf16(acc);
  const v16f inv = splat16(invn);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) a += loadf16(x + i) * inv;
  std::memcpy(acc, &a, sizeof a);
  for (int k = 0; i < n; ++i, ++k) acc[k] += x[i] * invn;
}

// sd, sq (16 double lanes each) += Σd, Σd² with d = x − c, flushed every kFlush vectors.
BN_CLONES void lane_dev_fast(const float* __restrict x, int64_t n, float c, double* __restrict sd,
                             double* __restrict sq) {
  v8d s0 = loadd(sd), s1 = loadd(sd + 8), q0 = loadd(sq), q1 = loadd(sq + 8);
  const v16f vc = splat16(c);
  int64_t i = 0;
  while (i + 16 <= n) {
    v16f d = {}, q = {};
    for (int k = 0; k < kFlush && i + 16 <= n; ++k, i += 16) {
      const v16f e = loadf16(x + i) - vc;
      d += e;
      q += e * e;
    }
    s0 += lo8(d);
    s1 += hi8(d);
    q0 += lo8(q);
    q1 += hi8(q);
  }
  stored(sd, s0);
  stored(sd + 8, s1);
  stored(sq, q0);
  stored(sq + 8, q1);
  for (int k = 0; i < n; ++i, ++k) {
    const float e = x[i] - c;
    sd[k] += static_cast<double>(e);
    sq[k] += static_cast<double>(e * e);
  }
}

// Row-streaming column statistics (float32 fast path): per-column accumulators sit in L1
// and every row is read front to back, which keeps the hardware prefetchers effective
// for any row length. Same error analysis as above.
BN_CLONES void rows_shift(const float* const* __restrict rows, int64_t nr, int64_t w, float invn,
                          float* __restrict c) {
  std::fill(c, c + w, 0.0f);
  for (int64_t r = 0; r < nr; ++r) {
    const float* x = rows[r];
#pragma GCC ivdep
    for (int64_t j = 0; j < w; ++j) c[j] += x[j] * invn;
  }
}

BN_CLONES void rows_dev(const float* const* __restrict rows, int64_t nr, int64_t w,
                        const float* __restrict c, float* __restrict d, float* __restrict q,
                        double* __restrict D, double* __restrict Q) {
  std::fill(D, D + w, 0.0);
  std::fill(Q, Q + w, 0.0);
  for (int64_t r0 = 0; r0 < nr; r0 += kFlush) {
    const int64_t r1 = std::min(nr, r0 + kFlush);
    std::fill(d, d + w, 0.0f);
    std::fill(q, q + w, 0.0f);
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = rows[r];
#pragma GCC ivdep
      for (int64_t j = 0; j < w; ++j) {
        const float e = x[j] - c[j];
        d[j] += e;
        q[j] += e * e;
      }
    }
    for (int64_t j = 0; j < w; ++j) {
      D[j] += static_cast<double>(d[j]);
      Q[j] += static_cast<double>(q[j]);
    }
  }
}

// Narrow rows (16·NV <= 64 columns, the NHWC hot path): the same two passes with every
// accumulator in registers, so a piece costs one streaming read and one read from L1.
template <int NV>
__attribute__((always_inline)) inline void rows_stats_regs(const float* const* __restrict rows, int64_t col, int64_t nr,
                                                    float invn, float* __restrict c,
                                                    double* __restrict D, double* __restrict Q) {
  const v16f inv = splat16(invn);
  v16f cv[NV] = {};
  for (int64_t r = 0; r < nr; ++r)
    for (int v = 0; v < NV; ++v) cv[v] += loadf16(rows[r] + col + 16 * v) * inv;
  v8d Dv[2 * NV] = {}, Qv[2 * NV] = {};
  for (int64_t r0 = 0; r0 < nr; r0 += kFlush) {
    const int64_t r1 = std::min(nr, r0 + kFlush);
    v16f d[NV] = {}, q[NV] = {};
    for (int64_t r = r0; r < r1; ++r)
      for (int v = 0; v < NV; ++v) {
        const v16f e = loadf16(rows[r] + col + 16 * v) - cv[v];
        d[v] += e;
        q[v] += e * e;
      }
    for (int v = 0; v < NV; ++v) {
      Dv[2 * v] += lo8(d[v]);
      Dv[2 * v + 1] += hi8(d[v]);
      Qv[2 * v] += lo8(q[v]);
      Qv[2 * v + 1] += hi8(q[v]);
    }
  }
  for (int v = 0; v < NV; ++v) std::memcpy(c + 16 * v, &cv[v], sizeof(v16f));
  for (int k = 0; k < 2 * NV; ++k) {
    stored(D + 8 * k, Dv[k]);
    stored(Q + 8 * k, Qv[k]);
  }
}

// Column statistics of one piece: shift c (float32), D = Σd and Q = Σd² (float64).
BN_CLONES void rows_stats(const float* const* rows, int64_t nr, int64_t w, float invn, float* c,
                          float* d, float* q, double* D, double* Q) {
  // 64-column register blocks, then a 16..48-column block, then the memory-accumulator
  // loops for what is left (a row remainder that is not a multiple of 16).
  int64_t j = 0;
  for (; j + 64 <= w; j += 64) rows_stats_regs<4>(rows, j, nr, invn, c + j, D + j, Q + j);
  switch (w - j) {
    case 0: return;
    case 16: return rows_stats_regs<1>(rows, j, nr, invn, c + j, D + j, Q + j);
    case 32: return rows_stats_regs<2>(rows, j, nr, invn, c + j, D + j, Q + j);
    case 48: return rows_stats_regs<3>(rows, j, nr, invn, c + j, D + j, Q + j);
    default: break;
  }
  const float* shifted[kPiece / 2];
  for (int64_t r = 0; r < nr; ++r) shifted[r] = rows[r] + j;
  rows_shift(shifted, nr, w - j, invn, c + j);
  rows_dev(shifted, nr, w - j, c + j, d, q, D + j, Q + j);
}

// max(0, v) that keeps NaN (std::max(0.0, NaN) is 0).
inline double nonneg(double v) { return v < 0 ? 0.0 : v; }

inline bool all_finite(const double* a, const double* b, int64_t w) {
  for (int64_t c = 0; c < w; ++c)
    if (!std::isfinite(a[c]) || !std::isfinite(b[c])) return false;
  return true;
}

// The same statistics for a narrow remainder of w < kBlock columns.
void col_narrow_stats(const float* const* rows, int64_t nr, int64_t col, int64_t w, double* mean,
                      double* m2) {
  double s[kBlock] = {}, d[kBlock] = {}, q[kBlock] = {};
  for (int64_t r = 0; r < nr; ++r)
    for (int64_t c = 0; c < w; ++c) s[c] += static_cast<double>(rows[r][col + c]);
  const double inv = 1.0 / static_cast<double>(nr), n = static_cast<double>(nr);
  for (int64_t c = 0; c < w; ++c) s[c] *= inv;
  for (int64_t r = 0; r < nr; ++r)
    for (int64_t c = 0; c < w; ++c) {
      const double e = static_cast<double>(rows[r][col + c]) - s[c];
      d[c] += e;
      q[c] += e * e;
    }
  for (int64_t c = 0; c < w; ++c) {
    m2[c] = nonneg(q[c] - d[c] * d[c] / n);
    mean[c] = std::isfinite(d[c]) ? s[c] + d[c] / n : s[c];
  }
}

struct Group {
  int64_t size;
  int64_t stride;  // in elements of x
};

// Mixed-radix walk over a list of groups (outermost first): offset() of the current
// index, next() advances by one (last group fastest).
constexpr size_t kMaxGroups = 64;  // rank limit checked by the binding

struct Walker {
  const std::vector<Group>* g;
  int64_t idx[kMaxGroups];
  int64_t off = 0;

  Walker(const std::vector<Group>& groups, int64_t start) : g(&groups) {
    for (size_t k = groups.size(); k-- > 0;) {
      idx[k] = start % groups[k].size;
      start /= groups[k].size;
      off += idx[k] * groups[k].stride;
    }
  }
  void next() {
    for (size_t k = g->size(); k-- > 0;) {
      const Group& gr = (*g)[k];
      off += gr.stride;
      if (++idx[k] < gr.size) return;
      off -= gr.stride * gr.size;
      idx[k] = 0;
    }
  }
};

int64_t offset_of(const std::vector<Group>& groups, int64_t i) {
  int64_t off = 0;
  for (size_t k = groups.size(); k-- > 0;) {
    off += (i % groups[k].size) * groups[k].stride;
    i /= groups[k].size;
  }
  return off;
}

int64_t product(const std::vector<Group>& groups) {
  int64_t p = 1;
  for (const Group& gr : groups) p *= gr.size;
  return p;
}

struct PieceStats {
  double n = 0, mean = 0, m2 = 0;
};

void write_result(const MomentsArgs& a, int64_t o, double n, double mean, double m2) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double denom = n - a.correction;
  a.mean[o] = static_cast<float>(n > 0 ? mean : nan);
  a.variance[o] = static_cast<float>(n > 0 && denom > 0 ? m2 / denom : nan);
  if (a.mean64) {
    a.mean64[o] = n > 0 ? mean : nan;
    a.m2_64[o] = n > 0 ? m2 : nan;
  }
}

// ---- segments: the innermost collapsed group is reduced (NCHW, rows, all-axes) ------
//
// Output o owns J segments of L contiguous floats. Piece k of an output is either a
// slice of one long segment (L >= kPiece) or a run of G whole short segments.
struct SegmentPlan {
  std::vector<Group> kept, red;  // outer kept groups, outer reduced groups
  int64_t L, J, P;
  int64_t slices_per_seg, segs_per_piece, pieces;

  void init() {
    J = product(red);
    P = product(kept);
    if (L >= kPiece) {
      slices_per_seg = (L + kPiece - 1) / kPiece;
      segs_per_piece = 1;
      pieces = J * slices_per_seg;
    } else {
      slices_per_seg = 1;
      segs_per_piece = std::max<int64_t>(1, kPiece / L);
      pieces = (J + segs_per_piece - 1) / segs_per_piece;
    }
  }

  PieceStats piece(const float* x, int64_t o, int64_t k) const {
    const float* base = x + offset_of(kept, o);
    // The list of (pointer, length) runs of this piece, in order.
    int64_t j0, nseg, lo, len;
    if (L >= kPiece) {
      j0 = k / slices_per_seg;
      nseg = 1;
      lo = (k % slices_per_seg) * kPiece;
      len = std::min(kPiece, L - lo);
    } else {
      j0 = k * segs_per_piece;
      nseg = std::min(segs_per_piece, J - j0);
      lo = 0;
      len = L;
    }
    PieceStats st;
    st.n = static_cast<double>(nseg * len);
    // Fast path (float32 per element, see above), float64 if that is not finite.
    float cacc[16] = {};
    {
      Walker w(red, j0);
      const float invn = static_cast<float>(1.0 / st.n);
      for (int64_t s = 0; s < nseg; ++s, w.next()) lane_shift_sum(base + w.off + lo, len, invn, cacc);
    }
    float c = 0;
    for (float v : cacc) c += v;
    double sd[kLanes] = {}, sq[kLanes] = {};
    {
      Walker w(red, j0);
      for (int64_t s = 0; s < nseg; ++s, w.next()) lane_dev_fast(base + w.off + lo, len, c, sd, sq);
    }
    double d = combine_lanes(sd);
    st.mean = static_cast<double>(c);
    st.m2 = combine_lanes(sq) - d * d / st.n;
    if (!std::isfinite(st.m2) || !std::isfinite(d)) {
      double acc[kLanes] = {};
      {
        Walker w(red, j0);
        for (int64_t s = 0; s < nseg; ++s, w.next()) lane_sum(base + w.off + lo, len, acc);
      }
      st.mean = combine_lanes(acc) / st.n;
      std::fill(sd, sd + kLanes, 0.0);
      std::fill(sq, sq + kLanes, 0.0);
      Walker w(red, j0);
      for (int64_t s = 0; s < nseg; ++s, w.next()) lane_dev(base + w.off + lo, len, st.mean, sd, sq);
      d = combine_lanes(sd);
      st.m2 = combine_lanes(sq) - d * d / st.n;
    }
    if (std::isfinite(d)) st.mean += d / st.n;  // mean = shift + Σd/n; else plain mean, as TF
    st.m2 = nonneg(st.m2);
    return st;
  }
};

Status run_segments(const MomentsArgs& a, SegmentPlan& p) {
  p.init();
  const int threads = num_threads();
  if (p.P >= 2 * threads || p.pieces == 1) {
    // Many outputs: each output is folded sequentially by one task.
    parallel_for(static_cast<size_t>(p.P), [&](size_t o) {
      double n = 0, mean = 0, m2 = 0;
      for (int64_t k = 0; k < p.pieces; ++k) {
        PieceStats s = p.piece(a.x, static_cast<int64_t>(o), k);
        chan_merge(n, mean, m2, s.n, s.mean, s.m2);
      }
      write_result(a, static_cast<int64_t>(o), n, mean, m2);
    });
    return Status::Ok();
  }
  // Few outputs: pieces in parallel, then the same left-to-right fold.
  std::vector<PieceStats> part;
  try {
    part.resize(static_cast<size_t>(p.P * p.pieces));
  } catch (const std::bad_alloc&) {
    return Status::Error(Code::kOutOfMemory, "moments: out of host memory for partial statistics");
  }
  parallel_for(part.size(), [&](size_t t) {
    part[t] = p.piece(a.x, static_cast<int64_t>(t) / p.pieces, static_cast<int64_t>(t) % p.pieces);
  });
  for (int64_t o = 0; o < p.P; ++o) {
    double n = 0, mean = 0, m2 = 0;
    for (int64_t k = 0; k < p.pieces; ++k) {
      const PieceStats& s = part[static_cast<size_t>(o * p.pieces + k)];
      chan_merge(n, mean, m2, s.n, s.mean, s.m2);
    }
    write_result(a, o, n, mean, m2);
  }
  return Status::Ok();
}

// ---- columns: the innermost collapsed group is kept (NHWC per-channel, [N, C] axis 0) --
//
// Output (ko, c) reduces "rows": J rows of C contiguous floats. Columns are split into
// tiles of at most kColTile; a piece is R consecutive rows of one tile.
struct ColumnPlan {
  std::vector<Group> kept, red;
  int64_t C, J, P, tiles, R, pieces;

  void init() {
    J = product(red);
    P = product(kept);
    tiles = (C + kColTile - 1) / kColTile;
    // Rows per piece: about kPiece elements (L1-resident for pass 2), and at least 64 rows
    // so that wide rows still amortize the per-piece fold.
    R = std::max<int64_t>(64, kPiece / std::min(C, kColTile));
    pieces = (J + R - 1) / R;
  }
  int64_t tile_width(int64_t t) const { return std::min(kColTile, C - t * kColTile); }

  // Piece k of unit (ko, tile): per-column mean and M2 into mean[0..w), m2[0..w).
  int64_t piece(const float* x, int64_t ko, int64_t t, int64_t k, double* mean, double* m2) const {
    const int64_t w = tile_width(t);
    const float* base = x + offset_of(kept, ko) + t * kColTile;
    const int64_t j0 = k * R, nr = std::min(R, J - j0);
    const float* rows[kPiece / 2];  // C >= 2 after collapsing, so R <= kPiece / 2
    {
      Walker wk(red, j0);
      for (int64_t r = 0; r < nr; ++r, wk.next()) rows[r] = base + wk.off;
    }
    float cs[kColTile], ds[kColTile], qs[kColTile];
    // mean <- Σd, m2 <- Σd² (float64), cs <- the shift
    rows_stats(rows, nr, w, static_cast<float>(1.0 / static_cast<double>(nr)), cs, ds, qs, mean, m2);
    const double n = static_cast<double>(nr);
    for (int64_t c = 0; c < w; ++c) {
      const double D = mean[c];
      mean[c] = static_cast<double>(cs[c]) + D / n;
      m2[c] = nonneg(m2[c] - D * D / n);
    }
    if (!all_finite(mean, m2, w)) {
      // float32 overflowed (values near FLT_MAX): recompute this piece in float64.
      int64_t c = 0;
      for (; c + kBlock <= w; c += kBlock) col_block_stats(rows, nr, c, mean + c, m2 + c);
      if (c < w) col_narrow_stats(rows, nr, c, w - c, mean + c, m2 + c);
    }
    return nr;
  }
};

// Pieces are folded in blocks of kFoldBlock consecutive pieces (left to right), then the
// block results are folded left to right. Both parallel strategies below use exactly
// this order, so the bits never depend on which one ran (the choice depends on the
// thread count), and the few-units strategy keeps only one partial per block.
constexpr int64_t kFoldBlock = 32;

// Folds pieces [k0, k1) of unit (ko, t) into mean/m2 (w columns); returns their count.
double fold_pieces(const float* x, const ColumnPlan& p, int64_t ko, int64_t t, int64_t k0, int64_t k1,
                   double* mean, double* m2) {
  const int64_t w = p.tile_width(t);
  double pm[kColTile], pm2[kColTile];
  double n = 0;
  for (int64_t k = k0; k < k1; ++k) {
    const double nr = static_cast<double>(p.piece(x, ko, t, k, pm, pm2));
    chan_merge_columns(n, nr, w, mean, m2, pm, pm2);
    n += nr;
  }
  return n;
}

Status run_columns(const MomentsArgs& a, ColumnPlan& p) {
  p.init();
  const int64_t units = p.P * p.tiles;
  const int64_t blocks = (p.pieces + kFoldBlock - 1) / kFoldBlock;
  const size_t W = static_cast<size_t>(std::min(p.C, kColTile));
  auto write_unit = [&](int64_t u, double n, const double* mean, const double* m2) {
    const int64_t ko = u / p.tiles, t = u % p.tiles;
    for (int64_t c = 0; c < p.tile_width(t); ++c) write_result(a, ko * p.C + t * kColTile + c, n, mean[c], m2[c]);
  };
  if (units >= 2 * num_threads() || blocks == 1) {
    // Many units: one task per unit.
    parallel_for(static_cast<size_t>(units), [&](size_t uu) {
      const int64_t u = static_cast<int64_t>(uu), ko = u / p.tiles, t = u % p.tiles, w = p.tile_width(t);
      double mean[kColTile], m2[kColTile], bm[kColTile], bm2[kColTile];
      double n = 0;
      for (int64_t b = 0; b < blocks; ++b) {
        const double nb = fold_pieces(a.x, p, ko, t, b * kFoldBlock, std::min(p.pieces, (b + 1) * kFoldBlock), bm, bm2);
        chan_merge_columns(n, nb, w, mean, m2, bm, bm2);
        n += nb;
      }
      write_unit(u, n, mean, m2);
    });
    return Status::Ok();
  }
  // Few units (the NHWC hot path has one): blocks in parallel, then fold per unit.
  std::vector<double> part;
  try {
    part.resize(2 * W * static_cast<size_t>(units * blocks));
  } catch (const std::bad_alloc&) {
    return Status::Error(Code::kOutOfMemory, "moments: out of host memory for partial statistics");
  }
  std::vector<double> counts(static_cast<size_t>(units * blocks));
  parallel_for(static_cast<size_t>(units * blocks), [&](size_t task) {
    const int64_t u = static_cast<int64_t>(task) / blocks, b = static_cast<int64_t>(task) % blocks;
    double* at = part.data() + 2 * W * task;
    counts[task] = fold_pieces(a.x, p, u / p.tiles, u % p.tiles, b * kFoldBlock,
                               std::min(p.pieces, (b + 1) * kFoldBlock), at, at + W);
  });
  parallel_for(static_cast<size_t>(units), [&](size_t uu) {
    const int64_t u = static_cast<int64_t>(uu), w = p.tile_width(u % p.tiles);
    double mean[kColTile], m2[kColTile];
    double n = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      const size_t task = static_cast<size_t>(u * blocks + b);
      const double* at = part.data() + 2 * W * task;
      chan_merge_columns(n, counts[task], w, mean, m2, at, at + W);
      n += counts[task];
    }
    write_unit(u, n, mean, m2);
  });
  return Status::Ok();
}

}  // namespace

Status cpu_moments(const MomentsArgs& a) {
  const size_t rank = a.shape.size();
  int64_t kept_count = 1, red_count = 1;
  for (size_t d = 0; d < rank; ++d) (a.reduce[d] ? red_count : kept_count) *= a.shape[d];
  if (kept_count == 0) return Status::Ok();  // empty outputs
  if (red_count == 0) {                      // nothing to reduce: NaN statistics (as TF)
    for (int64_t o = 0; o < kept_count; ++o) write_result(a, o, 0, 0, 0);
    return Status::Ok();
  }

  // Collapse: drop size-1 axes, merge neighbours of the same kind. What is left
  // alternates kept/reduced groups; output order is the kept groups' row-major order.
  struct G { int64_t size; bool reduced; };
  std::vector<G> gs;
  for (size_t d = 0; d < rank; ++d) {
    if (a.shape[d] == 1) continue;
    if (!gs.empty() && gs.back().reduced == a.reduce[d]) gs.back().size *= a.shape[d];
    else gs.push_back({a.shape[d], static_cast<bool>(a.reduce[d])});
  }
  if (gs.empty()) gs.push_back({1, false});
  std::vector<int64_t> stride(gs.size());
  int64_t s = 1;
  for (size_t k = gs.size(); k-- > 0;) {
    stride[k] = s;
    s *= gs[k].size;
  }
  std::vector<Group> kept, red;
  for (size_t k = 0; k + 1 < gs.size(); ++k) (gs[k].reduced ? red : kept).push_back({gs[k].size, stride[k]});

  if (gs.back().reduced) {
    SegmentPlan p;
    p.kept = std::move(kept);
    p.red = std::move(red);
    p.L = gs.back().size;
    return run_segments(a, p);
  }
  ColumnPlan p;
  p.kept = std::move(kept);
  p.red = std::move(red);
  p.C = gs.back().size;
  return run_columns(a, p);
}

}  // namespace bn
