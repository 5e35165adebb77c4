// batchnorm_cuda_selftest: checks the CUDA training kernels (and moments /
// batchNormalization, which share their passes) against a float64 host reference on
// random data, on the benchmark workloads W1-W6 and on layouts that take every kernel
// variant; then times them with CUDA events beside a device-to-device copy and a
// read-only kernel of the same bytes (and cuDNN's training calls where libcudnn loads).
// Synchronized batch norm: the rank merge against a float64 host reference, the
// whole-batch ops against the local ones given the shard's own statistics (bit for bit),
// and, where libnccl loads, a single-rank NCCL communicator through the same ops.
// Built only when CMake finds nvcc, never part of the addon. Prints PASS/FAIL per check
// and exits non-zero when any check fails or no GPU is usable.
//
//   batchnorm_cuda_selftest [--quick] [--no-timing] [--reps N]
//     --quick      skip W3 (822 MB of x) and the timing of W2
//     --no-timing  correctness only
#include <cuda_runtime.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "common.cuh"
#include "sync_stats.cuh"
#include "../native/backend_api/cudnn.h"
#include "../native/backend_api/nccl.h"

using namespace bn;
using namespace bn::cuda;

namespace {

int failures = 0;

void report(bool ok, const std::string& what, const std::string& detail) {
  std::printf("%s  %s%s%s\n", ok ? "PASS" : "FAIL", what.c_str(), detail.empty() ? "" : ": ", detail.c_str());
  if (!ok) ++failures;
}

bool check_status(const Status& s, const std::string& what) {
  if (s.ok()) return true;
  report(false, what, s.message);
  return false;
}

// ---- host helpers ---------------------------------------------------------------------
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& body) {
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(std::thread::hardware_concurrency(), 32));
  if (n < 65536 || T == 1) {
    body(0, n);
    return;
  }
  std::vector<std::thread> ts;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t b = n * t / T, e = n * (t + 1) / T;
    ts.emplace_back([&, b, e] { body(b, e); });
  }
  for (auto& t : ts) t.join();
}

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
  double normal() { return std::sqrt(-2 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()); }
};

void fill_normal(std::vector<float>& v, double mean, double sd, uint64_t seed) {
  const int64_t n = static_cast<int64_t>(v.size());
  const int64_t chunk = 1 << 20;
  parallel_for((n + chunk - 1) / chunk, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      Rng r(seed * 1000003 + static_cast<uint64_t>(k));
      for (int64_t i = k * chunk; i < std::min(n, (k + 1) * chunk); ++i)
        v[static_cast<size_t>(i)] = static_cast<float>(mean + sd * r.normal());
    }
  });
}

// Device buffer owned by the test.
struct Buf {
  void* p = nullptr;
  size_t bytes = 0;
  Buf() = default;
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { device_free(p); }
  bool alloc(size_t b) {
    bytes = b;
    return device_alloc(b, &p, "selftest").ok();
  }
  float* f() const { return static_cast<float*>(p); }
};

bool upload(Buf& b, const void* src, size_t bytes) {
  return b.alloc(bytes) && copy_to_device(b.p, src, bytes, "selftest").ok();
}
template <typename T>
std::vector<T> download(const void* src, size_t n) {
  std::vector<T> h(n);
  if (!copy_to_host(h.data(), src, n * sizeof(T), "selftest").ok()) std::fill(h.begin(), h.end(), T(-12345));
  return h;
}

double ulp_distance(float a, float b) {
  if (std::isnan(a) && std::isnan(b)) return 0;
  if (std::isnan(a) || std::isnan(b)) return INFINITY;
  if (a == b) return 0;
  return std::fabs(static_cast<double>(a) - b) / std::max(std::ldexp(1.0, std::ilogb(std::max(std::fabs(a), std::fabs(b))) - 23),
                                                          1e-45);
}

// Worst ratio err / tolerance over the elements (<= 1 passes), with the first offender.
struct Compare {
  double worst = 0;
  int64_t at = -1;
  double got = 0, want = 0;
  void add(int64_t i, double got_v, double want_v, double tol) {
    if (std::isnan(got_v) && std::isnan(want_v)) return;
    double r;
    if (std::isnan(got_v) || std::isnan(want_v)) r = INFINITY;
    else if (std::isinf(want_v) || std::isinf(got_v)) r = got_v == want_v ? 0 : INFINITY;
    else r = std::fabs(got_v - want_v) / tol;
    if (r > worst) {
      worst = r;
      at = i;
      got = got_v;
      want = want_v;
    }
  }
  std::string text() const {
    char b[200];
    if (at < 0) return "exact";
    std::snprintf(b, sizeof b, "worst %.3g of tolerance at [%" PRId64 "] got %.9g want %.9g", worst, at, got, want);
    return b;
  }
  bool ok() const { return worst <= 1; }
};

// ---- a case -------------------------------------------------------------------------
struct Case {
  std::string name;
  Shape shape;
  int axis;
  double data_mean = 0, data_sd = 1;
  double factor = 0.1;
  bool misalign = false;  // x, dy, y, dx one float past a 16-byte boundary
  bool nan_channel = false;
  bool timing = false;
};

ChannelView view_of(const Case& c) {
  ChannelView v;
  v.A = 1;
  v.B = 1;
  for (int d = 0; d < c.axis; ++d) v.A *= c.shape[d];
  v.C = c.shape[c.axis];
  for (size_t d = c.axis + 1; d < c.shape.size(); ++d) v.B *= c.shape[d];
  return v;
}

std::string shape_text(const Shape& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? "," : "") + std::to_string(s[i]);
  return t + "]";
}

// Per-channel float64 sums over [A, C, B] with a per-channel function of (x, dy).
template <class F>
void channel_sums(const ChannelView& v, int K, std::vector<double>* out, F f) {
  const int64_t A = v.A, C = v.C, B = v.B;
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(std::thread::hardware_concurrency(), 32));
  std::vector<std::vector<double>> part(static_cast<size_t>(T), std::vector<double>(static_cast<size_t>(K * C), 0.0));
  std::vector<std::thread> ts;
  for (int64_t t = 0; t < T; ++t)
    ts.emplace_back([&, t] {
      double* acc = part[static_cast<size_t>(t)].data();
      for (int64_t a = A * t / T; a < A * (t + 1) / T; ++a)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t b = 0; b < B; ++b) f((a * C + c) * B + b, c, acc + c * K);
    });
  for (auto& t : ts) t.join();
  out->assign(static_cast<size_t>(K * C), 0.0);
  for (const auto& p : part)
    for (size_t i = 0; i < p.size(); ++i) (*out)[i] += p[i];
}

struct Host {
  std::vector<float> x, dy, scale, offset, rmean, rvar;
};

