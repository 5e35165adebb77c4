// The training ops as the dispatcher calls them (FusedArgs / GradArgs of the backend
// interface), on our kernels (cuda::fused_batch_norm / batch_norm_grad) and on cuDNN.
// Device data only enqueues work on the backend's stream. Host Float32Arrays are staged:
// inputs copied in, the kernels run, outputs copied back (copy_to_host waits for them),
// as moments and batchNormalization do. Synchronized batch norm: host whole-batch
// vectors are staged like any other input; an NCCL communicator takes device data only.
#include <cuda_runtime.h>

#include <vector>

#include "common.cuh"
#include "../native/backend_api/cudnn.h"

namespace bn {
namespace cuda {

namespace {

ChannelView view_of(const ChannelLayout& l) { return ChannelView{l.A, l.C, l.B}; }

// Host outputs that get a device twin and are copied back after the kernels ran.
class Staging {
 public:
  Staging(Memory mem, const char* op) : host_(mem == Memory::kHost), op_(op) {}
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;
  ~Staging() {
    for (void* p : blocks_) device_free(p);  // stream-ordered: in-flight kernels keep them
  }
  // A device pointer for an input of n elements (null stays null).
  template <typename T>
  Status in(const T* src, int64_t n, const T** dst) {
    *dst = src;
    if (!host_ || !src || n == 0) return Status::Ok();
    T* d = nullptr;
    BN_TRY(alloc(n, &d));
    BN_TRY(copy_to_device(d, src, static_cast<size_t>(n) * sizeof(T), op_));
    *dst = d;
    return Status::Ok();
  }
  // A device pointer for an output of n floats, copied back by finish(). An output that
  // is exactly an input already staged (in place) reuses that input's device copy.
  Status out(float* host, int64_t n, float** dst, const float* same_as_host = nullptr, const float* same_dev = nullptr) {
    *dst = host;
    if (!host_ || !host || n == 0) return Status::Ok();
    float* d = nullptr;
    if (same_as_host && host == same_as_host) {
      d = const_cast<float*>(same_dev);
    } else {
      BN_TRY(alloc(n, &d));
    }
    back_.push_back({host, d, n});
    *dst = d;
    return Status::Ok();
  }
  // C floats of a constant, in device memory whatever `mem` says (cuDNN takes no null
  // scale/offset): a parameter, not data; copy_to_device stages it before returning.
  Status constant(int64_t n, float value, const float** dst) {
    std::vector<float> h(static_cast<size_t>(n), value);
    float* d = nullptr;
    BN_TRY(alloc(n, &d));
    BN_TRY(copy_to_device(d, h.data(), static_cast<size_t>(n) * sizeof(float), op_));
    *dst = d;
    return Status::Ok();
  }
  Status finish() {
    for (const Back& b : back_) BN_TRY(copy_to_host(b.host, b.dev, static_cast<size_t>(b.n) * sizeof(float), op_));
    return Status::Ok();
  }

