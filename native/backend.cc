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
  // Every available backend supports both forward ops; op only names the caller.
  const char* fn = op == Op::kMoments ? "moments" : "batchNormalization";
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
