// Backend-agnostic descriptions of the operations. lib/ has already validated and
// normalized everything (axes sorted and unique, output shapes computed); the binding
// re-checks the invariants these structs rely on before any kernel runs.
#pragma once
#include <cstdint>
#include <vector>

#include "status.h"

namespace bn {

using Shape = std::vector<int64_t>;

inline int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

enum class Backend { kCpu = 0, kCuda = 1, kCudnn = 2 };

// Where a buffer lives: host memory (a Float32Array) or device memory (a DeviceTensor).
enum class Memory { kHost = 0, kDevice = 1 };

struct MomentsArgs {
  const float* x = nullptr;
  Shape shape;              // shape of x
  std::vector<bool> reduce; // reduce[d]: axis d is reduced (same rank as shape)
  double correction = 0;    // variance = M2 / (n - correction)
  float* mean = nullptr;    // prod(kept dims) elements, kept dims in order
  float* variance = nullptr;
  Memory mem = Memory::kHost;  // location of x, mean and variance (always the same)
};

// One operand of batchNormalization: data plus its shape (numpy-broadcast against the
// output shape, aligned to the right). data == nullptr means "absent" (offset 0 / scale 1).
struct Operand {
  const float* data = nullptr;
  Shape shape;
  Memory mem = Memory::kHost;
};

struct BatchNormArgs {
  Operand x, mean, variance, offset, scale;
  double epsilon = 0;
  float* y = nullptr;
  Shape out_shape;  // broadcast of all operand shapes
  Memory mem = Memory::kHost;  // location of y (always that of x)
};

// CPU kernels (native/cpu_*.cc). Multi-threaded, deterministic for any thread count.
Status cpu_moments(const MomentsArgs& a);
Status cpu_batch_norm(const BatchNormArgs& a);

}  // namespace bn
