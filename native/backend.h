// Backend registry and the one place that decides which backend runs a call.
#pragma once
#include <string>
#include <vector>

#include "backend_api/ops.h"

namespace bn {

struct BackendInfo {
  const char* name;
  bool available;
  std::string reason;  // empty when available
};

std::vector<BackendInfo> backend_infos();

enum class Op { kMoments, kBatchNorm, kTraining, kFusedForward, kFusedBackward };
// kTraining: channelGradSums, a shard's backward sums on host data (CPU only; the
// synchronized backward all-reduces them and hands them to batchNormalizationGrad).
// kFusedForward / kFusedBackward: fusedBatchNorm and batchNormalizationGrad, host or
// device data, training or not (CallInfo::training).

// What select_backend needs to know about a call to judge whether cuDNN can run it.
struct CallInfo {
  Shape shape;            // of x
  int channel_axis = -1;  // the per-channel parameters' axis; -1 = not per-channel vectors
  double epsilon = 0;
  bool same_shape = true; // y has x's shape (x is not broadcast)
  bool training = true;   // fusedBatchNorm / batchNormalizationGrad: batch statistics (not frozen)
  bool synchronized = false;  // the training ops' whole_batch or nccl is set
};

// The channel axis of batchNormalization's parameters when each present one is a vector
// of C along the same axis of x (shape [C] aligned right, or a keepDims-style shape),
// else -1.
CallInfo batch_norm_call_info(const BatchNormArgs& a);

// requested: -1 = auto, else a Backend value. On success *chosen is the backend and
// *why says why it was picked (for 'auto') — the `explain` text. data: where the
// inputs live; 'auto' runs where the data is (DeviceTensors -> cuda, host -> cpu).
// call: the call's shape (needed to consider cuDNN; nullptr = unknown, cuDNN not chosen).
Status select_backend(Op op, int requested, Backend* chosen, std::string* why, Memory data = Memory::kHost,
                      const CallInfo* call = nullptr);

Status run_moments(Backend b, const MomentsArgs& a);
Status run_batch_norm(Backend b, const BatchNormArgs& a);
Status run_fused_batch_norm(Backend b, const FusedArgs& a);
Status run_batch_norm_grad(Backend b, const GradArgs& a);
Status run_channel_grad_sums(Backend b, const ChannelGradArgs& p, double* sum_dy, double* sum_dy_xmu);

const char* backend_name(Backend b);

}  // namespace bn