void run_case(const Case& cs, int reps, bool timing) {
  const ChannelView v = view_of(cs);
  const int64_t n = v.A * v.C * v.B, C = v.C;
  const std::string tag = cs.name + " " + shape_text(cs.shape) + " axis " + std::to_string(cs.axis);
  Host h;
  h.x.resize(static_cast<size_t>(n));
  h.dy.resize(static_cast<size_t>(n));
  h.scale.resize(static_cast<size_t>(C));
  h.offset.resize(static_cast<size_t>(C));
  h.rmean.resize(static_cast<size_t>(C));
  h.rvar.resize(static_cast<size_t>(C));
  fill_normal(h.x, cs.data_mean, cs.data_sd, 1);
  fill_normal(h.dy, 0, 1, 2);
  fill_normal(h.scale, 1, 0.5, 3);
  fill_normal(h.offset, 0, 1, 4);
  fill_normal(h.rmean, 0, 1, 5);
  fill_normal(h.rvar, 2, 0.5, 6);
  for (auto& r : h.rvar) r = std::fabs(r);
  if (cs.nan_channel && n > 0) h.x[0] = NAN;

  // Device buffers; with misalign, data starts one float into the allocation.
  const size_t shift = cs.misalign ? 1 : 0;
  const size_t nb = (static_cast<size_t>(n) + shift) * sizeof(float);
  Buf bx, bdy, by, bdx, bscale, boffset, brm, brv;
  std::vector<float> xs(static_cast<size_t>(n) + shift, 0.f), dys(static_cast<size_t>(n) + shift, 0.f);
  std::copy(h.x.begin(), h.x.end(), xs.begin() + shift);
  std::copy(h.dy.begin(), h.dy.end(), dys.begin() + shift);
  if (!upload(bx, xs.data(), nb) || !upload(bdy, dys.data(), nb) || !by.alloc(nb) || !bdx.alloc(nb) ||
      !upload(bscale, h.scale.data(), C * sizeof(float)) || !upload(boffset, h.offset.data(), C * sizeof(float)) ||
      !upload(brm, h.rmean.data(), C * sizeof(float)) || !upload(brv, h.rvar.data(), C * sizeof(float))) {
    report(false, tag, "device allocation or upload failed");
    return;
  }
  xs.clear();
  xs.shrink_to_fit();
  dys.clear();
  dys.shrink_to_fit();
  float* xdev = bx.f() + shift;
  float* dydev = bdy.f() + shift;
  float* ydev = by.f() + shift;
  float* dxdev = bdx.f() + shift;
  Buf stats;  // 8 float vectors + 2 double vectors
  if (!stats.alloc(static_cast<size_t>(C) * (8 * sizeof(float) + 2 * sizeof(double)) + 64)) {
    report(false, tag, "device allocation failed");
    return;
  }
  float* sv = stats.f();
  double* sd = reinterpret_cast<double*>(sv + 8 * C + (C % 2));

  // ---- float64 reference statistics (two-pass: exact enough to judge float32 outputs)
  std::vector<double> s1;
  channel_sums(v, 1, &s1, [&](int64_t i, int64_t, double* a) { a[0] += h.x[static_cast<size_t>(i)]; });
  const double cnt = static_cast<double>(v.A) * static_cast<double>(v.B);
  std::vector<double> mean_ref(static_cast<size_t>(C)), m2_ref;
  for (int64_t c = 0; c < C; ++c) mean_ref[static_cast<size_t>(c)] = cnt > 0 ? s1[static_cast<size_t>(c)] / cnt : NAN;
  channel_sums(v, 1, &m2_ref, [&](int64_t i, int64_t c, double* a) {
    const double d = h.x[static_cast<size_t>(i)] - mean_ref[static_cast<size_t>(c)];
    a[0] += d * d;
  });
  if (cnt == 0) std::fill(m2_ref.begin(), m2_ref.end(), NAN);

  const double eps = 1e-3;
  for (ForwardPlan plan : {ForwardPlan::kTwoPass, ForwardPlan::kPersistent}) {
    const char* pname = plan == ForwardPlan::kTwoPass ? "two-pass" : "persistent";
    // Running statistics start from the host values each time (updated in place).
    if (!copy_to_device(brm.p, h.rmean.data(), C * sizeof(float), "selftest").ok() ||
        !copy_to_device(brv.p, h.rvar.data(), C * sizeof(float), "selftest").ok()) {
      report(false, tag, "upload failed");
      return;
    }
    FusedBatchNormArgs a;
    a.view = v;
    a.x = xdev;
    a.scale = bscale.f();
    a.offset = boffset.f();
    a.running_mean = brm.f();
    a.running_var = brv.f();
    a.epsilon = eps;
    a.factor = cs.factor;
    a.training = true;
    a.plan = plan;
    a.y = ydev;
    a.batch_mean = sv;
    a.batch_var = sv + C;
    a.batch_var_biased = sv + 2 * C;
    a.running_mean_out = brm.f();  // in place
    a.running_var_out = brv.f();
    a.saved_mean = sv + 3 * C;
    a.saved_inv_std = sv + 4 * C;
    a.mean64 = sd;
    a.m2_64 = sd + C;
    ForwardPlan used;
    const Status st = fused_batch_norm(a, nullptr, &used);
    if (plan == ForwardPlan::kPersistent && st.code == Code::kUnsupported) continue;
    if (!check_status(st, tag + " forward " + pname) || !check_status(synchronize("selftest"), tag + " forward " + pname))
      continue;
    const auto out = download<float>(sv, static_cast<size_t>(5 * C));
    const auto out64 = download<double>(sd, static_cast<size_t>(2 * C));
    const auto rm = download<float>(brm.p, static_cast<size_t>(C));
    const auto rv = download<float>(brv.p, static_cast<size_t>(C));
    const auto y = download<float>(ydev, static_cast<size_t>(n));
    Compare cm, cv, cvb, crm, crv, cinv, c64, cy;
    for (int64_t c = 0; c < C; ++c) {
      const size_t k = static_cast<size_t>(c);
      const double m = mean_ref[k], m2 = m2_ref[k];
      const double vb = m2 / cnt, vu = m2 / std::max(cnt - 1, 1.0);
      const double tol_m = 2.5e-7 * std::fabs(m) + 1e-6 * std::sqrt(vb) + 1e-30;
      cm.add(c, out[k], m, tol_m);
      cvb.add(c, out[2 * C + c], vb, 2.5e-7 * vb + 1e-30);
      cv.add(c, out[C + c], vu, 2.5e-7 * vu + 1e-30);
      c64.add(c, out64[k], m, 1e-12 * std::fabs(m) + 1e-9 * std::sqrt(vb) + 1e-300);
      c64.add(c, out64[C + c], m2, 1e-9 * m2 + 1e-300);
      // The running update and invstd from the kernel's own float32 statistics, as the CPU path.
      const double mf = out[k], vuf = out[C + c], vbf = out[2 * C + c];
      const float rm_want = cs.factor == 1 ? static_cast<float>(mf)
                                           : static_cast<float>((1 - cs.factor) * h.rmean[k] + cs.factor * mf);
      const float rv_want = cs.factor == 1 ? static_cast<float>(vuf)
                                           : static_cast<float>((1 - cs.factor) * h.rvar[k] + cs.factor * vuf);
      crm.add(c, rm[k], rm_want, 1e-30);
      crv.add(c, rv[k], rv_want, 1e-30);
      cinv.add(c, out[4 * C + c], static_cast<float>(1.0 / std::sqrt(vbf + eps)), 1e-30);
      if (out[3 * C + c] != out[k] && !(std::isnan(out[3 * C + c]) && std::isnan(out[k]))) cinv.add(c, 1, 0, 1e-30);
    }
    // y from the kernel's own float32 statistics with the CPU's arithmetic: equal.
    std::vector<double> tm(static_cast<size_t>(C)), tinv(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c) {
      tm[static_cast<size_t>(c)] = out[static_cast<size_t>(c)];
      tinv[static_cast<size_t>(c)] = static_cast<double>(h.scale[static_cast<size_t>(c)]) /
                                     std::sqrt(static_cast<double>(out[2 * C + c]) + eps);
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = (i / v.B) % C;
      const float want = static_cast<float>((static_cast<double>(h.x[static_cast<size_t>(i)]) - tm[c]) * tinv[c] +
                                            h.offset[static_cast<size_t>(c)]);
      cy.add(i, ulp_distance(y[static_cast<size_t>(i)], want), 0, 2);
    }
    const std::string p = tag + " forward " + pname;
    report(cm.ok(), p + " batch mean vs float64", cm.text());
    report(cv.ok() && cvb.ok(), p + " batch variance (Bessel, biased) vs float64", cv.text() + "; " + cvb.text());
    report(c64.ok(), p + " float64 mean/M2", c64.text());
    report(crm.ok() && crv.ok(), p + " running update (in place)", crm.text() + "; " + crv.text());
    report(cinv.ok(), p + " saved mean / inverse std", cinv.text());
    report(cy.ok(), p + " y vs CPU arithmetic (ulps)", cy.text());

    // Determinism: the same call again gives the same bits.
    if (plan == ForwardPlan::kTwoPass) {
      a.running_mean = a.running_var = nullptr;
      a.running_mean_out = a.running_var_out = nullptr;
      a.factor = 1;
      if (check_status(fused_batch_norm(a), p + " rerun") && check_status(synchronize("selftest"), p + " rerun")) {
        const auto again = download<float>(sv, static_cast<size_t>(5 * C));
        const auto y2 = download<float>(ydev, static_cast<size_t>(n));
        const bool same = std::memcmp(again.data(), out.data(), again.size() * 4) == 0 &&
                          std::memcmp(y2.data(), y.data(), y.size() * 4) == 0;
        report(same, p + " bit-identical on a second run", "");
      }
    }
  }

  // ---- inference forward
  {
    FusedBatchNormArgs a;
    a.view = v;
    a.x = xdev;
    a.scale = bscale.f();
    a.offset = boffset.f();
    if (copy_to_device(brm.p, h.rmean.data(), C * sizeof(float), "selftest").ok() &&
        copy_to_device(brv.p, h.rvar.data(), C * sizeof(float), "selftest").ok()) {
      a.running_mean = brm.f();
      a.running_var = brv.f();
      a.epsilon = eps;
      a.training = false;
      a.y = ydev;
      // Slots the backward below does not read (it uses the training run's saved statistics).
      a.saved_inv_std = sv + 7 * C;
      a.batch_mean = sv + 5 * C;
      if (check_status(fused_batch_norm(a), tag + " inference") && check_status(synchronize("selftest"), tag + " inference")) {
        const auto y = download<float>(ydev, static_cast<size_t>(n));
        const auto out = download<float>(sv, static_cast<size_t>(8 * C));
        Compare cy, cs_;
        for (int64_t c = 0; c < C; ++c) {
          cs_.add(c, out[5 * C + c], h.rmean[static_cast<size_t>(c)], 1e-30);
          cs_.add(c, out[7 * C + c], static_cast<float>(1.0 / std::sqrt(static_cast<double>(h.rvar[c]) + eps)), 1e-30);
        }
        for (int64_t i = 0; i < n; ++i) {
          const size_t c = static_cast<size_t>((i / v.B) % C);
          const double inv = static_cast<double>(h.scale[c]) / std::sqrt(static_cast<double>(h.rvar[c]) + eps);
          const float want = static_cast<float>((static_cast<double>(h.x[static_cast<size_t>(i)]) - h.rmean[c]) * inv +
                                                h.offset[c]);
          cy.add(i, ulp_distance(y[static_cast<size_t>(i)], want), 0, 2);
        }
        report(cs_.ok(), tag + " inference statistics outputs", cs_.text());
        report(cy.ok(), tag + " inference y vs CPU arithmetic (ulps)", cy.text());
      }
    }
  }

  // ---- backward from the forward's saved statistics (last two-pass or persistent run).
  const auto saved = download<float>(sv + 3 * C, static_cast<size_t>(2 * C));
  for (bool training : {true, false}) {
    BatchNormGradArgs g;
    g.view = v;
    g.dy = dydev;
    g.x = xdev;
    g.scale = bscale.f();
    g.saved_mean = sv + 3 * C;
    g.saved_inv_std = sv + 4 * C;
    g.training = training;
    g.dx = dxdev;
    g.dscale = sv + 5 * C;
    g.doffset = sv + 6 * C;
    g.sum_dy = sd;
    g.sum_dy_xmu = sd + C;
    const std::string p = tag + (training ? " backward (training)" : " backward (frozen statistics)");
    if (!check_status(batch_norm_grad(g), p) || !check_status(synchronize("selftest"), p)) continue;
    const auto dxv = download<float>(dxdev, static_cast<size_t>(n));
    const auto ds = download<float>(sv + 5 * C, static_cast<size_t>(2 * C));
    // float64 reference sums with |terms| for the tolerance.
    std::vector<double> r;
    channel_sums(v, 4, &r, [&](int64_t i, int64_t c, double* a) {
      const double d = h.dy[static_cast<size_t>(i)];
      const double t = d * (static_cast<double>(h.x[static_cast<size_t>(i)]) - saved[static_cast<size_t>(c)]);
      a[0] += d;
      a[1] += t;
      a[2] += std::fabs(d);
      a[3] += std::fabs(t);
    });
    Compare cds, cdo, cdx;
    std::vector<double> kg(static_cast<size_t>(C)), ka(static_cast<size_t>(C)), kb(static_cast<size_t>(C)),
        ktol(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c) {
      const size_t k = static_cast<size_t>(c);
      const double inv = saved[C + c], S1 = r[4 * k], S2 = r[4 * k + 1];
      cds.add(c, ds[k], static_cast<float>(inv * S2), 1e-12 * std::fabs(inv) * r[4 * k + 3] + 2.5e-7 * std::fabs(inv * S2) + 1e-30);
      cdo.add(c, ds[C + c], static_cast<float>(S1), 1e-12 * r[4 * k + 2] + 2.5e-7 * std::fabs(S1) + 1e-30);
      kg[k] = static_cast<double>(h.scale[k]) * inv;
      ka[k] = training && cnt > 0 ? S1 / cnt : 0;
      kb[k] = training && cnt > 0 ? inv * inv * S2 / cnt : 0;
      // Sum-order differences in a and b, scaled into dx.
      ktol[k] = training && cnt > 0 ? 1e-12 * (r[4 * k + 2] + inv * inv * r[4 * k + 3]) / cnt : 0;
    }
    for (int64_t i = 0; i < n; ++i) {
      const size_t c = static_cast<size_t>((i / v.B) % C);
      const double xm = static_cast<double>(h.x[static_cast<size_t>(i)]) - saved[c];
      const double want = kg[c] * (static_cast<double>(h.dy[static_cast<size_t>(i)]) - ka[c] - xm * kb[c]);
      const double tol = std::fabs(kg[c]) * ktol[c] * (1 + std::fabs(xm)) + 2.5e-7 * std::fabs(want) + 1e-30;
      cdx.add(i, dxv[static_cast<size_t>(i)], static_cast<double>(static_cast<float>(want)), tol + 1e-37);
    }
    report(cds.ok() && cdo.ok(), p + " dscale, doffset vs float64", cds.text() + "; " + cdo.text());
    report(cdx.ok(), p + " dx vs float64", cdx.text());
  }

  // ---- cuDNN on the same data, where it loads and applies (rank 4/5, channel 1 or last).
  const int rank = static_cast<int>(cs.shape.size());
  // (cuDNN's float32 statistics are compared on zero-mean data only: with an offset
  // like 1e4 they are expected to be off by far more than rounding.)
  const bool cudnn_layout = (rank == 4 || rank == 5) && (cs.axis == 1 || cs.axis == rank - 1) && v.A * v.B >= 2 &&
                            !cs.misalign && !cs.nan_channel && cs.data_mean == 0;
  if (cudnn_layout && cudnn::library().loaded) {
    cudnn::FusedForwardArgs f;
    f.x_layout = cudnn::Layout{cs.shape, cs.axis};
    f.x = xdev;
    f.scale = bscale.f();
    f.offset = boffset.f();
    f.epsilon = eps;
    f.factor = 1;
    f.y = ydev;
    f.batch_mean = sv;
    f.batch_var = sv + C;
    f.batch_var_biased = sv + 2 * C;
    f.running_mean_out = sv + 5 * C;
    f.running_var_out = sv + 6 * C;
    f.saved_mean = sv + 3 * C;
    f.saved_inv_std = sv + 4 * C;
    Buf reserve;
    size_t rs = 0;
    if (cudnn::training_reserve_size(f.x_layout, &rs).ok() && rs > 0 && reserve.alloc(rs)) {
      f.reserve = reserve.p;
      f.reserve_bytes = rs;
    }
    const std::string p = tag + " cuDNN training forward";
    if (check_status(cudnn::fused_forward(f), p) && check_status(synchronize("selftest"), p)) {
      const std::string fb = cudnn::last_ex_fallback();
      const auto y = download<float>(ydev, static_cast<size_t>(n));
      Compare cy;
      for (int64_t c = 0; c < C; ++c) {
        const size_t k = static_cast<size_t>(c);
        const double vb = m2_ref[k] / cnt;
        const double inv = h.scale[k] / std::sqrt(vb + eps);
        for (int64_t a = 0; a < v.A; ++a)
          for (int64_t b = 0; b < v.B; ++b) {
            const int64_t i = (a * C + c) * v.B + b;
            const double want = (h.x[static_cast<size_t>(i)] - mean_ref[k]) * inv + h.offset[k];
            // cuDNN's own float32 statistics: a looser, relative-to-spread tolerance.
            cy.add(i, y[static_cast<size_t>(i)], want, 1e-4 * (std::fabs(inv) * cs.data_sd * 6 + std::fabs(want)) + 1e-6);
          }
      }
      report(cy.ok(), p + (fb.empty() ? "" : " (fell back to legacy: " + fb + ")"), cy.text());
      cudnn::BackwardArgs b;
      b.x_layout = f.x_layout;
      b.dy = dydev;
      b.x = xdev;
      b.scale = bscale.f();
      b.saved_mean = sv + 3 * C;
      b.saved_inv_std = sv + 4 * C;
      b.epsilon = eps;
      b.dx = dxdev;
      b.dscale = sv + 5 * C;
      b.doffset = sv + 6 * C;
      b.reserve = f.reserve;
      b.reserve_bytes = f.reserve_bytes;
      const std::string pb = tag + " cuDNN backward";
      if (check_status(cudnn::backward(b), pb) && check_status(synchronize("selftest"), pb)) {
        const std::string fbb = cudnn::last_ex_fallback();
        report(true, pb + " ran" + (fbb.empty() ? "" : " (fell back to legacy: " + fbb + ")"), "");
      }
    }
  }

  if (!timing || !cs.timing) return;
  // ---- timings (CUDA events, median of reps), floors measured in the same run.
  auto median = [](std::vector<double> t) -> double {
    if (t.empty()) return std::nan("");
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  };
  const int warm = 3;
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  std::vector<double> t;
  double copy_ms = NAN, read_ms = NAN;
  if (time_copy(bytes, warm, reps, &t).ok()) copy_ms = median(t);
  if (time_read(bytes, warm, reps, &t).ok()) read_ms = median(t);
  std::printf("TIME  %s  bytes(x) %.1f MB  copy %.4f ms (%.0f GB/s)  read %.4f ms (%.0f GB/s)\n", tag.c_str(),
              bytes / 1e6, copy_ms, 2 * bytes / copy_ms / 1e6, read_ms, bytes / read_ms / 1e6);
  auto line = [&](const char* what, double ms, double traffic, double floor_ms) {
    std::printf("TIME  %s  %-28s %.4f ms  %7.0f GB/s  floor ratio %.2f\n", tag.c_str(), what, ms, traffic / ms / 1e6,
                floor_ms / ms);
  };
  {
    MomentsArgs m;
    m.x = xdev;
    m.shape = Shape{v.A, v.C, v.B};
    m.reduce = {true, false, true};
    m.mean = sv;
    m.variance = sv + C;
    m.mem = Memory::kDevice;
    if (time_moments(m, warm, reps, &t).ok()) line("moments (vs read)", median(t), bytes, read_ms);
    BatchNormArgs bn_;
    bn_.x = Operand{xdev, Shape{v.A, v.C, v.B}, Memory::kDevice};
    bn_.mean = Operand{sv, Shape{v.C, 1}, Memory::kDevice};
    bn_.variance = Operand{brv.f(), Shape{v.C, 1}, Memory::kDevice};
    bn_.offset = Operand{boffset.f(), Shape{v.C, 1}, Memory::kDevice};
    bn_.scale = Operand{bscale.f(), Shape{v.C, 1}, Memory::kDevice};
    bn_.epsilon = eps;
    bn_.y = ydev;
    bn_.out_shape = Shape{v.A, v.C, v.B};
    bn_.mem = Memory::kDevice;
    if (time_batch_norm(bn_, warm, reps, &t).ok()) line("batchNormalization (vs copy)", median(t), 2.0 * bytes, copy_ms);
  }
  for (ForwardPlan plan : {ForwardPlan::kTwoPass, ForwardPlan::kPersistent}) {
    FusedBatchNormArgs a;
    a.view = v;
    a.x = xdev;
    a.scale = bscale.f();
    a.offset = boffset.f();
    a.running_mean = brm.f();
    a.running_var = brv.f();
    a.factor = 0.1;
    a.plan = plan;
    a.y = ydev;
    a.batch_mean = sv;
    a.batch_var = sv + C;
    a.running_mean_out = brm.f();
    a.running_var_out = brv.f();
    a.saved_mean = sv + 3 * C;
    a.saved_inv_std = sv + 4 * C;
    if (plan == ForwardPlan::kPersistent && v.B != 1) continue;
    const Status st = time_fused_batch_norm(a, warm, reps, &t);
    if (st.ok())
      line(plan == ForwardPlan::kTwoPass ? "training forward two-pass" : "training forward persistent", median(t),
           3.0 * bytes, 1.5 * copy_ms);
    else
      std::printf("TIME  %s  training forward %s: %s\n", tag.c_str(),
                  plan == ForwardPlan::kTwoPass ? "two-pass" : "persistent", st.message.c_str());
  }
  {
    BatchNormGradArgs g;
    g.view = v;
    g.dy = dydev;
    g.x = xdev;
    g.scale = bscale.f();
    g.saved_mean = sv + 3 * C;
    g.saved_inv_std = sv + 4 * C;
    g.dx = dxdev;
    g.dscale = sv + 5 * C;
    g.doffset = sv + 6 * C;
    // Floor: read x and dy twice, write dx once = 2.5 copies of x.
    if (time_batch_norm_grad(g, warm, reps, &t).ok()) line("backward (training)", median(t), 5.0 * bytes, 2.5 * copy_ms);
  }
  if (cudnn_layout && cudnn::library().loaded) {
    cudaStream_t st;
    cudaEvent_t e0, e1;
    if (get_stream(&st, "selftest").ok() && cudaEventCreate(&e0) == cudaSuccess && cudaEventCreate(&e1) == cudaSuccess) {
      auto time_fn = [&](const std::function<Status()>& fn) -> double {
        std::vector<double> ms;
        for (int i = 0; i < warm; ++i)
          if (!fn().ok()) return NAN;
        for (int i = 0; i < reps; ++i) {
          cudaEventRecord(e0, st);
          if (!fn().ok()) return NAN;
          cudaEventRecord(e1, st);
          cudaEventSynchronize(e1);
          float x = 0;
          cudaEventElapsedTime(&x, e0, e1);
          ms.push_back(x);
        }
        return median(ms);
      };
      cudnn::FusedForwardArgs f;
      f.x_layout = cudnn::Layout{cs.shape, cs.axis};
      f.x = xdev;
      f.scale = bscale.f();
      f.offset = boffset.f();
      f.epsilon = eps;
      f.y = ydev;
      f.batch_mean = sv;
      f.batch_var = sv + C;
      f.batch_var_biased = sv + 2 * C;
      f.running_mean_out = sv + 5 * C;
      f.running_var_out = sv + 6 * C;
      f.saved_mean = sv + 3 * C;
      f.saved_inv_std = sv + 4 * C;
      const double fwd = time_fn([&] { return cudnn::fused_forward(f); });
      const std::string ffb = cudnn::last_ex_fallback();
      cudnn::BackwardArgs b;
      b.x_layout = f.x_layout;
      b.dy = dydev;
      b.x = xdev;
      b.scale = bscale.f();
      b.saved_mean = sv + 3 * C;
      b.saved_inv_std = sv + 4 * C;
      b.epsilon = eps;
      b.dx = dxdev;
      b.dscale = sv + 5 * C;
      b.doffset = sv + 6 * C;
      const double bwd = time_fn([&] { return cudnn::backward(b); });
      const std::string bfb = cudnn::last_ex_fallback();
      line("cuDNN training forward", fwd, 3.0 * bytes, 1.5 * copy_ms);
      if (!ffb.empty()) std::printf("TIME  %s  (cuDNN forward on the legacy API: %s)\n", tag.c_str(), ffb.c_str());
      line("cuDNN backward", bwd, 5.0 * bytes, 2.5 * copy_ms);
      if (!bfb.empty()) std::printf("TIME  %s  (cuDNN backward on the legacy API: %s)\n", tag.c_str(), bfb.c_str());
      cudaEventDestroy(e0);
      cudaEventDestroy(e1);
    }
  }
}

