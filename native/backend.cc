#include "backend.h"

#include <cstdio>
#include <cstdlib>
#include <limits>

#include "backend_api/cuda.h"
#include "backend_api/cudnn.h"
#include "backend_api/dispatch_table.h"

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
  return cudnn::library().loaded ? "" : cudnn::library().reason;
}

std::string unavailable_reason(Backend b) {
  switch (b) {
    case Backend::kCpu: return "";
    case Backend::kCuda: return cuda_unavailable_reason();
    case Backend::kCudnn: return cudnn_unavailable_reason();
  }
  return "unknown backend";
}

// ---- cuDNN as one backend ----------------------------------------------------------

// BATCHNORM_PREFER_CUDNN=1: 'auto' also picks cudnn for batchNormalization on device
// data (our kernel is the default there). The training ops follow the measured table.
bool prefer_cudnn_inference() {
  static const bool p = [] {
    const char* e = std::getenv("BATCHNORM_PREFER_CUDNN");
    return e && std::string(e) == "1";
  }();
  return p;
}

const char* op_name(Op op) {
  switch (op) {
    case Op::kMoments: return "moments";
    case Op::kBatchNorm: return "batchNormalization";
    case Op::kTraining: return "channelGradSums";
    case Op::kFusedForward: return "fusedBatchNorm";
    case Op::kFusedBackward: return "batchNormalizationGrad";
  }
  return "?";
}

// cuDNN's training routines compute their own batch statistics and reductions: they
// cannot take the whole batch's of a synchronized call.
const char* synchronized_reason() {
  return "cuDNN computes the shard's own statistics; synchronized batch norm (options.wholeBatch or options.nccl) "
         "runs on 'cpu' (host data) or 'cuda'";
}

// Whether the cuDNN path can run a call: "" when every condition holds, else the first
// one that fails — one condition per line, as PyTorch's _select_batch_norm_backend
// (aten/src/ATen/native/Normalization.cpp), whose size limits are taken over.
std::string cudnn_rejects(Op op, const CallInfo* c, Memory data, bool automatic) {
  const bool training = op == Op::kFusedForward || op == Op::kFusedBackward;
  const std::string lib = cudnn_unavailable_reason();
  if (!lib.empty()) return lib;
  if (automatic && data != Memory::kDevice) return "inputs are host Float32Arrays";
  if (op != Op::kBatchNorm && !training) return std::string("cuDNN has no routine for ") + op_name(op);
  if (!c) return "the call's shapes are not known (explain without options.shape)";
  if (training && c->synchronized) return synchronized_reason();
  if (training && !c->training)
    return op == Op::kFusedForward ? "cuDNN's training forward computes batch statistics (isTraining false: use 'cuda')"
                                   : "cuDNN's backward assumes batch statistics (isTraining false: use 'cuda')";
  const size_t rank = c->shape.size();
  if (rank != 4 && rank != 5) return "x has rank " + std::to_string(rank) + "; cuDNN batch norm takes rank 4 or 5";
  if (c->channel_axis != 1 && c->channel_axis != static_cast<int>(rank) - 1)
    return "the parameters are not per-channel vectors of axis 1 (NCHW) or the last axis (NHWC)";
  if (!c->same_shape) return "x is broadcast to the output shape";
  if (!(c->epsilon >= cudnn::min_epsilon())) return "epsilon is below CUDNN_BN_MIN_EPSILON";
  const int64_t n = numel(c->shape);
  if (n == 0) return "x is empty";
  if (n >= std::numeric_limits<int32_t>::max()) return "x has 2^31 - 1 elements or more (cuDNN's 32-bit indexing)";
  if (training && c->shape[0] > 880801) return "batch size above 880801 (cuDNN's limit in training)";
  if (!training && c->shape[0] > 65535) return "batch size above 65535 (cuDNN's limit in inference)";
  if (op == Op::kFusedForward && n / c->shape[static_cast<size_t>(c->channel_axis)] < 2)
    return "fewer than 2 values per channel (the unbiased variance divides by n - 1)";
  return "";
}

// The measured table's entry for a call, or null (cuda/dispatch_table.h).
const cuda::DispatchEntry* measured_entry(Op op, const CallInfo* c) {
  if (!c) return nullptr;
  const std::string name = op_name(op);
  for (const cuda::DispatchEntry* e = cuda::kDispatchTable; e->op; ++e) {
    if (name != e->op || e->axis != c->channel_axis || static_cast<size_t>(e->rank) != c->shape.size()) continue;
    bool same = true;
    for (size_t i = 0; i < c->shape.size() && same; ++i) same = e->shape[i] == c->shape[i];
    if (same) return e;
  }
  return nullptr;
}

std::string fmt_ms(double ms) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4g ms", ms);
  return b;
}

