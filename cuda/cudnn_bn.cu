// The cuDNN path: finding libcudnn at run time, and cuDNN's legacy batch-norm API
// (cudnnBatchNormalizationForward{Inference,Training}, cudnnBatchNormalizationBackward,
// and for NHWC their Ex variants with CUDNN_BATCHNORM_SPATIAL_PERSISTENT; deprecated in
// cuDNN 9 but present in libcudnn.so.9 / libcudnn_ops.so.9). This is the
// only file that calls cuDNN, so a move to the graph API touches it alone.
//
// Loading (TensorFlow's cudnn_stub.cc pattern): dlopen at first use, RTLD_LOCAL, every
// symbol resolved up front, cudnnGetVersion() checked; any failure becomes a reason
// string that backends() reports — never a crash, never a link-time dependency.
//
// Conventions at the boundary (docs/training.md, the conventions table): cuDNN's running
// variance is Bessel-corrected (n/(n−1)) and its update is
// running = (1 − f)·running + f·batch, as TF's FusedBatchNormV3; its saved "inverse
// variance" is 1/sqrt(biased variance + ε), our savedInvStd. The training forward asks
// cuDNN for the batch statistics themselves (factor 1 into zeroed buffers) and applies
// the running update here, so that batchVariance is exact rather than recovered from
// 1/invStd² − ε (which cancels when ε ≫ variance).
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdlib>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "common.cuh"
#include "cudnn_api.h"
#include "dl_library.h"
#include "../native/backend_api/cudnn.h"