// ---- synchronized batch norm -----------------------------------------------------------
// stats::merge's arithmetic on the host (the target builds host code without FMA
// contraction, as the device code): folding the same blocks in the same order must give
// the device's bits.
void host_merge(double& n, double& mean, double& m2, double bn, double bmean, double bm2) {
  if (bn == 0) return;
  if (n == 0) {
    n = bn;
    mean = bmean;
    m2 = bm2;
    return;
  }
  const double nab = n + bn;
  const double delta = bmean - mean;
  mean = std::isfinite(delta) ? mean + delta * (bn / nab) : mean * (n / nab) + bmean * (bn / nab);
  m2 += bm2 + delta * delta * (n * bn / nab);
  n = nab;
}

struct CaptureSink {
  double* n;
  double* mean;
  double* m2;
  __device__ void operator()(long long c, const stats::Stats& s) const {
    n[c] = s.n;
    mean[c] = s.mean;
    m2[c] = s.m2;
  }
};

// Runs merge_ranks_kernel on host-packed blocks; false when the device calls failed.
bool device_merge(const std::vector<double>& packed, int ranks, int64_t C, std::vector<double>* out) {
  Buf in, res;
  if (!upload(in, packed.data(), packed.size() * sizeof(double)) || !res.alloc(3 * C * sizeof(double))) return false;
  cudaStream_t st;
  if (!get_stream(&st, "selftest").ok()) return false;
  double* r = static_cast<double*>(res.p);
  syncbn::merge_ranks_kernel<CaptureSink><<<grid_for(C, 256), 256, 0, st>>>(static_cast<const double*>(in.p), ranks, C,
                                                                             CaptureSink{r, r + C, r + 2 * C});
  if (!check_launch("selftest", "merge_ranks_kernel").ok() || !synchronize("selftest").ok()) return false;
  *out = download<double>(res.p, static_cast<size_t>(3 * C));
  return true;
}

