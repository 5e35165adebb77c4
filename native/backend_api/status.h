// Status values returned by every kernel and backend entry point.
// Kernels never throw and never touch JS values (docs/ARCHITECTURE.md);
// only the binding (addon.cc) turns a Status into a JS error.
#pragma once
#include <string>
#include <utility>

namespace bn {

enum class Code {
  kOk = 0,
  kTypeError,           // -> TypeError
  kRangeError,          // -> RangeError
  kBackendUnavailable,  // -> BackendError ERR_BACKEND_UNAVAILABLE
  kOutOfMemory,         // -> BackendError ERR_OUT_OF_MEMORY (host)
  kCuda,                // -> BackendError ERR_CUDA
  kCudaOutOfMemory,     // -> BackendError ERR_CUDA_OUT_OF_MEMORY
  kCudnn,               // -> BackendError ERR_CUDNN
  kUnsupported,         // -> BackendError ERR_UNSUPPORTED (backend cannot do this call)
  kNccl,                // -> BackendError ERR_NCCL
};

struct Status {
  Code code = Code::kOk;
  std::string message;

  static Status Ok() { return {}; }
  static Status Error(Code c, std::string m) { return {c, std::move(m)}; }
  bool ok() const { return code == Code::kOk; }
};

// The string code that BackendError carries in JS.
inline const char* backend_error_code(Code c) {
  switch (c) {
    case Code::kBackendUnavailable: return "ERR_BACKEND_UNAVAILABLE";
    case Code::kOutOfMemory: return "ERR_OUT_OF_MEMORY";
    case Code::kCuda: return "ERR_CUDA";
    case Code::kCudaOutOfMemory: return "ERR_CUDA_OUT_OF_MEMORY";
    case Code::kCudnn: return "ERR_CUDNN";
    case Code::kUnsupported: return "ERR_UNSUPPORTED";
    case Code::kNccl: return "ERR_NCCL";
    default: return "ERR_INTERNAL";
  }
}

}  // namespace bn
