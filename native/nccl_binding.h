// The NCCL communicator's functions in the binding (native/nccl_binding.cc).
#pragma once
#include <napi.h>

namespace bn {

// Adds ncclProbe, ncclGetUniqueId, ncclCommInitRankAsync, ncclAllReduceAsync,
// ncclAllGatherAsync and ncclCommDestroy to exports.
void register_nccl_functions(Napi::Env env, Napi::Object exports);

}  // namespace bn