// Synthetic ranks with uneven shards, one of them empty, against the pooled data's
// two-pass float64 statistics; then every rank empty, and one rank alone.
void check_rank_merge() {
  const int64_t C = 37;
  const std::vector<int64_t> counts = {5, 0, 1, 17, 300, 2};
  const int R = static_cast<int>(counts.size());
  const int64_t P = syncbn::packed_size(C);
  std::vector<double> packed(static_cast<size_t>(R * P), 0.0);
  std::vector<std::vector<double>> pooled(static_cast<size_t>(C));
  for (int r = 0; r < R; ++r) {
    double* blk = packed.data() + r * P;
    blk[0] = static_cast<double>(counts[r]);
    for (int64_t c = 0; c < C; ++c) {
      Rng g(static_cast<uint64_t>(1000 * r + c + 7));
      std::vector<double> v(static_cast<size_t>(counts[r]));
      // Shards far apart (a mean step of 1e3 per rank) and of different spreads.
      for (double& e : v) e = static_cast<float>(1e3 * r + c + (1 + r) * g.normal());
      double m = 0, m2 = 0;
      for (double e : v) m += e;
      if (!v.empty()) m /= static_cast<double>(v.size());
      for (double e : v) m2 += (e - m) * (e - m);
      // An empty shard's mean/M2 must never be read: NaN would show in the result.
      blk[1 + c] = v.empty() ? NAN : m;
      blk[1 + C + c] = v.empty() ? NAN : m2;
      pooled[static_cast<size_t>(c)].insert(pooled[static_cast<size_t>(c)].end(), v.begin(), v.end());
    }
  }
  std::vector<double> got;
  if (!device_merge(packed, R, C, &got)) {
    report(false, "sync: rank merge", "device calls failed");
    return;
  }
  Compare cref, cbits;
  bool counts_ok = true;
  for (int64_t c = 0; c < C; ++c) {
    const std::vector<double>& v = pooled[static_cast<size_t>(c)];
    double m = 0, m2 = 0;
    for (double e : v) m += e;
    m /= static_cast<double>(v.size());
    for (double e : v) m2 += (e - m) * (e - m);
    double hn = 0, hm = 0, hm2 = 0;
    for (int r = 0; r < R; ++r) {
      const double* blk = packed.data() + r * P;
      host_merge(hn, hm, hm2, blk[0], blk[1 + c], blk[1 + C + c]);
    }
    if (got[static_cast<size_t>(c)] != static_cast<double>(v.size())) counts_ok = false;
    cref.add(c, got[static_cast<size_t>(C + c)], m, 1e-13 * std::fabs(m) + 1e-12);
    cref.add(C + c, got[static_cast<size_t>(2 * C + c)], m2, 1e-11 * m2 + 1e-12);
    // Bits: 0 when equal, else beyond tolerance.
    cbits.add(c, std::memcmp(&got[static_cast<size_t>(C + c)], &hm, 8) == 0 ? 0 : 1, 0, 0.5);
    cbits.add(C + c, std::memcmp(&got[static_cast<size_t>(2 * C + c)], &hm2, 8) == 0 ? 0 : 1, 0, 0.5);
  }
  report(counts_ok, "sync: rank merge count = sum of the shards' counts (one shard empty)", "");
  report(cref.ok(), "sync: rank merge mean/M2 vs pooled float64 two-pass", cref.text());
  report(cbits.ok(), "sync: rank merge bit-identical to the same fold in rank order on the host", cbits.text());
  std::vector<double> again;
  report(device_merge(packed, R, C, &again) && std::memcmp(again.data(), got.data(), got.size() * 8) == 0,
         "sync: rank merge bit-identical on a second run", "");

  // Every shard empty (their mean/M2 NaN, never read): the whole batch is empty, count 0
  // (the bookkeeping makes NaN statistics of it, as for an empty local batch).
  std::vector<double> empty(static_cast<size_t>(3 * P), NAN);
  for (int r = 0; r < 3; ++r) empty[static_cast<size_t>(r * P)] = 0;
  std::vector<double> e;
  bool all_zero = device_merge(empty, 3, C, &e);
  for (size_t i = 0; all_zero && i < e.size(); ++i) all_zero = e[i] == 0;
  report(all_zero, "sync: rank merge of empty shards only has count 0", "");

  // One rank: its own statistics, bit for bit.
  std::vector<double> one(packed.begin() + 4 * P, packed.begin() + 5 * P), o;
  bool same = device_merge(one, 1, C, &o);
  for (int64_t c = 0; same && c < C; ++c)
    same = o[static_cast<size_t>(c)] == one[0] && std::memcmp(&o[static_cast<size_t>(C + c)], &one[1 + c], 8) == 0 &&
           std::memcmp(&o[static_cast<size_t>(2 * C + c)], &one[1 + C + c], 8) == 0;
  report(same, "sync: rank merge of one rank is that rank's statistics", "");
}

