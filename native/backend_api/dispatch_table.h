// Which backend 'auto' picks for a training op on device data, per call shape, from
// measurements: scripts/gpu-check.sh times our kernels and cuDNN on its workloads and
// rewrites the entries between the markers below; the repo commits the result. A shape
// with no entry runs on our kernels.
#pragma once
#include <cstdint>

namespace bn {
namespace cuda {

struct DispatchEntry {
  const char* op;        // "fusedBatchNorm" or "batchNormalizationGrad"; null ends the table
  int rank;
  int64_t shape[8];
  int axis;              // channel axis
  const char* backend;   // the faster one: "cuda" or "cudnn"
  double cuda_ms;        // median milliseconds of each, same run
  double cudnn_ms;
  const char* card;      // the GPU that measured it
};

// clang-format off
inline constexpr DispatchEntry kDispatchTable[] = {
    // BEGIN MEASURED ENTRIES
    // END MEASURED ENTRIES
    {nullptr, 0, {}, 0, nullptr, 0, 0, nullptr},
};
// clang-format on

}  // namespace cuda
}  // namespace bn
