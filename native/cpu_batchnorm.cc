// CPU batchNormalization: y = (x − mean) · scale / sqrt(variance + ε) + offset with numpy
// broadcasting of every operand against the output shape.
//
// The parameters usually vary along a few axes only (per-channel). They are folded
// first into a small table of (mean, inv = scale/sqrt(var+ε), offset) in float64, so the
// pass over x is one subtraction, one multiply and one add per element, in float64, and
// (x − mean) is formed before scaling (TF's folded x·inv + (offset − mean·inv) cancels
// badly when |mean| ≫ σ). When the parameters vary along as many elements as x itself,
// a table would cost more than it saves and each element computes its own inv.
#include <algorithm>
#include <cmath>
#include <new>
#include <vector>

#include "backend_api/broadcast.h"
#include "backend_api/ops.h"
#include "simd.h"
#include "threadpool.h"

namespace bn {
namespace {

constexpr int64_t kChunk = 32768;  // output elements per task (fixed: output is elementwise)

BN_CLONES void bn_scalar_params(const float* __restrict x, float* __restrict y, int64_t n, double m,
                                double inv, double o) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>((static_cast<double>(x[i]) - m) * inv + o);
}

BN_CLONES void bn_vector_params(const float* __restrict x, float* __restrict y, int64_t n,
                                const double* __restrict m, const double* __restrict inv,
                                const double* __restrict o) {
  for (int64_t i = 0; i < n; ++i)
    y[i] = static_cast<float>((static_cast<double>(x[i]) - m[i]) * inv[i] + o[i]);
}

// In-place variants: y == x is allowed (out: x), where __restrict would be a lie.
BN_CLONES void bn_scalar_params_inplace(float* y, int64_t n, double m, double inv, double o) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>((static_cast<double>(y[i]) - m) * inv + o);
}
BN_CLONES void bn_vector_params_inplace(float* y, int64_t n, const double* __restrict m,
                                        const double* __restrict inv, const double* __restrict o) {
  for (int64_t i = 0; i < n; ++i)
    y[i] = static_cast<float>((static_cast<double>(y[i]) - m[i]) * inv[i] + o[i]);
}

inline double inv_std(double var, double scale, double eps) { return scale / std::sqrt(var + eps); }

// Calls fn(offsets[], inner_len) for runs of the innermost dim covering output elements
// [begin, end). offsets[k] is operand k's element offset at the run's start.
template <size_t K, typename Fn>
void for_each_run(const Dims& d, int64_t begin, int64_t end, Fn&& fn) {
  const size_t r = d.size.size();
  std::vector<int64_t> idx(r);
  int64_t off[K] = {};
  int64_t rem = begin;
  for (size_t i = r; i-- > 0;) {
    idx[i] = rem % d.size[i];
    rem /= d.size[i];
    for (size_t k = 0; k < K; ++k) off[k] += idx[i] * d.st[k][i];
  }
  int64_t pos = begin;
  const int64_t inner = d.size[r - 1];
  while (pos < end) {
    const int64_t len = std::min(inner - idx[r - 1], end - pos);
    fn(off, len);
    pos += len;
    // advance by len along the innermost dim, carrying outward
    for (size_t k = 0; k < K; ++k) off[k] += len * d.st[k][r - 1];
    idx[r - 1] += len;
    for (size_t i = r - 1; i > 0 && idx[i] == d.size[i]; --i) {
      for (size_t k = 0; k < K; ++k) off[k] += d.st[k][i - 1] - d.size[i] * d.st[k][i];
      idx[i] = 0;
      ++idx[i - 1];
    }
  }
}

const float* param_or(const Operand& p) { return p.data; }

}  // namespace