// Device buffers of one forward + backward's outputs, to compare two runs bit for bit.
struct RunOut {
  // stats: 7 float vectors (+1 spare); grads: mean64, m2_64, sum_dy, sum_dy_xmu (double),
  // then dscale, doffset (float).
  Buf y, stats, dx, grads;
};

// A failed copy is a difference (never two equal fill patterns).
bool same_bits(const Buf& a, const Buf& b, size_t bytes) {
  if (bytes == 0) return true;
  std::vector<unsigned char> ha(bytes), hb(bytes);
  return copy_to_host(ha.data(), a.p, bytes, "selftest").ok() && copy_to_host(hb.data(), b.p, bytes, "selftest").ok() &&
         std::memcmp(ha.data(), hb.data(), bytes) == 0;
}

// Which synchronized path a run takes.
enum class Sync { kLocal, kWholeBatch, kNccl };

// One forward (factor 0.1, ε 1e-3, running inputs separate from the outputs so every run
// reads the same) and one training backward from that forward's saved statistics.
// kWholeBatch is given `given` (device: mean64, M2, Σdy, Σdy·(x − μ), C doubles each;
// the backward's sums serve as both the whole batch's and the shard's) with the forward's
// and the backward's counts.
Status run_sync(const ChannelView& v, const float* x, const float* dy, const Buf& scale, const Buf& offset,
                const Buf& rm, const Buf& rv, Sync mode, nccl::Comm* comm, const double* given, double fwd_count,
                double bwd_count, RunOut* o) {
  const int64_t n = v.A * v.C * v.B, C = v.C;
  const size_t nb = static_cast<size_t>(n) * sizeof(float) + 16;
  if (!o->y.alloc(nb) || !o->dx.alloc(nb) || !o->stats.alloc(static_cast<size_t>(C) * 8 * sizeof(float) + 16) ||
      !o->grads.alloc(static_cast<size_t>(C) * (2 * sizeof(float) + 4 * sizeof(double)) + 16))
    return Status::Error(Code::kCudaOutOfMemory, "selftest: allocation");
  float* sv = o->stats.f();
  double* g64 = reinterpret_cast<double*>(o->grads.p);  // mean64, m2_64, sum_dy, sum_dy_xmu
  float* gf = reinterpret_cast<float*>(g64 + 4 * C);     // dscale, doffset
  const double* r64 = given;
  FusedBatchNormArgs a;
  a.view = v;
  a.x = x;
  a.scale = scale.f();
  a.offset = offset.f();
  a.running_mean = rm.f();
  a.running_var = rv.f();
  a.factor = 0.1;
  a.plan = ForwardPlan::kTwoPass;
  a.y = o->y.f();
  a.batch_mean = sv;
  a.batch_var = sv + C;
  a.batch_var_biased = sv + 2 * C;
  a.running_mean_out = sv + 3 * C;
  a.running_var_out = sv + 4 * C;
  a.saved_mean = sv + 5 * C;
  a.saved_inv_std = sv + 6 * C;
  a.mean64 = g64;
  a.m2_64 = g64 + C;
  WholeBatchStats ws{fwd_count, r64, r64 ? r64 + C : nullptr};
  if (mode == Sync::kWholeBatch) a.whole_batch = &ws;
  if (mode == Sync::kNccl) a.nccl = comm;
  BN_TRY(fused_batch_norm(a));
  BatchNormGradArgs g;
  g.view = v;
  g.dy = dy;
  g.x = x;
  g.scale = scale.f();
  g.saved_mean = sv + 5 * C;
  g.saved_inv_std = sv + 6 * C;
  g.dx = o->dx.f();
  g.dscale = gf;
  g.doffset = gf + C;
  g.sum_dy = g64 + 2 * C;
  g.sum_dy_xmu = g64 + 3 * C;
  WholeBatchGradSums wg{bwd_count, r64 ? r64 + 2 * C : nullptr, r64 ? r64 + 3 * C : nullptr, r64 ? r64 + 2 * C : nullptr,
                        r64 ? r64 + 3 * C : nullptr};
  if (mode == Sync::kWholeBatch) g.whole_batch = &wg;
  if (mode == Sync::kNccl) g.nccl = comm;
  BN_TRY(batch_norm_grad(g));
  return synchronize("selftest");
}

