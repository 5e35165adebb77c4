// Internal helpers shared by the .cu files: the one stream, error conversion, scratch
// buffers from the caching allocator, and launch-configuration helpers.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "../native/backend_api/cuda.h"

namespace bn {
namespace cuda {

// The stream every op runs on (created on first use). One stream for the whole process
// keeps DeviceTensor producers and consumers ordered without events, and makes block
// reuse in the caching allocator safe.
Status get_stream(cudaStream_t* s, const char* op);

// A CUDA error as a Status: the op, what failed and the CUDA error's name.
inline Status cuda_error(cudaError_t e, const char* op, const char* what) {
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  const Code c = e == cudaErrorMemoryAllocation ? Code::kCudaOutOfMemory : Code::kCuda;
  return Status::Error(c, std::string(op) + ": " + what + " failed: " + cudaGetErrorName(e) + " (" +
                              cudaGetErrorString(e) + ")");
}

// After every kernel launch (PyTorch's C10_CUDA_KERNEL_LAUNCH_CHECK): a bad
// configuration or a missing kernel image shows up here, not at the next sync.
inline Status check_launch(const char* op, const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return Status::Ok();
  return cuda_error(e, op, (std::string("launch of ") + kernel).c_str());
}

#define BN_CUDA_TRY(expr, op, what)                         \
  do {                                                      \
    const cudaError_t bn_e_ = (expr);                       \
    if (bn_e_ != cudaSuccess) return cuda_error(bn_e_, op, what); \
  } while (0)

#define BN_TRY(expr)                  \
  do {                                \
    Status bn_s_ = (expr);            \
    if (!bn_s_.ok()) return bn_s_;    \
  } while (0)

// Scratch device memory from the caching allocator, returned on scope exit (also on
// error paths, so nothing leaks).
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { device_free(p_); }
  Status alloc(size_t bytes, const char* op) {
    device_free(p_);
    p_ = nullptr;
    return device_alloc(bytes, &p_, op);
  }
  template <typename T>
  T* as() const { return static_cast<T*>(p_); }

 private:
  void* p_ = nullptr;
};

// Blocks for grid-stride kernels: enough to fill every SM several times over, never
// more than the work needs (and never more than the 2^31-1 grid limit).
inline unsigned grid_for(int64_t work_items, int threads, int blocks_per_sm = 8) {
  const int64_t sms = device_info().multiprocessors > 0 ? device_info().multiprocessors : 80;
  int64_t b = (work_items + threads - 1) / threads;
  const int64_t cap = sms * blocks_per_sm;
  if (b > cap) b = cap;
  if (b < 1) b = 1;
  return static_cast<unsigned>(b);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Device-side operands of an op after host inputs were copied in.
struct DeviceOperand {
  const float* p = nullptr;
  Scratch copy;  // holds the device copy of a host operand
};

// Makes a device pointer for `n` floats at `src` (copying host data in when needed).
inline Status to_device(const float* src, Memory mem, size_t n, DeviceOperand* out, const char* op) {
  if (src == nullptr || mem == Memory::kDevice || n == 0) {
    out->p = src;
    return Status::Ok();
  }
  BN_TRY(out->copy.alloc(n * sizeof(float), op));
  BN_TRY(copy_to_device(out->copy.as<void>(), src, n * sizeof(float), op));
  out->p = out->copy.as<float>();
  return Status::Ok();
}

inline Status require_device(const char* op) {
  const DeviceInfo& d = device_info();
  if (!d.available)
    return Status::Error(Code::kBackendUnavailable, std::string(op) + ": backend 'cuda' is unavailable: " + d.reason);
  return Status::Ok();
}

}  // namespace cuda
}  // namespace bn
