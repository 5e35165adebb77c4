// The addon's registration: per-environment state (lib's BackendError class) and the
// exports of each binding file — ops (op_bindings.cc), information (info_binding.cc),
// DeviceTensors (device_binding.cc) and NCCL (nccl_binding.cc). Nothing else lives here.
#include <napi.h>

#include "args.h"
#include "backend_api/cudnn.h"
#include "device_binding.h"
#include "info_binding.h"
#include "nccl_binding.h"
#include "op_bindings.h"

namespace bn {
namespace {

class Addon : public Napi::Addon<Addon> {
 public:
  Addon(Napi::Env env, Napi::Object exports) {
    DefineAddon(exports, {InstanceMethod("setBackendErrorClass", &Addon::SetBackendErrorClass)});
    register_op_functions(env, exports);
    register_info_functions(env, exports);
    register_device_functions(env, exports);
    register_nccl_functions(env, exports);
    // The cuDNN handle lives while any environment does (cuda/cudnn_bn.cu).
    cudnn::attach_environment();
    env.AddCleanupHook([] { cudnn::detach_environment(); });
  }

  // Per-environment state: Napi::Addon is the instance data of its environment, so each
  // worker_thread that loads the addon gets its own (context-aware addon).
  Napi::FunctionReference backend_error_;

 private:
  Napi::Value SetBackendErrorClass(const Napi::CallbackInfo& info) {
    if (!info[0].IsFunction()) type_error(info.Env(), "setBackendErrorClass: expected a class");
    backend_error_ = Napi::Persistent(info[0].As<Napi::Function>());
    return info.Env().Undefined();
  }
};

}  // namespace

Napi::FunctionReference* backend_error_class(Napi::Env env) {
  Addon* a = env.GetInstanceData<Addon>();
  return a ? &a->backend_error_ : nullptr;
}

Napi::Value status_error(Napi::Env env, const Status& s) { return make_error(env, s); }

}  // namespace bn

using BatchnormAddon = bn::Addon;
NODE_API_ADDON(BatchnormAddon)