bool same_run(const RunOut& a, const RunOut& b, int64_t n, int64_t C) {
  return same_bits(a.y, b.y, static_cast<size_t>(n) * 4) && same_bits(a.dx, b.dx, static_cast<size_t>(n) * 4) &&
         same_bits(a.stats, b.stats, static_cast<size_t>(C) * 7 * 4) &&
         same_bits(a.grads, b.grads, static_cast<size_t>(C) * (4 * 8 + 2 * 4));
}

// Host data through the op the dispatcher calls: whole-batch vectors staged in.
Status run_sync_host_op(const Case& cs, const Host& h, const std::vector<double>* whole, std::vector<float>* out) {
  const ChannelView v = view_of(cs);
  const int64_t n = v.A * v.C * v.B, C = v.C;
  out->assign(static_cast<size_t>(2 * n + 10 * C), 0.f);
  float* y = out->data();
  float* dx = y + n;
  float* st = dx + n;
  FusedArgs f;
  f.layout = ChannelLayout{cs.shape, cs.axis, v.A, v.C, v.B};
  f.x = h.x.data();
  f.scale = h.scale.data();
  f.offset = h.offset.data();
  f.running_mean = h.rmean.data();
  f.running_var = h.rvar.data();
  f.factor = 0.1;
  f.y = y;
  f.batch_mean = st;
  f.batch_var = st + C;
  f.batch_var_biased = st + 2 * C;
  f.running_mean_out = st + 3 * C;
  f.running_var_out = st + 4 * C;
  f.saved_mean = st + 5 * C;
  f.saved_inv_std = st + 6 * C;
  f.mem = Memory::kHost;
  const double cnt = static_cast<double>(v.A) * static_cast<double>(v.B);
  WholeBatchStats ws;
  if (whole) {
    ws = WholeBatchStats{cnt, whole->data(), whole->data() + C};
    f.whole_batch = &ws;
  }
  BN_TRY(fused_batch_norm_op(f));
  GradArgs g;
  g.layout = f.layout;
  g.dy = h.dy.data();
  g.x = h.x.data();
  g.scale = h.scale.data();
  g.saved_mean = st + 5 * C;
  g.saved_inv_std = st + 6 * C;
  g.dx = dx;
  g.dscale = st + 7 * C;
  g.doffset = st + 8 * C;
  g.mem = Memory::kHost;
  WholeBatchGradSums wg;
  if (whole) {
    const double* w = whole->data();
    wg = WholeBatchGradSums{cnt, w + 2 * C, w + 3 * C, w + 2 * C, w + 3 * C};
    g.whole_batch = &wg;
  }
  return batch_norm_grad_op(g);
}

