// The cuDNN path as seen from native/: plain C++, no CUDA or cuDNN headers. Implemented
// by cuda/cudnn_bn.cu (the one module that knows cuDNN's legacy batch-norm API, so that
// a move to the graph API touches one file) and by native/cuda_stub.cc without nvcc.
#pragma once
#include <string>

#include "ops.h"
#include "status.h"

namespace bn {
namespace cudnn {

// Outcome of finding libcudnn: dlopen, dlsym of every symbol, cudnnGetVersion().
struct LoadInfo {
  bool loaded = false;
  int version = 0;    // cudnnGetVersion(), e.g. 90100 for 9.1.0; 0 when not called
  std::string path;   // what was opened (a path or a soname)
  std::string reason; // why not, when !loaded
  // The Ex entry points (cudnnBatchNormalizationForwardTrainingEx / BackwardEx and their
  // size queries), used for NHWC with CUDNN_BATCHNORM_SPATIAL_PERSISTENT; the legacy
  // calls serve every layout when they are missing.
  bool ex = false;
  std::string ex_reason;  // why not, when loaded && !ex
};

// The process's cuDNN, found once at first use (thread-safe): BATCHNORM_CUDNN_PATH (a
// file or a directory) when set, else the sonames on the default search path. Needs no
// GPU: availability of the backend also needs the CUDA backend (backend.cc says so first).
const LoadInfo& library();

// Diagnostic: the same dlopen/dlsym/version logic run afresh on `path` ("" = the
// environment variable or the default sonames), without touching library(). Needs no GPU.
LoadInfo probe(const std::string& path);

// CUDNN_BN_MIN_EPSILON of the cuDNN this package declares (cuda/cudnn_api.h).
double min_epsilon();

// Per-channel (CUDNN_BATCHNORM_SPATIAL) views. x has rank 4 or 5 and its channel axis
// is 1 (NCHW / NCDHW) or the last (NHWC / NDHWC); every vector has C floats.
struct Layout {
  Shape shape;
  int axis = 1;
};

// batchNormalization with per-channel mean/variance/offset/scale along `axis`. Host
// operands are copied in and y copied out (as the cuda backend does).
Status batch_norm_inference(const BatchNormArgs& a, int axis);

// Training forward (TF FusedBatchNormV3 semantics), all pointers device memory:
// y, the batch statistics (mean, unbiased and biased variance), the updated running
// statistics and the saved mean / inverse std for backward. scale/offset: C floats
// (never null; lib passes ones/zeros). running_*: null when factor == 1.
struct FusedForwardArgs {
  Layout x_layout;
  const float* x = nullptr;
  const float* scale = nullptr;
  const float* offset = nullptr;
  const float* running_mean = nullptr;
  const float* running_var = nullptr;
  double epsilon = 0;
  double factor = 1;  // exponentialAvgFactor: running = (1 − f)·running + f·batch
  float* y = nullptr;
  float* batch_mean = nullptr;
  float* batch_var = nullptr;         // unbiased (Bessel-corrected)
  float* batch_var_biased = nullptr;  // what normalized y
  float* running_mean_out = nullptr;
  float* running_var_out = nullptr;
  float* saved_mean = nullptr;
  float* saved_inv_std = nullptr;     // 1/sqrt(biased variance + ε)
  // Optional: device memory of at least training_reserve_size() bytes that receives the
  // Ex forward's reserve space, for the backward to pass on. Null: scratch.
  void* reserve = nullptr;
  size_t reserve_bytes = 0;
};
Status fused_forward(const FusedForwardArgs& a);

// Bytes of reserve space the NHWC Ex path wants for x's layout (0 when the Ex path does
// not apply or wants none).
Status training_reserve_size(const Layout& x_layout, size_t* bytes);

// Why the last training call on the Ex path fell back to the legacy API ("" = it did
// not): an unsupported shape, a cuDNN error, a missing reserve space. For diagnostics.
std::string last_ex_fallback();

// Training backward from the saved statistics; all pointers device memory.
struct BackwardArgs {
  Layout x_layout;
  const float* dy = nullptr;
  const float* x = nullptr;
  const float* scale = nullptr;  // never null (lib passes ones)
  const float* saved_mean = nullptr;
  const float* saved_inv_std = nullptr;
  double epsilon = 0;
  float* dx = nullptr;
  float* dscale = nullptr;
  float* doffset = nullptr;
  // The forward's reserve space (FusedForwardArgs::reserve), when the Ex backward wants one.
  const void* reserve = nullptr;
  size_t reserve_bytes = 0;
};
Status backward(const BackwardArgs& a);

// Environment lifetime: the handle is destroyed when the last environment (main thread
// or worker_thread) that loaded the addon is cleaned up; a later use recreates it.
void attach_environment();
void detach_environment();

}  // namespace cudnn
}  // namespace bn