// fusedBatchNorm and batchNormalizationGrad, host or device data.
Status select_training(Op op, int requested, Backend* chosen, std::string* why, Memory data, const CallInfo* call) {
  const std::string fn = op_name(op);
  if (requested >= 0) {
    const Backend b = static_cast<Backend>(requested);
    // Whatever the machine has: cuDNN can never run a synchronized call.
    if (b == Backend::kCudnn && call && call->synchronized)
      return Status::Error(Code::kUnsupported, fn + ": backend 'cudnn' cannot run this call: " + synchronized_reason());
    const std::string r = unavailable_reason(b);
    if (!r.empty())
      return Status::Error(Code::kBackendUnavailable, fn + ": backend '" + backend_name(b) + "' is unavailable: " + r);
    if (b == Backend::kCpu && data == Memory::kDevice)
      return Status::Error(Code::kUnsupported, fn + ": backend 'cpu' cannot read DeviceTensor inputs; download() them "
                                                    "first or use backend 'cuda' or 'cudnn'");
    if (b == Backend::kCudnn) {
      const std::string no = cudnn_rejects(op, call, data, false);
      if (!no.empty()) return Status::Error(Code::kUnsupported, fn + ": backend 'cudnn' cannot run this call: " + no);
    }
    *chosen = b;
    *why = std::string("requested '") + backend_name(b) + "'";
    return Status::Ok();
  }
  const std::string cuda = unavailable_reason(Backend::kCuda);
  if (data == Memory::kHost) {
    *chosen = Backend::kCpu;
    *why = std::string("auto: 'cpu' (inputs are host Float32Arrays: memory-bound ops gain nothing from a PCIe "
                       "round trip; cuda: ") +
           (cuda.empty() ? "available, used for DeviceTensor inputs or backend 'cuda'" : cuda) + ")";
    return Status::Ok();
  }
  if (!cuda.empty())
    return Status::Error(Code::kBackendUnavailable,
                         fn + ": inputs are DeviceTensors but backend 'cuda' is unavailable: " + cuda);
  const std::string no = cudnn_rejects(op, call, data, true);
  const cuda::DispatchEntry* e = measured_entry(op, call);
  if (e && no.empty() && std::string(e->backend) == "cudnn") {
    *chosen = Backend::kCudnn;
    *why = "auto: 'cudnn' (measured table entry on " + std::string(e->card) + ": cudnn " + fmt_ms(e->cudnn_ms) +
           ", ours " + fmt_ms(e->cuda_ms) + ")";
    return Status::Ok();
  }
  *chosen = Backend::kCuda;
  if (e)
    *why = "auto: 'cuda' (measured table entry on " + std::string(e->card) + ": ours " + fmt_ms(e->cuda_ms) +
           ", cudnn " + fmt_ms(e->cudnn_ms) + (no.empty() ? "" : "; cudnn: " + no) + ")";
  else
    *why = "auto: 'cuda' (no measured table entry for this shape; our kernels by default" +
           (no.empty() ? std::string() : "; cudnn: " + no) + ")";
  return Status::Ok();
}

// The one non-broadcast axis of a parameter's shape aligned right against x, or -1.
int vector_axis(const Shape& p, const Shape& x) {
  if (p.size() > x.size()) return -1;
  const size_t off = x.size() - p.size();
  int axis = -1;
  for (size_t i = 0; i < p.size(); ++i) {
    const int64_t xd = x[off + i];
    if (p[i] == 1) continue;  // broadcast (or an extent-1 axis of x)
    if (p[i] != xd || axis >= 0) return -1;
    axis = static_cast<int>(off + i);
  }
  return axis;
}

}  // namespace

CallInfo batch_norm_call_info(const BatchNormArgs& a) {
  CallInfo c;
  c.shape = a.x.shape;
  c.epsilon = a.epsilon;
  c.same_shape = a.x.shape == a.out_shape;
  int axis = -1;
  for (const Operand* p : {&a.mean, &a.variance, &a.offset, &a.scale}) {
    if (!p->data) continue;  // absent offset / scale (0 / 1)
    const int k = vector_axis(p->shape, c.shape);
    if (k < 0 || (axis >= 0 && k != axis)) return c;
    axis = k;
  }
  c.channel_axis = axis;
  return c;
}

std::vector<BackendInfo> backend_infos() {
  std::vector<BackendInfo> v;
  for (Backend b : {Backend::kCpu, Backend::kCuda, Backend::kCudnn}) {
    std::string r = unavailable_reason(b);
    v.push_back({backend_name(b), r.empty(), r});
  }
  return v;
}