// Whole-batch statistics that are not x's own (the mean moved by 1, M2 four times as
// large; the backward's count twice the shard's, as if a second shard had the same
// sums): every output must follow them, computed on the host with the bookkeeping's
// arithmetic. Catches a path that ignores what it is given.
void check_given_values(const std::string& tag, const ChannelView& v, const Host& h, const float* x, const float* dy,
                        const Buf& bscale, const Buf& boffset, const Buf& brm, const Buf& brv,
                        const std::vector<double>& own) {
  const int64_t n = v.A * v.C * v.B, C = v.C;
  const double cnt = static_cast<double>(v.A) * static_cast<double>(v.B), eps = 1e-3, f = 0.1;
  std::vector<double> given(own);
  for (int64_t c = 0; c < C; ++c) {
    given[static_cast<size_t>(c)] += 1.0;
    given[static_cast<size_t>(C + c)] *= 4.0;
  }
  Buf bg;
  RunOut o;
  if (!upload(bg, given.data(), given.size() * sizeof(double)) ||
      !check_status(run_sync(v, x, dy, bscale, boffset, brm, brv, Sync::kWholeBatch, nullptr,
                             static_cast<const double*>(bg.p), cnt, 2 * cnt, &o),
                    tag + " whole-batch, other statistics"))
    return;
  const auto st = download<float>(o.stats.p, static_cast<size_t>(7 * C));
  const auto y = download<float>(o.y.p, static_cast<size_t>(n));
  const auto dxv = download<float>(o.dx.p, static_cast<size_t>(n));
  const auto gf = download<float>(static_cast<double*>(o.grads.p) + 4 * C, static_cast<size_t>(2 * C));
  Compare cst, cy, cdx, cg;
  std::vector<double> mf(static_cast<size_t>(C)), tinv(static_cast<size_t>(C)), gg(static_cast<size_t>(C)),
      ga(static_cast<size_t>(C)), gb(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    const size_t k = static_cast<size_t>(c);
    const double m2 = given[static_cast<size_t>(C + c)];
    const float mean = static_cast<float>(given[k]);
    const float vb = static_cast<float>(m2 / cnt);
    const float vu = static_cast<float>(m2 / std::max(cnt - 1, 1.0));
    const float want[7] = {mean, vu, vb,
                           static_cast<float>((1 - f) * static_cast<double>(h.rmean[k]) + f * static_cast<double>(mean)),
                           static_cast<float>((1 - f) * static_cast<double>(h.rvar[k]) + f * static_cast<double>(vu)),
                           mean, static_cast<float>(1.0 / std::sqrt(static_cast<double>(vb) + eps))};
    for (int j = 0; j < 7; ++j) cst.add(j * C + c, st[static_cast<size_t>(j * C + c)], want[j], 1e-30);
    mf[k] = mean;
    tinv[k] = static_cast<double>(h.scale[k]) / std::sqrt(static_cast<double>(vb) + eps);
    const double inv = static_cast<double>(want[6]);
    const double s1 = given[static_cast<size_t>(2 * C + c)], s2 = given[static_cast<size_t>(3 * C + c)];
    gg[k] = static_cast<double>(h.scale[k]) * inv;
    ga[k] = s1 / (2 * cnt);
    gb[k] = inv * inv * s2 / (2 * cnt);
    cg.add(c, gf[k], static_cast<float>(inv * s2), 1e-30);        // dscale: the shard's sum
    cg.add(C + c, gf[static_cast<size_t>(C + c)], static_cast<float>(s1), 1e-30);  // doffset
  }
  for (int64_t i = 0; i < n; ++i) {
    const size_t c = static_cast<size_t>((i / v.B) % C), u = static_cast<size_t>(i);
    const double xm = static_cast<double>(h.x[u]) - mf[c];
    cy.add(i, ulp_distance(y[u], static_cast<float>(xm * tinv[c] + h.offset[c])), 0, 2);
    cdx.add(i, ulp_distance(dxv[u], static_cast<float>(gg[c] * (static_cast<double>(h.dy[u]) - ga[c] - xm * gb[c]))), 0,
            2);
  }
  report(cst.ok(), tag + " whole-batch, other statistics: the statistic outputs follow them", cst.text());
  report(cy.ok(), tag + " whole-batch, other statistics: y (ulps)", cy.text());
  report(cg.ok(), tag + " whole-batch, other sums: dscale/doffset are the shard's", cg.text());
  report(cdx.ok(), tag + " whole-batch, other sums and count: dx (ulps)", cdx.text());
}

void check_sync_case(const Case& cs, nccl::Comm* comm) {
  const ChannelView v = view_of(cs);
  const int64_t n = v.A * v.C * v.B, C = v.C;
  const std::string tag = "sync: " + cs.name + " " + shape_text(cs.shape) + " axis " + std::to_string(cs.axis);
  Host h;
  h.x.resize(static_cast<size_t>(n));
  h.dy.resize(static_cast<size_t>(n));
  h.scale.resize(static_cast<size_t>(C));
  h.offset.resize(static_cast<size_t>(C));
  h.rmean.resize(static_cast<size_t>(C));
  h.rvar.resize(static_cast<size_t>(C));
  fill_normal(h.x, cs.data_mean, cs.data_sd, 11);
  fill_normal(h.dy, 0, 1, 12);
  fill_normal(h.scale, 1, 0.5, 13);
  fill_normal(h.offset, 0, 1, 14);
  fill_normal(h.rmean, 0, 1, 15);
  fill_normal(h.rvar, 2, 0.5, 16);
  for (auto& r : h.rvar) r = std::fabs(r);
  if (cs.nan_channel && n > 0) h.x[0] = NAN;
  const size_t shift = cs.misalign ? 1 : 0;
  std::vector<float> xs(static_cast<size_t>(n) + shift, 0.f), dys(static_cast<size_t>(n) + shift, 0.f);
  std::copy(h.x.begin(), h.x.end(), xs.begin() + shift);
  std::copy(h.dy.begin(), h.dy.end(), dys.begin() + shift);
  Buf bx, bdy, bscale, boffset, brm, brv;
  if (!upload(bx, xs.data(), xs.size() * 4) || !upload(bdy, dys.data(), dys.size() * 4) ||
      !upload(bscale, h.scale.data(), C * 4) || !upload(boffset, h.offset.data(), C * 4) ||
      !upload(brm, h.rmean.data(), C * 4) || !upload(brv, h.rvar.data(), C * 4)) {
    report(false, tag, "device allocation or upload failed");
    return;
  }
  const float* x = bx.f() + shift;
  const float* dy = bdy.f() + shift;
  const double cnt = static_cast<double>(v.A) * static_cast<double>(v.B);
  RunOut local, whole;
  if (!check_status(run_sync(v, x, dy, bscale, boffset, brm, brv, Sync::kLocal, nullptr, nullptr, 0, 0, &local),
                    tag + " local forward + backward"))
    return;
  const double* own_dev = static_cast<const double*>(local.grads.p);
  if (check_status(run_sync(v, x, dy, bscale, boffset, brm, brv, Sync::kWholeBatch, nullptr, own_dev, cnt, cnt, &whole),
                   tag + " whole-batch forward + backward"))
    report(same_run(local, whole, n, C), tag + " whole-batch (the shard's own statistics) = local, bit for bit", "");
  if (comm) {
    RunOut viaNccl;
    if (check_status(run_sync(v, x, dy, bscale, boffset, brm, brv, Sync::kNccl, comm, nullptr, 0, 0, &viaNccl),
                     tag + " NCCL one-rank forward + backward"))
      report(same_run(local, viaNccl, n, C), tag + " NCCL one rank = local two-pass, bit for bit", "");
  }
  const auto own = download<double>(local.grads.p, static_cast<size_t>(4 * C));
  if (cnt > 0 && !cs.nan_channel) check_given_values(tag, v, h, x, dy, bscale, boffset, brm, brv, own);
  // Host data through fused_batch_norm_op / batch_norm_grad_op (the staging path).
  std::vector<float> host_local, host_whole;
  if (check_status(run_sync_host_op(cs, h, nullptr, &host_local), tag + " host op") &&
      check_status(run_sync_host_op(cs, h, &own, &host_whole), tag + " host op, whole batch"))
    report(std::memcmp(host_local.data(), host_whole.data(), host_local.size() * 4) == 0,
           tag + " host op: whole-batch (staged) = local, bit for bit", "");
}