namespace bn {
namespace cudnn {
// The stream, allocator, copies and error helpers of our CUDA backend (common.cuh).
using namespace ::bn::cuda;

namespace {

struct Api {
  cudnnGetVersion_t GetVersion = nullptr;
  cudnnGetErrorString_t GetErrorString = nullptr;
  cudnnCreate_t Create = nullptr;
  cudnnDestroy_t Destroy = nullptr;
  cudnnSetStream_t SetStream = nullptr;
  cudnnCreateTensorDescriptor_t CreateTensorDescriptor = nullptr;
  cudnnDestroyTensorDescriptor_t DestroyTensorDescriptor = nullptr;
  cudnnSetTensorNdDescriptor_t SetTensorNdDescriptor = nullptr;
  cudnnDeriveBNTensorDescriptor_t DeriveBNTensorDescriptor = nullptr;
  cudnnBatchNormalizationForwardInference_t BatchNormalizationForwardInference = nullptr;
  cudnnBatchNormalizationForwardTraining_t BatchNormalizationForwardTraining = nullptr;
  cudnnBatchNormalizationBackward_t BatchNormalizationBackward = nullptr;
  // Optional (LoadInfo::ex): the NHWC fast path.
  cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize_t GetBatchNormalizationForwardTrainingExWorkspaceSize =
      nullptr;
  cudnnGetBatchNormalizationBackwardExWorkspaceSize_t GetBatchNormalizationBackwardExWorkspaceSize = nullptr;
  cudnnGetBatchNormalizationTrainingExReserveSpaceSize_t GetBatchNormalizationTrainingExReserveSpaceSize = nullptr;
  cudnnBatchNormalizationForwardTrainingEx_t BatchNormalizationForwardTrainingEx = nullptr;
  cudnnBatchNormalizationBackwardEx_t BatchNormalizationBackwardEx = nullptr;
};

constexpr const char* kMainSoname = "libcudnn.so.9";
// cuDNN 9 splits the library: libcudnn.so.9 is a shim over sub-libraries; the legacy
// batch-norm entry points are implemented in libcudnn_ops.so.9 (which needs
// libcudnn_graph.so.9). Symbols missing from the main library are looked up there.
constexpr const char* kOpsSoname = "libcudnn_ops.so.9";
constexpr const char* kGraphSoname = "libcudnn_graph.so.9";
constexpr int kMinMajor = 9;

using dl::is_directory;
using dl::is_file;
using dl::open_library;
using dl::version_major;
using dl::version_text;

// override_path: "" = the default search path; `source` says where it came from (for reasons).
LoadInfo load(const std::string& override_path, const std::string& source, Api* api) {
  LoadInfo info;
  std::string dir;  // where sibling libraries are looked for; "" = default search path
  std::string main_name = kMainSoname;
  std::string tried;
  if (!override_path.empty()) {
    if (is_directory(override_path)) {
      dir = override_path;
      main_name = dir + "/" + kMainSoname;
    } else {
      main_name = override_path;
      const size_t slash = override_path.rfind('/');
      if (slash != std::string::npos) dir = override_path.substr(0, slash);
    }
    tried = source + override_path;
  } else {
    tried = std::string(kMainSoname) + " on the default library search path";
  }
  // Sub-libraries from the same directory first: the cuDNN 9 shim loads them by soname
  // at first use, and a soname that is already loaded is found even off the search path.
  if (!dir.empty()) {
    for (const char* sib : {kGraphSoname, kOpsSoname}) {
      const std::string p = dir + "/" + sib;
      std::string ignored;
      if (is_file(p)) open_library(p, &ignored);
    }
  }
  std::string err;
  info.path = main_name;
  // A name that exists must be a regular file (a bare soname is left to the search path).
  if (dl::refuses(main_name)) {
    info.reason = std::string(kMainSoname) + " not loaded (tried " + tried + ": not a regular file or a directory)";
    return info;
  }
  void* main = open_library(main_name, &err);
  if (!main) {
    info.reason = std::string(kMainSoname) + " not found (tried " + tried + ": " + err + ")" +
                  (override_path.empty() ? "; set BATCHNORM_CUDNN_PATH to the library or its directory" : "");
    return info;
  }
  void* ops = nullptr;
  bool ops_tried = false;
  std::string ops_name = dir.empty() ? std::string(kOpsSoname) : dir + "/" + kOpsSoname;
  auto resolve = [&](const char* sym, void** out) -> bool {
    dlerror();
    *out = dlsym(main, sym);
    if (*out) return true;
    if (!ops_tried) {
      ops_tried = true;
      std::string ignored;
      if (dir.empty() || is_file(ops_name)) ops = open_library(ops_name, &ignored);
    }
    if (ops) *out = dlsym(ops, sym);
    if (*out) return true;
    info.reason = std::string("symbol ") + sym + " missing from " + main_name +
                  (ops ? " and " + ops_name : "");
    return false;
  };
#define BN_RESOLVE(name)                                                   \
  do {                                                                     \
    void* p_ = nullptr;                                                    \
    if (!resolve("cudnn" #name, &p_)) return info;                         \
    api->name = reinterpret_cast<decltype(api->name)>(p_);                 \
  } while (0)
  // The version first: an old cuDNN is reported as such, not as a list of missing symbols.
  BN_RESOLVE(GetVersion);
  info.version = static_cast<int>(api->GetVersion());
  if (version_major(info.version) < kMinMajor) {
    info.reason = "cuDNN " + version_text(info.version) + " is too old (cudnnGetVersion() = " +
                  std::to_string(info.version) + " from " + main_name + "); the cuDNN path needs cuDNN 9";
    return info;
  }
  BN_RESOLVE(GetErrorString);
  BN_RESOLVE(Create);
  BN_RESOLVE(Destroy);
  BN_RESOLVE(SetStream);
  BN_RESOLVE(CreateTensorDescriptor);
  BN_RESOLVE(DestroyTensorDescriptor);
  BN_RESOLVE(SetTensorNdDescriptor);
  BN_RESOLVE(DeriveBNTensorDescriptor);
  BN_RESOLVE(BatchNormalizationForwardInference);
  BN_RESOLVE(BatchNormalizationForwardTraining);
  BN_RESOLVE(BatchNormalizationBackward);
#undef BN_RESOLVE
  info.loaded = true;
  // The Ex entry points are optional: without them the legacy calls serve NHWC too.
  info.ex = true;
  auto optional = [&](const char* sym, void** out) {
    if (!info.ex) return;
    const std::string keep = info.reason;
    if (!resolve(sym, out)) {
      info.ex = false;
      info.ex_reason = info.reason;
    }
    info.reason = keep;
  };
#define BN_RESOLVE_OPTIONAL(name)                                     \
  do {                                                                \
    void* p_ = nullptr;                                               \
    optional("cudnn" #name, &p_);                                     \
    api->name = reinterpret_cast<decltype(api->name)>(p_);            \
  } while (0)
  BN_RESOLVE_OPTIONAL(GetBatchNormalizationForwardTrainingExWorkspaceSize);
  BN_RESOLVE_OPTIONAL(GetBatchNormalizationBackwardExWorkspaceSize);
  BN_RESOLVE_OPTIONAL(GetBatchNormalizationTrainingExReserveSpaceSize);
  BN_RESOLVE_OPTIONAL(BatchNormalizationForwardTrainingEx);
  BN_RESOLVE_OPTIONAL(BatchNormalizationBackwardEx);
#undef BN_RESOLVE_OPTIONAL
  return info;
}

struct Library {
  LoadInfo info;
  Api api;
};
Library& lib() {
  // Never destroyed (see open_library); loaded once, on first use.
  static Library* l = [] {
    auto* x = new Library;
    const char* env = std::getenv("BATCHNORM_CUDNN_PATH");
    x->info = load(env ? env : "", "BATCHNORM_CUDNN_PATH=", &x->api);
    return x;
  }();
  return *l;
}

// ---- the handle ---------------------------------------------------------------------
// One handle for device 0 and our one stream. cuDNN handles must not be used by two
// threads at once, and async ops run on libuv's pool: every op holds `mu` while it
// enqueues its work (enqueueing is cheap; the GPU runs it later, in stream order).
struct HandleState {
  std::mutex mu;
  cudnnHandle_t handle = nullptr;
  int environments = 0;
};
HandleState& handle_state() {
  static HandleState* h = new HandleState;
  return *h;
}

Status cudnn_error(cudnnStatus_t s, const char* op, const char* what) {
  const char* text = lib().api.GetErrorString ? lib().api.GetErrorString(s) : nullptr;
  return Status::Error(Code::kCudnn, std::string(op) + ": " + what + " failed: " + (text ? text : "unknown error") +
                                         " (cudnnStatus_t " + std::to_string(s) + ")");
}

#define BN_CUDNN_TRY(expr, op, what)                                     \
  do {                                                                   \
    const cudnnStatus_t bn_s_ = (expr);                                  \
    if (bn_s_ != CUDNN_STATUS_SUCCESS) return cudnn_error(bn_s_, op, what); \
  } while (0)

// The caller holds handle_state().mu.
Status get_handle(cudnnHandle_t* out, const char* op) {
  const Library& l = lib();
  if (!l.info.loaded)
    return Status::Error(Code::kBackendUnavailable, std::string(op) + ": backend 'cudnn' is unavailable: " + l.info.reason);
  cudaStream_t stream;
  BN_TRY(get_stream(&stream, op));
  HandleState& h = handle_state();
  if (!h.handle) {
    cudnnHandle_t fresh = nullptr;
    BN_CUDNN_TRY(l.api.Create(&fresh), op, "cudnnCreate");
    const cudnnStatus_t s = l.api.SetStream(fresh, reinterpret_cast<cudnnStream_t>(stream));
    if (s != CUDNN_STATUS_SUCCESS) {
      l.api.Destroy(fresh);
      return cudnn_error(s, op, "cudnnSetStream");
    }
    h.handle = fresh;
  }
  *out = h.handle;
  return Status::Ok();
}

// A tensor descriptor destroyed on scope exit (error paths included).
class TensorDesc {
 public:
  TensorDesc() = default;
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
  ~TensorDesc() {
    if (d_) lib().api.DestroyTensorDescriptor(d_);
  }
  Status create(const char* op) {
    BN_CUDNN_TRY(lib().api.CreateTensorDescriptor(&d_), op, "cudnnCreateTensorDescriptor");
    return Status::Ok();
  }
  cudnnTensorDescriptor_t get() const { return d_; }

 private:
  cudnnTensorDescriptor_t d_ = nullptr;
};

// x's descriptor in cuDNN's logical order (N, C, spatial...) with the strides of our
// row-major layout: NCHW is packed as is, NHWC has C stride 1 (PyTorch describes
// channels_last tensors to cuDNN the same way, through strides).
Status x_descriptor(const Layout& l, TensorDesc* d, const char* op) {
  const int rank = static_cast<int>(l.shape.size());
  if ((rank != 4 && rank != 5) || (l.axis != 1 && l.axis != rank - 1))
    return Status::Error(Code::kUnsupported, std::string(op) + ": cuDNN batch norm takes rank 4 or 5 with the channel "
                                                               "axis 1 (NCHW) or last (NHWC)");
  std::vector<int64_t> stride(rank);
  int64_t s = 1;
  for (int k = rank - 1; k >= 0; --k) {
    stride[k] = s;
    s *= l.shape[k];
  }
  if (s > std::numeric_limits<int>::max())
    return Status::Error(Code::kUnsupported, std::string(op) + ": x has more elements than cuDNN's int32 sizes allow");
  std::vector<int> order = {0, l.axis};
  for (int k = 1; k < rank; ++k)
    if (k != l.axis) order.push_back(k);
  int dims[5], strides[5];
  for (int k = 0; k < rank; ++k) {
    dims[k] = static_cast<int>(l.shape[order[k]]);
    strides[k] = static_cast<int>(stride[order[k]]);
  }
  BN_TRY(d->create(op));
  BN_CUDNN_TRY(lib().api.SetTensorNdDescriptor(d->get(), CUDNN_DATA_FLOAT, rank, dims, strides), op,
               "cudnnSetTensorNdDescriptor");
  return Status::Ok();
}

// The 1×C×1×1(×1) descriptor of the per-channel vectors, derived from x's.
Status bn_descriptor(const TensorDesc& x, TensorDesc* d, const char* op) {
  BN_TRY(d->create(op));
  BN_CUDNN_TRY(lib().api.DeriveBNTensorDescriptor(d->get(), x.get(), CUDNN_BATCHNORM_SPATIAL), op,
               "cudnnDeriveBNTensorDescriptor");
  return Status::Ok();
}

Status check_epsilon(double eps, const char* op) {
  if (!(eps >= CUDNN_BN_MIN_EPSILON))
    return Status::Error(Code::kUnsupported, std::string(op) + ": epsilon " + std::to_string(eps) +
                                                 " is below CUDNN_BN_MIN_EPSILON");
  return Status::Ok();
}

// C floats of value v on the device (ones for an absent scale, zeros for an absent offset).
Status constant_vector(int64_t C, float v, Scratch* s, const char* op) {
  std::vector<float> host(static_cast<size_t>(C), v);
  BN_TRY(s->alloc(host.size() * sizeof(float), op));
  // copy_to_device copies the host data into pinned staging before it returns.
  return copy_to_device(s->as<void>(), host.data(), host.size() * sizeof(float), op);
}

// ---- the Ex path ----------------------------------------------------------------------
// NHWC (channel axis last) goes through cudnnBatchNormalization*Ex with
// CUDNN_BATCHNORM_SPATIAL_PERSISTENT, the mode with channels-last kernels (the legacy
// SPATIAL call runs its NCHW kernel on NHWC strides). BATCHNORM_CUDNN_EX=0 turns it off
// (to compare). A call that cuDNN refuses falls back to the legacy call; the reason is
// kept for last_ex_fallback().
bool ex_wanted(const Layout& l) {
  static const bool off = [] {
    const char* e = std::getenv("BATCHNORM_CUDNN_EX");
    return e && std::string(e) == "0";
  }();
  const int rank = static_cast<int>(l.shape.size());
  return !off && lib().info.ex && (rank == 4 || rank == 5) && l.axis == rank - 1;
}

std::mutex& fallback_mu() {
  static std::mutex* m = new std::mutex;
  return *m;
}
std::string& fallback_text() {
  static std::string* s = new std::string;
  return *s;
}
void note_fallback(const std::string& why) {
  std::lock_guard<std::mutex> lock(fallback_mu());
  fallback_text() = why;
}
std::string cudnn_text(cudnnStatus_t s) {
  const char* t = lib().api.GetErrorString ? lib().api.GetErrorString(s) : nullptr;
  return std::string(t ? t : "unknown error") + " (cudnnStatus_t " + std::to_string(s) + ")";
}

// The caller holds handle_state().mu.
cudnnStatus_t ex_reserve_size(cudnnHandle_t h, const TensorDesc& xd, size_t* bytes) {
  return lib().api.GetBatchNormalizationTrainingExReserveSpaceSize(h, CUDNN_BATCHNORM_SPATIAL_PERSISTENT,
                                                                   CUDNN_BATCHNORM_OPS_BN, nullptr, xd.get(), bytes);
}

// After cudnnBatchNormalizationForwardTraining with factor 1 into batch_mean/batch_var
// (= the batch mean and the unbiased batch variance): the biased variance and the
// running update, in double like the CPU path.
__global__ void fused_forward_finish_kernel(int64_t C, double n, double f, const float* __restrict__ batch_mean,
                                            const float* __restrict__ batch_var, const float* __restrict__ run_mean,
                                            const float* __restrict__ run_var, float* __restrict__ var_biased,
                                            float* __restrict__ run_mean_out, float* __restrict__ run_var_out) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double m = batch_mean[c], v = batch_var[c];
    var_biased[c] = static_cast<float>(v * ((n - 1) / n));
    run_mean_out[c] = f == 1 ? static_cast<float>(m) : static_cast<float>((1 - f) * run_mean[c] + f * m);
    run_var_out[c] = f == 1 ? static_cast<float>(v) : static_cast<float>((1 - f) * run_var[c] + f * v);
  }
}

}  // namespace

const LoadInfo& library() { return lib().info; }

LoadInfo probe(const std::string& path) {
  Api api;
  if (!path.empty()) return load(path, "path ", &api);
  const char* env = std::getenv("BATCHNORM_CUDNN_PATH");
  return load(env ? env : "", "BATCHNORM_CUDNN_PATH=", &api);
}

double min_epsilon() { return CUDNN_BN_MIN_EPSILON; }

Status batch_norm_inference(const BatchNormArgs& a, int axis) {
  const char* op = "batchNormalization";
  BN_TRY(check_epsilon(a.epsilon, op));
  const Layout l{a.x.shape, axis};
  const int64_t n = numel(a.out_shape);
  if (n == 0) return Status::Ok();
  const int64_t C = l.shape[static_cast<size_t>(axis)];
  DeviceOperand x, mean, var, offset, scale;
  BN_TRY(to_device(a.x.data, a.x.mem, static_cast<size_t>(n), &x, op));
  BN_TRY(to_device(a.mean.data, a.mean.mem, static_cast<size_t>(C), &mean, op));
  BN_TRY(to_device(a.variance.data, a.variance.mem, static_cast<size_t>(C), &var, op));
  BN_TRY(to_device(a.offset.data, a.offset.mem, static_cast<size_t>(C), &offset, op));
  BN_TRY(to_device(a.scale.data, a.scale.mem, static_cast<size_t>(C), &scale, op));
  if (!offset.p) {
    BN_TRY(constant_vector(C, 0.f, &offset.copy, op));
    offset.p = offset.copy.as<float>();
  }
  if (!scale.p) {
    BN_TRY(constant_vector(C, 1.f, &scale.copy, op));
    scale.p = scale.copy.as<float>();
  }
  Scratch y_dev;
  float* y = a.y;
  if (a.mem == Memory::kHost) {
    BN_TRY(y_dev.alloc(static_cast<size_t>(n) * sizeof(float), op));
    y = y_dev.as<float>();
  }
  {
    std::lock_guard<std::mutex> lock(handle_state().mu);
    cudnnHandle_t h;
    BN_TRY(get_handle(&h, op));
    TensorDesc xd, bd;
    BN_TRY(x_descriptor(l, &xd, op));
    BN_TRY(bn_descriptor(xd, &bd, op));
    const float one = 1.f, zero = 0.f;
    BN_CUDNN_TRY(lib().api.BatchNormalizationForwardInference(h, CUDNN_BATCHNORM_SPATIAL, &one, &zero, xd.get(), x.p,
                                                              xd.get(), y, bd.get(), scale.p, offset.p, mean.p, var.p,
                                                              a.epsilon),
                 op, "cudnnBatchNormalizationForwardInference");
  }
  if (a.mem == Memory::kHost) BN_TRY(copy_to_host(a.y, y, static_cast<size_t>(n) * sizeof(float), op));
  return Status::Ok();
}

Status fused_forward(const FusedForwardArgs& a) {
  const char* op = "fusedBatchNorm";
  BN_TRY(check_epsilon(a.epsilon, op));
  const Layout& l = a.x_layout;
  const int64_t total = numel(l.shape);
  const int64_t C = l.shape[static_cast<size_t>(l.axis)];
  const int64_t per_channel = C > 0 ? total / C : 0;
  if (total == 0 || per_channel < 2)
    return Status::Error(Code::kUnsupported, std::string(op) + ": cuDNN needs at least 2 values per channel");
  if (a.factor != 1 && (!a.running_mean || !a.running_var))
    return Status::Error(Code::kUnsupported, std::string(op) + ": running statistics are required when factor != 1");
  cudaStream_t stream;
  BN_TRY(get_stream(&stream, op));
  // cuDNN computes running = (1 − 1)·running + 1·batch: zeroed buffers, so that no
  // uninitialized NaN survives the multiplication by 0.
  BN_CUDA_TRY(cudaMemsetAsync(a.batch_mean, 0, static_cast<size_t>(C) * sizeof(float), stream), op, "cudaMemsetAsync");
  BN_CUDA_TRY(cudaMemsetAsync(a.batch_var, 0, static_cast<size_t>(C) * sizeof(float), stream), op, "cudaMemsetAsync");
  {
    std::lock_guard<std::mutex> lock(handle_state().mu);
    cudnnHandle_t h;
    BN_TRY(get_handle(&h, op));
    TensorDesc xd, bd;
    BN_TRY(x_descriptor(l, &xd, op));
    BN_TRY(bn_descriptor(xd, &bd, op));
    const float one = 1.f, zero = 0.f;
    bool done = false;
    Scratch workspace, reserve;
    if (ex_wanted(l)) {
      const Api& api = lib().api;
      size_t ws = 0, rs = 0;
      cudnnStatus_t e = api.GetBatchNormalizationForwardTrainingExWorkspaceSize(
          h, CUDNN_BATCHNORM_SPATIAL_PERSISTENT, CUDNN_BATCHNORM_OPS_BN, xd.get(), nullptr, xd.get(), bd.get(), nullptr,
          &ws);
      if (e == CUDNN_STATUS_SUCCESS) e = ex_reserve_size(h, xd, &rs);
      if (e != CUDNN_STATUS_SUCCESS) {
        note_fallback(std::string(op) + ": Ex size query failed: " + cudnn_text(e));
      } else {
        BN_TRY(workspace.alloc(ws, op));
        void* rp = a.reserve;
        if (rs > 0 && (!a.reserve || a.reserve_bytes < rs)) {
          BN_TRY(reserve.alloc(rs, op));
          rp = reserve.as<void>();
        }
        e = api.BatchNormalizationForwardTrainingEx(
            h, CUDNN_BATCHNORM_SPATIAL_PERSISTENT, CUDNN_BATCHNORM_OPS_BN, &one, &zero, xd.get(), a.x, nullptr, nullptr,
            xd.get(), a.y, bd.get(), a.scale, a.offset, 1.0, a.batch_mean, a.batch_var, a.epsilon, a.saved_mean,
            a.saved_inv_std, nullptr, workspace.as<void>(), ws, rs > 0 ? rp : nullptr, rs);
        if (e == CUDNN_STATUS_SUCCESS) {
          done = true;
          note_fallback("");
        } else {
          note_fallback(std::string(op) + ": cudnnBatchNormalizationForwardTrainingEx failed: " + cudnn_text(e));
        }
      }
    }
    if (!done)
      BN_CUDNN_TRY(lib().api.BatchNormalizationForwardTraining(h, CUDNN_BATCHNORM_SPATIAL, &one, &zero, xd.get(), a.x,
                                                               xd.get(), a.y, bd.get(), a.scale, a.offset, 1.0,
                                                               a.batch_mean, a.batch_var, a.epsilon, a.saved_mean,
                                                               a.saved_inv_std),
                   op, "cudnnBatchNormalizationForwardTraining");
  }
  const int threads = 256;
  fused_forward_finish_kernel<<<grid_for(C, threads), threads, 0, stream>>>(
      C, static_cast<double>(per_channel), a.factor, a.batch_mean, a.batch_var, a.running_mean, a.running_var,
      a.batch_var_biased, a.running_mean_out, a.running_var_out);
  return check_launch(op, "fused_forward_finish_kernel");
}

Status backward(const BackwardArgs& a) {
  const char* op = "batchNormalizationGrad";
  BN_TRY(check_epsilon(a.epsilon, op));
  const Layout& l = a.x_layout;
  if (numel(l.shape) == 0) return Status::Ok();
  std::lock_guard<std::mutex> lock(handle_state().mu);
  cudnnHandle_t h;
  BN_TRY(get_handle(&h, op));
  TensorDesc xd, bd;
  BN_TRY(x_descriptor(l, &xd, op));
  BN_TRY(bn_descriptor(xd, &bd, op));
  const float one = 1.f, zero = 0.f;
  if (ex_wanted(l)) {
    const Api& api = lib().api;
    size_t ws = 0, rs = 0;
    cudnnStatus_t e = api.GetBatchNormalizationBackwardExWorkspaceSize(
        h, CUDNN_BATCHNORM_SPATIAL_PERSISTENT, CUDNN_BATCHNORM_OPS_BN, xd.get(), nullptr, xd.get(), nullptr, xd.get(),
        bd.get(), nullptr, &ws);
    if (e == CUDNN_STATUS_SUCCESS) e = ex_reserve_size(h, xd, &rs);
    if (e != CUDNN_STATUS_SUCCESS) {
      note_fallback(std::string(op) + ": Ex size query failed: " + cudnn_text(e));
    } else if (rs > 0 && (!a.reserve || a.reserve_bytes < rs)) {
      // The reserve space carries state from the forward call; without it, the legacy call.
      note_fallback(std::string(op) + ": the Ex backward needs the forward's reserve space (" + std::to_string(rs) +
                    " bytes)");
    } else {
      Scratch workspace;
      BN_TRY(workspace.alloc(ws, op));
      e = api.BatchNormalizationBackwardEx(h, CUDNN_BATCHNORM_SPATIAL_PERSISTENT, CUDNN_BATCHNORM_OPS_BN, &one, &zero,
                                           &one, &zero, xd.get(), a.x, nullptr, nullptr, xd.get(), a.dy, nullptr,
                                           nullptr, xd.get(), a.dx, bd.get(), a.scale, nullptr, a.dscale, a.doffset,
                                           a.epsilon, a.saved_mean, a.saved_inv_std, nullptr, workspace.as<void>(), ws,
                                           rs > 0 ? const_cast<void*>(a.reserve) : nullptr, rs);
      if (e == CUDNN_STATUS_SUCCESS) {
        note_fallback("");
        return Status::Ok();
      }
      note_fallback(std::string(op) + ": cudnnBatchNormalizationBackwardEx failed: " + cudnn_text(e));
    }
  }
  // With savedMean/savedInvVariance given, cuDNN uses them instead of recomputing; ε is
  // passed as the forward's (cuDNN asks for the same value in both).
  BN_CUDNN_TRY(lib().api.BatchNormalizationBackward(h, CUDNN_BATCHNORM_SPATIAL, &one, &zero, &one, &zero, xd.get(), a.x,
                                                    xd.get(), a.dy, xd.get(), a.dx, bd.get(), a.scale, a.dscale,
                                                    a.doffset, a.epsilon, a.saved_mean, a.saved_inv_std),
               op, "cudnnBatchNormalizationBackward");
  return Status::Ok();
}

Status training_reserve_size(const Layout& l, size_t* bytes) {
  const char* op = "fusedBatchNorm";
  *bytes = 0;
  if (!ex_wanted(l)) return Status::Ok();
  std::lock_guard<std::mutex> lock(handle_state().mu);
  cudnnHandle_t h;
  BN_TRY(get_handle(&h, op));
  TensorDesc xd;
  BN_TRY(x_descriptor(l, &xd, op));
  BN_CUDNN_TRY(ex_reserve_size(h, xd, bytes), op, "cudnnGetBatchNormalizationTrainingExReserveSpaceSize");
  return Status::Ok();
}

std::string last_ex_fallback() {
  std::lock_guard<std::mutex> lock(fallback_mu());
  return fallback_text();
}

void attach_environment() {
  HandleState& h = handle_state();
  std::lock_guard<std::mutex> lock(h.mu);
  h.environments += 1;
}

void detach_environment() {
  HandleState& h = handle_state();
  std::lock_guard<std::mutex> lock(h.mu);
  if (--h.environments > 0 || !h.handle) return;
  // The last environment is going away: finish queued work, then destroy the handle.
  synchronize("cudnn cleanup");
  lib().api.Destroy(h.handle);
  h.handle = nullptr;
}

}  // namespace cudnn
}  // namespace bn
