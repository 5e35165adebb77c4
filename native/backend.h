// Backend registry and the one place that decides which backend runs a call.
#pragma once
#include <string>
#include <vector>

#include "ops.h"

namespace bn {

struct BackendInfo {
  const char* name;
  bool available;
  std::string reason;  // empty when available
};

std::vector<BackendInfo> backend_infos();

enum class Op { kMoments, kBatchNorm, kTraining };

// requested: -1 = auto, else a Backend value. On success *chosen is the backend and
// *why says why it was picked (for 'auto') — the `explain` text. data: where the
// inputs live; 'auto' runs where the data is (DeviceTensors -> cuda, host -> cpu).
Status select_backend(Op op, int requested, Backend* chosen, std::string* why, Memory data = Memory::kHost);

Status run_moments(Backend b, const MomentsArgs& a);
Status run_batch_norm(Backend b, const BatchNormArgs& a);
Status run_channel_grad_sums(Backend b, const ChannelGradArgs& p, double* sum_dy, double* sum_dy_xmu);
Status run_channel_grad_apply(Backend b, const ChannelGradArgs& p, const double* g, const double* a,
                              const double* bb, float* dx);

const char* backend_name(Backend b);

}  // namespace bn