// The refusals that need no second rank.
void check_sync_errors(nccl::Comm* comm) {
  const ChannelView v{4, 8, 1};
  Buf bx, by;
  std::vector<float> hx(32, 1.f);
  std::vector<double> h64(16, 0.0);
  Buf b64;
  if (!upload(bx, hx.data(), 128) || !by.alloc(128) || !upload(b64, h64.data(), 128)) {
    report(false, "sync: errors", "device allocation failed");
    return;
  }
  const double* d64 = static_cast<const double*>(b64.p);
  WholeBatchStats ws{4, d64, d64 + 8};
  FusedBatchNormArgs a;
  a.view = v;
  a.x = bx.f();
  a.y = by.f();
  a.whole_batch = &ws;
  a.plan = ForwardPlan::kPersistent;
  report(fused_batch_norm(a).code == Code::kUnsupported, "sync: whole batch with the persistent plan is kUnsupported",
         "");
  a.plan = ForwardPlan::kAuto;
  WholeBatchStats missing_m2{4, d64, nullptr};
  a.whole_batch = &missing_m2;
  report(fused_batch_norm(a).code == Code::kRangeError, "sync: whole batch without M2 is kRangeError", "");
  FusedArgs f;
  f.layout = ChannelLayout{Shape{4, 8}, 1, 4, 8, 1};
  std::vector<float> y(32);
  f.x = hx.data();
  f.y = y.data();
  f.mem = Memory::kHost;
  f.nccl = comm ? comm : reinterpret_cast<nccl::Comm*>(&f);  // refused before it is used
  const Status hs = fused_batch_norm_op(f);
  report(hs.code == Code::kUnsupported, "sync: NCCL with host data is kUnsupported", hs.message);
  f.whole_batch = &ws;
  f.mem = Memory::kDevice;
  f.x = bx.f();
  f.y = by.f();
  report(cudnn_fused_batch_norm_op(f).code == Code::kUnsupported, "sync: cuDNN refuses synchronized statistics", "");
  if (comm) {
    a.whole_batch = &ws;
    a.nccl = comm;
    report(fused_batch_norm(a).code == Code::kRangeError, "sync: whole batch and NCCL together is kRangeError", "");
  }
  (void)synchronize("selftest");
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, timing = true;
  int reps = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--no-timing") timing = false;
    else if (a == "--reps" && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--no-timing] [--reps N]\n", argv[0]);
      return 2;
    }
  }
  const DeviceInfo& d = device_info();
  if (!d.available) {
    std::printf("FAIL  no usable GPU: %s\n", d.reason.c_str());
    return 1;
  }
  std::printf("device: %s (cc %d.%d, %d SMs, %.1f GiB), driver %d, runtime %d\n", d.name.c_str(), d.cc_major,
              d.cc_minor, d.multiprocessors, d.total_memory_bytes / 1073741824.0, d.driver_version, d.runtime_version);
  const cudnn::LoadInfo& cl = cudnn::library();
  std::printf("cuDNN: %s\n", cl.loaded ? ("version " + std::to_string(cl.version) + " from " + cl.path +
                                          (cl.ex ? ", Ex API present" : ", no Ex API: " + cl.ex_reason))
                                                 .c_str()
                                           : cl.reason.c_str());
  std::vector<Case> cases = {
      {"W1", {128, 32, 32, 64}, 3, 0, 1, 0.1, false, false, true},
      {"W2", {32, 256, 56, 56}, 1, 0, 1, 0.1, false, false, !quick},
      {"W3", {256, 64, 112, 112}, 1, 0, 1, 0.1, false, false, true},
      {"W4", {8192, 4096}, 1, 0, 1, 0.1, false, false, true},
      {"W5", {256, 7, 7, 2048}, 3, 0, 1, 0.1, false, false, true},
      {"W6", {64, 1024}, 1, 0, 1, 0.1, false, false, true},
      {"offset 1e4", {64, 16, 16, 32}, 3, 1e4, 1, 1.0},
      {"NCHW offset 1e4", {16, 32, 24, 24}, 1, 1e4, 1, 0.1},
      {"C=3 NHWC", {16, 9, 9, 3}, 3},
      {"odd view", {37, 5, 3}, 1},
      {"NCHW plane 2500", {4, 6, 50, 50}, 1},
      {"NCHW 7x7", {8, 32, 7, 7}, 1},
      {"channel axis 0", {6, 1000}, 0},
      {"rank 5 NDHWC", {2, 4, 6, 6, 12}, 4},
      {"one value per channel", {1, 8}, 1},
      {"empty batch", {0, 8}, 1},
      {"misaligned NHWC", {50, 64}, 1, 0, 1, 0.1, true},
      {"misaligned NCHW", {4, 8, 64, 64}, 1, 0, 1, 0.1, true},
      {"NaN in a channel", {32, 16}, 1, 0, 1, 0.1, false, true},
  };
  for (const Case& c : cases) {
    if (quick && c.name == "W3") continue;
    run_case(c, reps, timing);
  }

  // Synchronized batch norm. NCCL: a one-rank group in this process (the check of
  // several GPUs is scripts/nccl-check.sh).
  check_rank_merge();
  nccl::Comm* comm = nullptr;
  const nccl::LoadInfo nl = nccl::probe("");
  if (nl.loaded) {
    unsigned char id[nccl::kUniqueIdBytes];
    const Status s = nccl::unique_id(id);
    if (check_status(s, "sync: ncclGetUniqueId")) check_status(nccl::comm_init(id, 1, 0, 60.0, &comm), "sync: ncclCommInitRank");
    std::printf("NCCL: version %d from %s%s\n", nl.version, nl.path.c_str(), comm ? ", one-rank communicator" : "");
  } else {
    std::printf("NCCL: %s (the one-rank checks are skipped)\n", nl.reason.c_str());
  }
  check_sync_errors(comm);
  for (const Case& c : cases) {
    if (c.name.size() == 2 && c.name[0] == 'W' && c.name != "W6") continue;  // the large ones: W6 covers [N, C]
    check_sync_case(c, comm);
  }
  nccl::comm_free(comm);
  std::printf("%s: %d failed check(s)\n", failures == 0 ? "PASS" : "FAIL", failures);
  return failures == 0 ? 0 : 1;
}