Status cpu_batch_norm(const BatchNormArgs& a) {
  const Shape& out = a.out_shape;
  const int64_t total = numel(out);
  if (total == 0) return Status::Ok();
  const size_t r = out.size();
  const Operand* params[4] = {&a.mean, &a.variance, &a.offset, &a.scale};
  std::vector<std::vector<int64_t>> pst(4);
  for (int k = 0; k < 4; ++k) pst[k] = broadcast_strides(params[k]->data ? params[k]->shape : Shape{}, out);
  const std::vector<int64_t> xst = broadcast_strides(a.x.shape, out);

  // Table space: the output dims along which any parameter varies.
  int64_t T = 1;
  const std::vector<int64_t> tst = table_strides(pst, out, &T);
  const double eps = a.epsilon;
  const bool in_place = a.y == a.x.data;

  if (T <= std::max<int64_t>(65536, total / 8)) {
    std::vector<double> tm, tinv, to;
    try {
      tm.resize(static_cast<size_t>(T));
      tinv.resize(static_cast<size_t>(T));
      to.resize(static_cast<size_t>(T));
    } catch (const std::bad_alloc&) {
      return Status::Error(Code::kOutOfMemory, "batchNormalization: out of host memory for the parameter table");
    }
    // Fill the table by walking the output dims restricted to the table space.
    {
      Shape tshape(r, 1);
      std::vector<std::vector<int64_t>> st(5);
      for (size_t i = 0; i < r; ++i)
        if (tst[i]) tshape[i] = out[i];
      for (int k = 0; k < 4; ++k) st[k] = pst[k];
      st[4] = broadcast_strides(tshape, tshape);
      Dims td = collapse(tshape, st);
      const float* mp = a.mean.data;
      const float* vp = a.variance.data;
      const float* op = a.offset.data;
      const float* sp = a.scale.data;
      auto fill = [&](const int64_t* off, int64_t len) {
        for (int64_t i = 0; i < len; ++i) {
          const int64_t t = off[4] + i * td.st[4].back();
          const double m = mp[off[0] + i * td.st[0].back()];
          const double v = vp[off[1] + i * td.st[1].back()];
          const double o = op ? static_cast<double>(op[off[2] + i * td.st[2].back()]) : 0.0;
          const double s = sp ? static_cast<double>(sp[off[3] + i * td.st[3].back()]) : 1.0;
          tm[static_cast<size_t>(t)] = m;
          tinv[static_cast<size_t>(t)] = inv_std(v, s, eps);
          to[static_cast<size_t>(t)] = o;
        }
      };
      for_each_run<5>(td, 0, T, fill);
    }
    Dims d = collapse(out, {xst, tst});
    const int64_t sx = d.st[0].back(), sp = d.st[1].back();
    const double* m = tm.data();
    const double* inv = tinv.data();
    const double* o = to.data();
    const size_t tasks = static_cast<size_t>((total + kChunk - 1) / kChunk);
    parallel_for(tasks, [&](size_t t) {
      const int64_t begin = static_cast<int64_t>(t) * kChunk, end = std::min(total, begin + kChunk);
      float* y = a.y + begin;
      for_each_run<2>(d, begin, end, [&](const int64_t* off, int64_t len) {
        const float* xp = a.x.data + off[0];
        if (sx == 1 && sp == 0) {
          if (in_place) bn_scalar_params_inplace(y, len, m[off[1]], inv[off[1]], o[off[1]]);
          else bn_scalar_params(xp, y, len, m[off[1]], inv[off[1]], o[off[1]]);
        } else if (sx == 1 && sp == 1) {
          if (in_place) bn_vector_params_inplace(y, len, m + off[1], inv + off[1], o + off[1]);
          else bn_vector_params(xp, y, len, m + off[1], inv + off[1], o + off[1]);
        } else {
          for (int64_t i = 0; i < len; ++i) {
            const int64_t q = off[1] + i * sp;
            y[i] = static_cast<float>((static_cast<double>(xp[i * sx]) - m[q]) * inv[q] + o[q]);
          }
        }
        y += len;
      });
    });
    return Status::Ok();
  }

  // Parameters as large as the data: every element computes its own inv.
  Dims d = collapse(out, {xst, pst[0], pst[1], pst[2], pst[3]});
  const size_t tasks = static_cast<size_t>((total + kChunk - 1) / kChunk);
  const float* op = param_or(a.offset);
  const float* sp = param_or(a.scale);
  parallel_for(tasks, [&](size_t t) {
    const int64_t begin = static_cast<int64_t>(t) * kChunk, end = std::min(total, begin + kChunk);
    float* y = a.y + begin;
    for_each_run<5>(d, begin, end, [&](const int64_t* off, int64_t len) {
      for (int64_t i = 0; i < len; ++i) {
        const double xv = a.x.data[off[0] + i * d.st[0].back()];
        const double m = a.mean.data[off[1] + i * d.st[1].back()];
        const double v = a.variance.data[off[2] + i * d.st[2].back()];
        const double o = op ? static_cast<double>(op[off[3] + i * d.st[3].back()]) : 0.0;
        const double s = sp ? static_cast<double>(sp[off[4] + i * d.st[4].back()]) : 1.0;
        y[i] = static_cast<float>((xv - m) * inv_std(v, s, eps) + o);
      }
      y += len;
    });
  });
  return Status::Ok();
}

}  // namespace bn
