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
  if (!d.available) return d.reason;
  // Device discovery works, but this version ships no CUDA kernels yet.
  return "CUDA device " + d.name + " found, but this version of batchnorm has no CUDA kernels";
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

Status select_backend(Op op, int requested, Backend* chosen, std::string* why) {
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
    *chosen = b;
    *why = std::string("requested '") + backend_name(b) + "'";
    return Status::Ok();
  }
  // 'auto': the first available of cudnn, cuda, cpu; each skip says why.
  std::string skipped;
  for (Backend b : {Backend::kCudnn, Backend::kCuda}) {
    const std::string r = unavailable_reason(b);
    if (r.empty()) {
      *chosen = b;
      *why = std::string("auto: '") + backend_name(b) + "' is available";
      return Status::Ok();
    }
    skipped += std::string("; ") + backend_name(b) + ": " + r;
  }
  *chosen = Backend::kCpu;
  *why = "auto: 'cpu' (no GPU backend available" + skipped + ")";
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
  if (b == Backend::kCpu) return cpu_moments(a);
  return Status::Error(Code::kBackendUnavailable, std::string("moments: backend '") + backend_name(b) +
                                                      "' is unavailable: " + unavailable_reason(b));
}

Status run_batch_norm(Backend b, const BatchNormArgs& a) {
  if (b == Backend::kCpu) return cpu_batch_norm(a);
  return Status::Error(Code::kBackendUnavailable, std::string("batchNormalization: backend '") +
                                                      backend_name(b) + "' is unavailable: " +
                                                      unavailable_reason(b));
}

}  // namespace bn