Status select_backend(Op op, int requested, Backend* chosen, std::string* why, Memory data, const CallInfo* call) {
  if (op == Op::kFusedForward || op == Op::kFusedBackward) return select_training(op, requested, chosen, why, data, call);
  // Every available backend supports both forward ops; op names the caller.
  const char* fn = op_name(op);
  if (op == Op::kTraining) {
    // channelGradSums (the synchronized backward's shard sums) takes host data and runs
    // on the CPU; batchNormalizationGrad itself runs on every backend.
    if (requested > 0 && unavailable_reason(static_cast<Backend>(requested)).empty())
      return Status::Error(Code::kUnsupported, std::string(fn) + ": backend '" +
                                                   backend_name(static_cast<Backend>(requested)) +
                                                   "' does not run the channel gradient sums; use 'cpu'");
    if (requested < 0) {
      *chosen = Backend::kCpu;
      *why = "auto: 'cpu' (the channel gradient sums run on the CPU)";
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
    // cuDNN: batchNormalization with per-channel parameters only (no moments routine).
    // (explain without a call shape: the op itself re-checks in run_batch_norm)
    if (b == Backend::kCudnn && op != Op::kTraining && (call || op == Op::kMoments)) {
      const std::string no = cudnn_rejects(op, call, data, false);
      if (!no.empty())
        return Status::Error(Code::kUnsupported, std::string(fn) + ": backend 'cudnn' cannot run this call: " + no +
                                                     (op == Op::kMoments ? "; use 'cuda'" : "; use 'cuda' or 'auto'"));
    }
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
    // cuDNN for inference only when asked: our kernel runs near copy bandwidth.
    const std::string no = op == Op::kBatchNorm ? cudnn_rejects(op, call, data, true) : cudnn;
    if (op == Op::kBatchNorm && no.empty() && prefer_cudnn_inference()) {
      *chosen = Backend::kCudnn;
      *why = "auto: 'cudnn' (per-channel DeviceTensors and BATCHNORM_PREFER_CUDNN=1)";
      return Status::Ok();
    }
    *chosen = Backend::kCuda;
    *why = "auto: 'cuda' (inputs are DeviceTensors in GPU memory; cudnn: " +
           (no.empty() ? std::string("could run this call, but our kernels are the default for inference "
                                     "(BATCHNORM_PREFER_CUDNN=1 picks cudnn)")
                       : no) +
           ")";
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

Status run_fused_batch_norm(Backend b, const FusedArgs& a) {
  if (b == Backend::kCpu && a.mem == Memory::kHost) return cpu_fused_batch_norm(a);
  if (b == Backend::kCuda && unavailable_reason(b).empty()) return cuda::fused_batch_norm_op(a);
  if (b == Backend::kCudnn && unavailable_reason(b).empty()) return cuda::cudnn_fused_batch_norm_op(a);
  return Status::Error(Code::kBackendUnavailable, std::string("fusedBatchNorm: backend '") + backend_name(b) +
                                                      "' is unavailable: " + unavailable_reason(b));
}

Status run_batch_norm_grad(Backend b, const GradArgs& a) {
  if (b == Backend::kCpu && a.mem == Memory::kHost) return cpu_batch_norm_grad(a);
  if (b == Backend::kCuda && unavailable_reason(b).empty()) return cuda::batch_norm_grad_op(a);
  if (b == Backend::kCudnn && unavailable_reason(b).empty()) return cuda::cudnn_batch_norm_grad_op(a);
  return Status::Error(Code::kBackendUnavailable, std::string("batchNormalizationGrad: backend '") +
                                                      backend_name(b) + "' is unavailable: " + unavailable_reason(b));
}

Status run_moments(Backend b, const MomentsArgs& a) {
  if (b == Backend::kCpu && a.mem == Memory::kHost) return cpu_moments(a);
  if (b == Backend::kCuda && unavailable_reason(b).empty()) return cuda::moments(a);
  return Status::Error(Code::kBackendUnavailable, std::string("moments: backend '") + backend_name(b) +
                                                      "' is unavailable: " + unavailable_reason(b));
}

Status run_batch_norm(Backend b, const BatchNormArgs& a) {
  if (b == Backend::kCpu && a.mem == Memory::kHost && a.x.mem == Memory::kHost && a.mean.mem == Memory::kHost &&
      a.variance.mem == Memory::kHost && a.offset.mem == Memory::kHost && a.scale.mem == Memory::kHost)
    return cpu_batch_norm(a);
  if (b == Backend::kCuda && unavailable_reason(b).empty()) return cuda::batch_norm(a);
  if (b == Backend::kCudnn && unavailable_reason(b).empty()) {
    const CallInfo c = batch_norm_call_info(a);
    const std::string no = cudnn_rejects(Op::kBatchNorm, &c, a.x.mem, false);
    if (!no.empty())
      return Status::Error(Code::kUnsupported, "batchNormalization: backend 'cudnn' cannot run this call: " + no);
    return cudnn::batch_norm_inference(a, c.channel_axis);
  }
  return Status::Error(Code::kBackendUnavailable, std::string("batchNormalization: backend '") +
                                                      backend_name(b) + "' is unavailable: " +
                                                      unavailable_reason(b));
}

}  // namespace bn
