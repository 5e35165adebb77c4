#include "backend.h"

#include "../cuda/cuda_backend.h"

namespace bn {

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::kCpu: return "cpu";
    case Backend::kCuda: return "cuda";
    case Backend::kCudnn: return "cudnn";
  }
  return "?";
}

namespace {

// Why a GPU backend cannot run anything in this process, or "" when it can.
std::string cuda_unavailable_reason() {
  const cuda::DeviceInfo& d = cuda::device_info();
  return d.available ? "" : d.reason;
}

std::string cudnn_unavailable_reason() {
  const std::string cuda = cuda_unavailable_reason();
  if (!cuda.empty()) return "needs the CUDA backend: " + cuda;
  return "the cuDNN path is not part of this version";
}

std::string unavailable_reason(Backend b) {
  switch (b) {
    case Backend::kCpu: return "";
    case Backend::kCuda: return cuda_unavailable_reason();
    case Backend::kCudnn: return cudnn_unavailable_reason();
  }
  return "unknown backend";
}

}  // namespace

std::vector<BackendInfo> backend_infos() {
  std::vector<BackendInfo> v;
  for (Backend b : {Backend::kCpu, Backend::kCuda, Backend::kCudnn}) {
    std::string r = unavailable_reason(b);
    v.push_back({backend_name(b), r.empty(), r});
  }
  return v;
}

Status select_backend(Op op, int requested, Backend* chosen, std::string* why, Memory data) {
  // Every available backend supports both forward ops; op names the caller.
  const char* fn = op == Op::kMoments ? "moments" : op == Op::kBatchNorm ? "batchNormalization" : "batchNormalizationGrad";
  if (op == Op::kTraining) {
    // The backward kernels exist for the CPU only in this version.
    if (requested > 0 && unavailable_reason(static_cast<Backend>(requested)).empty())
      return Status::Error(Code::kUnsupported, std::string(fn) + ": backend '" +
                                                   backend_name(static_cast<Backend>(requested)) +
                                                   "' has no training kernels in this version; use 'cpu'");
    if (requested < 0) {
      *chosen = Backend::kCpu;
      *why = "auto: 'cpu' (training kernels run on the CPU in this version)";
      return Status::Ok();
    }
  }
  if (requested >= 0) {
    const Backend b = static_cast<Backend>(requested);
    const std::string r = unavailable_reason(b);
    if (!r.empty())
      return Status::Error(Code::kBackendUnavailable, std::string(fn) + ": backend '" + backend_name(b) +
                                                          "' is unavailable: " + r);
    // The CPU cannot read GPU memory; a silent download would hide a PCIe round trip.
    if (b == Backend::kCpu && data == Memory::kDevice)
      return Status::Error(Code::kUnsupported, std::string(fn) +
                                                   ": backend 'cpu' cannot read DeviceTensor inputs; "
                                                   "download() them first or use backend 'cuda'");
    *chosen = b;
    *why = std::string("requested '") + backend_name(b) + "'";
    return Status::Ok();
  }
  // 'auto' runs where the data lives: these ops are memory-bound, so a GPU pays only
  // when the data is already there, and host data gains nothing from a PCIe round trip.
  const std::string cuda = unavailable_reason(Backend::kCuda);
  const std::string cudnn = unavailable_reason(Backend::kCudnn);
  if (data == Memory::kDevice) {
    if (!cuda.empty())
      return Status::Error(Code::kBackendUnavailable, std::string(fn) +
                                                          ": inputs are DeviceTensors but backend 'cuda' is unavailable: " +
                                                          cuda);
    *chosen = Backend::kCuda;
    *why = "auto: 'cuda' (inputs are DeviceTensors in GPU memory; cudnn: " + cudnn + ")";
    return Status::Ok();
  }
  *chosen = Backend::kCpu;
  *why = std::string("auto: 'cpu' (inputs are host Float32Arrays: memory-bound ops gain nothing from a PCIe "
                     "round trip; cuda: ") +
         (cuda.empty() ? "available, used for DeviceTensor inputs or backend 'cuda'" : cuda) +
         "; cudnn: " + cudnn + ")";
  return Status::Ok();
}

Status run_channel_grad_sums(Backend b, const ChannelGradArgs& p, double* sum_dy, double* sum_dy_xmu) {
  if (b == Backend::kCpu) return cpu_channel_grad_sums(p, sum_dy, sum_dy_xmu);
  return Status::Error(Code::kBackendUnavailable, std::string("batchNormalizationGrad: backend '") +
                                                      backend_name(b) + "' is unavailable: " + unavailable_reason(b));
}

Status run_channel_grad_apply(Backend b, const ChannelGradArgs& p, const double* g, const double* a,
                              const double* bb, float* dx) {
  if (b == Backend::kCpu) return cpu_channel_grad_apply(p, g, a, bb, dx);
  return Status::Error(Code::kBackendUnavailable, std::string("batchNormalizationGrad: backend '") +
                                                      backend_name(b) + "' is unavailable: " + unavailable_reason(b));
}

Status run_moments(Backend b, const MomentsArgs& a) {
  if (b == Backend::kCpu && a.mem == Memory::kHost) return cpu_moments(a);
  if (a.mean64)  // sufficientStatistics / fusedBatchNorm's float64 statistics
    return Status::Error(Code::kUnsupported, std::string("moments: float64 sufficient statistics are computed by the "
                                                         "'cpu' backend only in this version, not '") +
                                                 backend_name(b) + "'");
  if (b == Backend::kCuda && unavailable_reason(b).empty()) return cuda::moments(a);
  return Status::Error(Code::kBackendUnavailable, std::string("moments: backend '") + backend_name(b) +
                                                      "' is unavailable: " + unavailable_reason(b));
}

Status run_batch_norm(Backend b, const BatchNormArgs& a) {
  if (b == Backend::kCpu && a.mem == Memory::kHost && a.x.mem == Memory::kHost && a.mean.mem == Memory::kHost &&
      a.variance.mem == Memory::kHost && a.offset.mem == Memory::kHost && a.scale.mem == Memory::kHost)
    return cpu_batch_norm(a);
  if (b == Backend::kCuda && unavailable_reason(b).empty()) return cuda::batch_norm(a);
  return Status::Error(Code::kBackendUnavailable, std::string("batchNormalization: backend '") +
                                                      backend_name(b) + "' is unavailable: " +
                                                      unavailable_reason(b));
}

}  // namespace bn