 private:
  template <typename T>
  Status alloc(int64_t n, T** d) {
    void* p = nullptr;
    BN_TRY(device_alloc(static_cast<size_t>(n) * sizeof(T), &p, op_));
    blocks_.push_back(p);
    *d = static_cast<T*>(p);
    return Status::Ok();
  }
  struct Back {
    float* host;
    const float* dev;
    int64_t n;
  };
  bool host_;
  const char* op_;
  std::vector<void*> blocks_;
  std::vector<Back> back_;
};

// NCCL's collectives run on device buffers between our kernels; host data would need a
// host round trip inside the op (the host communicators do that exchange in lib/).
Status nccl_needs_device(const char* op) {
  return Status::Error(Code::kUnsupported, std::string(op) + ": an NCCL communicator needs device data (DeviceTensors); "
                                                             "host data is synchronized through whole-batch statistics");
}

Status cudnn_refuses_sync(const char* op) {
  return Status::Error(Code::kUnsupported, std::string(op) + ": backend 'cudnn' computes the batch's own statistics "
                                                             "only; synchronized batch norm runs on backend 'cuda'");
}

}  // namespace

Status fused_batch_norm_op(const FusedArgs& a) {
  const char* op = "fusedBatchNorm";
  BN_TRY(require_device(op));
  if (a.training && a.nccl && a.mem != Memory::kDevice) return nccl_needs_device(op);
  const int64_t n = numel(a.layout.shape), C = a.layout.C;
  Staging st(a.mem, op);
  FusedBatchNormArgs k;
  k.view = view_of(a.layout);
  k.epsilon = a.epsilon;
  k.factor = a.factor;
  k.training = a.training;
  BN_TRY(st.in(a.x, n, &k.x));
  BN_TRY(st.in(a.scale, C, &k.scale));
  BN_TRY(st.in(a.offset, C, &k.offset));
  BN_TRY(st.in(a.running_mean, C, &k.running_mean));
  BN_TRY(st.in(a.running_var, C, &k.running_var));
  BN_TRY(st.out(a.y, n, &k.y, a.x, k.x));
  BN_TRY(st.out(a.batch_mean, C, &k.batch_mean));
  BN_TRY(st.out(a.batch_var, C, &k.batch_var));
  BN_TRY(st.out(a.batch_var_biased, C, &k.batch_var_biased));
  BN_TRY(st.out(a.running_mean_out, C, &k.running_mean_out));
  BN_TRY(st.out(a.running_var_out, C, &k.running_var_out));
  BN_TRY(st.out(a.saved_mean, C, &k.saved_mean));
  BN_TRY(st.out(a.saved_inv_std, C, &k.saved_inv_std));
  WholeBatchStats whole;
  if (a.training && a.whole_batch) {
    whole.count = a.whole_batch->count;
    BN_TRY(st.in(a.whole_batch->mean, C, &whole.mean));
    BN_TRY(st.in(a.whole_batch->m2, C, &whole.m2));
    k.whole_batch = &whole;
  }
  if (a.training) k.nccl = a.nccl;
  BN_TRY(fused_batch_norm(k));
  return st.finish();
}

Status batch_norm_grad_op(const GradArgs& a) {
  const char* op = "batchNormalizationGrad";
  BN_TRY(require_device(op));
  if (a.training && a.nccl && a.mem != Memory::kDevice) return nccl_needs_device(op);
  const int64_t n = numel(a.layout.shape), C = a.layout.C;
  Staging st(a.mem, op);
  BatchNormGradArgs k;
  k.view = view_of(a.layout);
  k.training = a.training;
  BN_TRY(st.in(a.dy, n, &k.dy));
  BN_TRY(st.in(a.x, n, &k.x));
  BN_TRY(st.in(a.scale, C, &k.scale));
  BN_TRY(st.in(a.saved_mean, C, &k.saved_mean));
  BN_TRY(st.in(a.saved_inv_std, C, &k.saved_inv_std));
  BN_TRY(st.out(a.dx, n, &k.dx));
  BN_TRY(st.out(a.dscale, C, &k.dscale));
  BN_TRY(st.out(a.doffset, C, &k.doffset));
  WholeBatchGradSums whole;
  if (a.training && a.whole_batch) {
    whole.count = a.whole_batch->count;
    BN_TRY(st.in(a.whole_batch->sum_dy, C, &whole.sum_dy));
    BN_TRY(st.in(a.whole_batch->sum_dy_xmu, C, &whole.sum_dy_xmu));
    BN_TRY(st.in(a.whole_batch->shard_sum_dy, C, &whole.shard_sum_dy));
    BN_TRY(st.in(a.whole_batch->shard_sum_dy_xmu, C, &whole.shard_sum_dy_xmu));
    k.whole_batch = &whole;
  }
  if (a.training) k.nccl = a.nccl;
  BN_TRY(batch_norm_grad(k));
  return st.finish();
}

Status cudnn_fused_batch_norm_op(const FusedArgs& a) {
  const char* op = "fusedBatchNorm";
  BN_TRY(require_device(op));
  if (a.training && (a.whole_batch || a.nccl)) return cudnn_refuses_sync(op);
  const int64_t n = numel(a.layout.shape), C = a.layout.C;
  Staging st(a.mem, op);
  cudnn::FusedForwardArgs k;
  k.x_layout = {a.layout.shape, a.layout.axis};
  k.epsilon = a.epsilon;
  k.factor = a.factor;
  BN_TRY(st.in(a.x, n, &k.x));
  if (a.scale) BN_TRY(st.in(a.scale, C, &k.scale)); else BN_TRY(st.constant(C, 1.0f, &k.scale));
  if (a.offset) BN_TRY(st.in(a.offset, C, &k.offset)); else BN_TRY(st.constant(C, 0.0f, &k.offset));
  if (a.factor != 1) {
    BN_TRY(st.in(a.running_mean, C, &k.running_mean));
    BN_TRY(st.in(a.running_var, C, &k.running_var));
  }
  BN_TRY(st.out(a.y, n, &k.y, a.x, k.x));
  BN_TRY(st.out(a.batch_mean, C, &k.batch_mean));
  BN_TRY(st.out(a.batch_var, C, &k.batch_var));
  BN_TRY(st.out(a.batch_var_biased, C, &k.batch_var_biased));
  BN_TRY(st.out(a.running_mean_out, C, &k.running_mean_out));
  BN_TRY(st.out(a.running_var_out, C, &k.running_var_out));
  BN_TRY(st.out(a.saved_mean, C, &k.saved_mean));
  BN_TRY(st.out(a.saved_inv_std, C, &k.saved_inv_std));
  BN_TRY(cudnn::fused_forward(k));
  return st.finish();
}

Status cudnn_batch_norm_grad_op(const GradArgs& a) {
  const char* op = "batchNormalizationGrad";
  BN_TRY(require_device(op));
  if (a.training && (a.whole_batch || a.nccl)) return cudnn_refuses_sync(op);
  const int64_t n = numel(a.layout.shape), C = a.layout.C;
  Staging st(a.mem, op);
  cudnn::BackwardArgs k;
  k.x_layout = {a.layout.shape, a.layout.axis};
  k.epsilon = a.epsilon;
  BN_TRY(st.in(a.dy, n, &k.dy));
  BN_TRY(st.in(a.x, n, &k.x));
  if (a.scale) BN_TRY(st.in(a.scale, C, &k.scale)); else BN_TRY(st.constant(C, 1.0f, &k.scale));
  BN_TRY(st.in(a.saved_mean, C, &k.saved_mean));
  BN_TRY(st.in(a.saved_inv_std, C, &k.saved_inv_std));
  BN_TRY(st.out(a.dx, n, &k.dx));
  BN_TRY(st.out(a.dscale, C, &k.dscale));
  BN_TRY(st.out(a.doffset, C, &k.doffset));
  BN_TRY(cudnn::backward(k));
  return st.finish();
}

}  // namespace cuda
}  // namespace bn
