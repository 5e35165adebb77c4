// Stands in for cuda/*.cu when the build found no nvcc: the CUDA backends then report
// why they are unavailable through the same dispatch that carries them otherwise.
#include "backend_api/cuda.h"
#include "backend_api/cudnn.h"
#include "backend_api/nccl.h"

namespace bn {
namespace cuda {

bool compiled() { return false; }

const DeviceInfo& device_info() {
  static const DeviceInfo info = [] {
    DeviceInfo i;
    i.reason = "built without CUDA (nvcc was not found when the addon was compiled)";
    return i;
  }();
  return info;
}

namespace {
Status unavailable(const char* op) {
  return Status::Error(Code::kBackendUnavailable,
                       std::string(op) + ": backend 'cuda' is unavailable: " + device_info().reason);
}
}  // namespace

Status device_alloc(size_t bytes, void** p, const char* op) {
  *p = nullptr;
  return bytes == 0 ? Status::Ok() : unavailable(op);
}
void device_free(void*) {}
MemoryStats memory_stats() { return {}; }
Status empty_cache() { return Status::Ok(); }
Status copy_to_device(void*, const void*, size_t bytes, const char* op) {
  return bytes == 0 ? Status::Ok() : unavailable(op);
}
Status copy_to_host(void*, const void*, size_t bytes, const char* op) {
  return bytes == 0 ? Status::Ok() : unavailable(op);
}
Status synchronize(const char*) { return Status::Ok(); }
Status moments(const MomentsArgs&) { return unavailable("moments"); }
Status batch_norm(const BatchNormArgs&) { return unavailable("batchNormalization"); }
Status fused_batch_norm(const FusedBatchNormArgs&, Stream, ForwardPlan*) { return unavailable("fusedBatchNorm"); }
Status batch_norm_grad(const BatchNormGradArgs&, Stream) { return unavailable("batchNormalizationGrad"); }
Status channel_grad_sums(const ChannelGradArgs&, double*, double*, Stream) {
  return unavailable("batchNormalizationGrad");
}
Status channel_grad_apply(const ChannelGradArgs&, const double*, const double*, const double*, float*, Stream) {
  return unavailable("batchNormalizationGrad");
}
Status time_fused_batch_norm(const FusedBatchNormArgs&, int, int, std::vector<double>*) {
  return unavailable("deviceTimeOp");
}
Status time_batch_norm_grad(const BatchNormGradArgs&, int, int, std::vector<double>*) {
  return unavailable("deviceTimeOp");
}
Status time_moments(const MomentsArgs&, int, int, std::vector<double>*) { return unavailable("deviceTimeOp"); }
Status time_batch_norm(const BatchNormArgs&, int, int, std::vector<double>*) { return unavailable("deviceTimeOp"); }
Status fused_batch_norm_op(const FusedArgs&) { return unavailable("fusedBatchNorm"); }
Status batch_norm_grad_op(const GradArgs&) { return unavailable("batchNormalizationGrad"); }
Status cudnn_fused_batch_norm_op(const FusedArgs&) { return unavailable("fusedBatchNorm"); }
Status cudnn_batch_norm_grad_op(const GradArgs&) { return unavailable("batchNormalizationGrad"); }
Status time_copy(size_t, int, int, std::vector<double>*) { return unavailable("deviceTimeOp"); }
Status time_read(size_t, int, int, std::vector<double>*) { return unavailable("deviceTimeOp"); }

}  // namespace cuda

// ---- cuDNN stand-ins (cuda/cudnn_bn.cu is compiled only with nvcc) -------------------
namespace cudnn {
namespace {
LoadInfo not_compiled() {
  LoadInfo i;
  i.reason = "built without CUDA (nvcc was not found when the addon was compiled)";
  return i;
}
Status unavailable(const char* op) {
  return Status::Error(Code::kBackendUnavailable, std::string(op) + ": backend 'cudnn' is unavailable: " + not_compiled().reason);
}
}  // namespace

const LoadInfo& library() {
  static const LoadInfo info = not_compiled();
  return info;
}
LoadInfo probe(const std::string&) { return not_compiled(); }
double min_epsilon() { return 0.0; }
Status batch_norm_inference(const BatchNormArgs&, int) { return unavailable("batchNormalization"); }
Status fused_forward(const FusedForwardArgs&) { return unavailable("fusedBatchNorm"); }
Status backward(const BackwardArgs&) { return unavailable("batchNormalizationGrad"); }
Status training_reserve_size(const Layout&, size_t* bytes) {
  *bytes = 0;
  return unavailable("fusedBatchNorm");
}
std::string last_ex_fallback() { return ""; }
void attach_environment() {}
void detach_environment() {}
}  // namespace cudnn

// ---- NCCL stand-ins (cuda/nccl.cu is compiled only with nvcc) ----------------------
namespace nccl {
namespace {
const char* kNotCompiled = "built without CUDA (nvcc was not found when the addon was compiled)";
Status unavailable(const char* op) {
  return Status::Error(Code::kBackendUnavailable, std::string(op) + ": NCCL needs the CUDA backend: " + kNotCompiled);
}
}  // namespace

struct Comm {};
LoadInfo probe(const std::string&) {
  LoadInfo i;
  i.reason = kNotCompiled;
  return i;
}
Status unique_id(unsigned char*) { return unavailable("ncclGetUniqueId"); }
Status comm_init(const unsigned char*, int, int, double, Comm** out) {
  *out = nullptr;
  return unavailable("ncclCommInitRank");
}
void comm_abort(Comm*) {}
void comm_free(Comm* c) { delete c; }
int comm_size(const Comm*) { return 0; }
Status all_reduce_host(Comm*, const double*, double*, size_t) { return unavailable("allReduce"); }
Status all_gather_host(Comm*, const double*, double*, size_t) { return unavailable("allGather"); }
Status all_reduce_device(Comm*, const float*, float*, size_t) { return unavailable("allReduceDevice"); }
Status all_gather_device(Comm*, const float*, float*, size_t) { return unavailable("allGatherDevice"); }
Status all_gather_enqueue(Comm*, const double*, double*, size_t, CUstream_st*, const char* op) {
  return unavailable(op);
}
Status all_reduce_enqueue(Comm*, const double*, double*, size_t, CUstream_st*, const char* op) {
  return unavailable(op);
}
}  // namespace nccl

}  // namespace bn
