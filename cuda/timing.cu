// GPU timings for `batchnorm bench` (deviceTimeOp): each run between two CUDA events on the op's stream, so
// the numbers are device time without host launch overhead between runs, and the
// floors (device-to-device copy, read-only kernel) are measured the same way.
#include <cuda_runtime.h>

#include <functional>

#include "common.cuh"

namespace bn {
namespace cuda {

namespace {

constexpr int kThreads = 256;

// Reads every float4 and keeps the sum alive with a store that never happens for real
// data, so the compiler cannot drop the loads. The read floor for moments.
__global__ void __launch_bounds__(kThreads) read_only_kernel(const float4* __restrict__ x, long long n4, float* sink) {
  float acc = 0;
  for (long long i = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; i < n4;
       i += static_cast<long long>(gridDim.x) * kThreads) {
    const float4 v = __ldg(x + i);
    acc += v.x + v.y + v.z + v.w;
  }
  if (acc == -1.2345e-37f) *sink = acc;
}

class Events {
 public:
  ~Events() {
    if (a_) cudaEventDestroy(a_);
    if (b_) cudaEventDestroy(b_);
  }
  Status init(const char* op) {
    BN_CUDA_TRY(cudaEventCreate(&a_), op, "cudaEventCreate");
    BN_CUDA_TRY(cudaEventCreate(&b_), op, "cudaEventCreate");
    return Status::Ok();
  }
  cudaEvent_t a_ = nullptr, b_ = nullptr;
};

Status time_loop(const std::function<Status()>& run, int warmup, int reps, std::vector<double>* ms) {
  const char* op = "deviceTimeOp";
  cudaStream_t st;
  BN_TRY(get_stream(&st, op));
  Events ev;
  BN_TRY(ev.init(op));
  for (int i = 0; i < warmup; ++i) BN_TRY(run());
  BN_CUDA_TRY(cudaStreamSynchronize(st), op, "cudaStreamSynchronize (warm-up)");
  ms->clear();
  for (int i = 0; i < reps; ++i) {
    BN_CUDA_TRY(cudaEventRecord(ev.a_, st), op, "cudaEventRecord");
    BN_TRY(run());
    BN_CUDA_TRY(cudaEventRecord(ev.b_, st), op, "cudaEventRecord");
    BN_CUDA_TRY(cudaEventSynchronize(ev.b_), op, "cudaEventSynchronize");
    float t = 0;
    BN_CUDA_TRY(cudaEventElapsedTime(&t, ev.a_, ev.b_), op, "cudaEventElapsedTime");
    ms->push_back(t);
  }
  return Status::Ok();
}

}  // namespace

Status time_moments(const MomentsArgs& a, int warmup, int reps, std::vector<double>* ms) {
  if (a.mem != Memory::kDevice) return Status::Error(Code::kUnsupported, "deviceTimeOp: moments needs DeviceTensors");
  return time_loop([&] { return moments(a); }, warmup, reps, ms);
}

Status time_batch_norm(const BatchNormArgs& a, int warmup, int reps, std::vector<double>* ms) {
  if (a.mem != Memory::kDevice)
    return Status::Error(Code::kUnsupported, "deviceTimeOp: batchNormalization needs DeviceTensors");
  return time_loop([&] { return batch_norm(a); }, warmup, reps, ms);
}

Status time_fused_batch_norm(const FusedBatchNormArgs& a, int warmup, int reps, std::vector<double>* ms) {
  return time_loop([&] { return fused_batch_norm(a); }, warmup, reps, ms);
}

Status time_batch_norm_grad(const BatchNormGradArgs& a, int warmup, int reps, std::vector<double>* ms) {
  return time_loop([&] { return batch_norm_grad(a); }, warmup, reps, ms);
}

Status time_copy(size_t bytes, int warmup, int reps, std::vector<double>* ms) {
  const char* op = "deviceTimeOp";
  cudaStream_t st;
  BN_TRY(get_stream(&st, op));
  Scratch src, dst;
  BN_TRY(src.alloc(bytes, op));
  BN_TRY(dst.alloc(bytes, op));
  BN_CUDA_TRY(cudaMemsetAsync(src.as<void>(), 0, bytes, st), op, "cudaMemsetAsync");
  return time_loop(
      [&]() -> Status {
        BN_CUDA_TRY(cudaMemcpyAsync(dst.as<void>(), src.as<void>(), bytes, cudaMemcpyDeviceToDevice, st), op,
                    "cudaMemcpyAsync device->device");
        return Status::Ok();
      },
      warmup, reps, ms);
}

Status time_read(size_t bytes, int warmup, int reps, std::vector<double>* ms) {
  const char* op = "deviceTimeOp";
  cudaStream_t st;
  BN_TRY(get_stream(&st, op));
  Scratch src, sink;
  BN_TRY(src.alloc(bytes, op));
  BN_TRY(sink.alloc(sizeof(float), op));
  BN_CUDA_TRY(cudaMemsetAsync(src.as<void>(), 0, bytes, st), op, "cudaMemsetAsync");
  const long long n4 = static_cast<long long>(bytes / 16);
  return time_loop(
      [&]() -> Status {
        read_only_kernel<<<grid_for(n4, kThreads), kThreads, 0, st>>>(src.as<float4>(), n4, sink.as<float>());
        return check_launch(op, "read_only_kernel");
      },
      warmup, reps, ms);
}

}  // namespace cuda
}  // namespace bn
