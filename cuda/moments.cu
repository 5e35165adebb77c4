// CUDA moments: the statistics plans of cuda/stats.cuh with a sink that writes
// mean/variance (and, when asked, the float64 sufficient statistics mean and M2).
#include <cuda_runtime.h>

#include <cmath>

#include "common.cuh"
#include "stats.cuh"

namespace bn {
namespace cuda {

namespace {

using stats::Stats;

// The CPU's write_result: NaN statistics for an empty reduction or n <= correction; the
// float64 pair (mean, M2) as sufficientStatistics returns it.
struct MomentsSink {
  float* mean;
  float* var;
  double* mean64;  // null = not wanted
  double* m2_64;
  double correction;
  __device__ __forceinline__ void operator()(long long o, const Stats& s) const {
    const double nan_ = nan("");
    const double denom = s.n - correction;
    mean[o] = static_cast<float>(s.n > 0 ? s.mean : nan_);
    var[o] = static_cast<float>(s.n > 0 && denom > 0 ? s.m2 / denom : nan_);
    if (mean64) {
      mean64[o] = s.n > 0 ? s.mean : nan_;
      m2_64[o] = s.n > 0 ? s.m2 : nan_;
    }
  }
};

}  // namespace

Status moments(const MomentsArgs& a) {
  const char* op = "moments";
  cudaStream_t st;
  BN_TRY(get_stream(&st, op));
  if (a.mem == Memory::kDevice) {
    const MomentsSink sink{a.mean, a.variance, a.mean64, a.m2_64, a.correction};
    return stats::launch_stats(a.shape, a.reduce, a.x, sink, st, op);
  }
  // Host arrays: copy in, compute, copy out.
  int64_t kept = 1;
  for (size_t d = 0; d < a.shape.size(); ++d)
    if (!a.reduce[d]) kept *= a.shape[d];
  const size_t n = static_cast<size_t>(numel(a.shape));
  const size_t k = static_cast<size_t>(kept);
  DeviceOperand x;
  BN_TRY(to_device(a.x, Memory::kHost, n, &x, op));
  const bool want64 = a.mean64 != nullptr;
  Scratch out, out64;
  BN_TRY(out.alloc(2 * k * sizeof(float), op));
  if (want64) BN_TRY(out64.alloc(2 * k * sizeof(double), op));
  MomentsSink sink{out.as<float>(), out.as<float>() + k, nullptr, nullptr, a.correction};
  if (want64) {
    sink.mean64 = out64.as<double>();
    sink.m2_64 = sink.mean64 + k;
  }
  BN_TRY(stats::launch_stats(a.shape, a.reduce, x.p, sink, st, op));
  BN_TRY(copy_to_host(a.mean, sink.mean, k * sizeof(float), op));
  BN_TRY(copy_to_host(a.variance, sink.var, k * sizeof(float), op));
  if (want64) {
    BN_TRY(copy_to_host(a.mean64, sink.mean64, k * sizeof(double), op));
    BN_TRY(copy_to_host(a.m2_64, sink.m2_64, k * sizeof(double), op));
  }
  return Status::Ok();
}

}  // namespace cuda
}  // namespace bn
