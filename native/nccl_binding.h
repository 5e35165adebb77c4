// The NCCL communicator's functions in the binding (native/nccl_binding.cc).
#pragma once
#include <napi.h>

#include <memory>

namespace bn {

namespace nccl {
struct Comm;
}

// The communicator behind a handle of ncclCommInitRankAsync, shared: a call that holds
// the pointer keeps the communicator alive after ncclCommDestroy until it ends.
// TypeError "<fn>: <name> must be a communicator handle" (or "was destroyed").
std::shared_ptr<nccl::Comm> get_comm(Napi::Env env, Napi::Value v, const char* fn, const char* name);

// Adds ncclProbe, ncclGetUniqueId, ncclCommInitRankAsync, ncclAllReduceAsync,
// ncclAllGatherAsync and ncclCommDestroy to exports.
void register_nccl_functions(Napi::Env env, Napi::Object exports);

}  // namespace bn
