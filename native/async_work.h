// Promise-returning N-API calls whose work runs on a libuv worker thread.
//
// Raw napi_async_work rather than Napi::AsyncWorker: when a worker_thread is terminated
// with work in flight, its completion runs in an environment that refuses every N-API
// call, and Napi::AsyncWorker then throws a C++ exception from a place where nothing can
// catch it (std::terminate). Here every status is checked and a refusing environment
// just means "clean up and return".
#pragma once
#include <napi.h>

#include <memory>
#include <utility>
#include <vector>

#include "device_binding.h"  // status_error
#include "backend_api/status.h"

namespace bn {

// Call: `std::vector<Napi::Value> keep` (JS values referenced until the promise settles),
// `Status run_async() const` (runs off the JS thread) and
// `napi_value result(napi_env) const` (what the promise resolves with).
template <typename Call>
class AsyncCall {
 public:
  // Queues the call; returns its promise. Throws (on the JS thread) if queuing fails.
  static Napi::Value Start(Napi::Env env, Call call) {
    std::unique_ptr<AsyncCall> w(new AsyncCall(std::move(call)));
    napi_value promise, name;
    NAPI_THROW_IF_FAILED(env, napi_create_promise(env, &w->deferred_, &promise), Napi::Value());
    Napi::Array keep = Napi::Array::New(env, w->call_.keep.size());
    for (size_t i = 0; i < w->call_.keep.size(); ++i) keep.Set(static_cast<uint32_t>(i), w->call_.keep[i]);
    w->call_.keep.clear();
    NAPI_THROW_IF_FAILED(env, napi_create_reference(env, keep, 1, &w->keep_), Napi::Value());
    NAPI_THROW_IF_FAILED(env, napi_create_string_utf8(env, "batchnorm", NAPI_AUTO_LENGTH, &name), Napi::Value());
    NAPI_THROW_IF_FAILED(env, napi_create_async_work(env, nullptr, name, Execute, Complete, w.get(), &w->work_),
                         Napi::Value());
    if (napi_queue_async_work(env, w->work_) != napi_ok) {
      w->Release(env);
      NAPI_THROW(Napi::Error::New(env, "batchnorm: could not queue async work"), Napi::Value());
    }
    w.release();  // owned by the queue until Complete
    return Napi::Value(env, promise);
  }

 private:
  explicit AsyncCall(Call call) : call_(std::move(call)) {}

  static void Execute(napi_env, void* data) {
    auto* w = static_cast<AsyncCall*>(data);
    w->status_ = w->call_.run_async();
  }

  static void Complete(napi_env env, napi_status status, void* data) {
    std::unique_ptr<AsyncCall> w(static_cast<AsyncCall*>(data));
    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) != napi_ok) return;  // environment shutting down
    try {
      if (status == napi_cancelled) {
        napi_reject_deferred(env, w->deferred_,
                             status_error(env, Status::Error(Code::kUnsupported, "batchnorm: async work was cancelled")));
      } else if (w->status_.ok()) {
        if (napi_value v = w->call_.result(env)) napi_resolve_deferred(env, w->deferred_, v);
      } else {
        napi_reject_deferred(env, w->deferred_, status_error(env, w->status_));
      }
    } catch (const Napi::Error&) {
      // The environment refused to build the result (termination): nothing to settle.
    }
    w->Release(env);
    napi_close_handle_scope(env, scope);
  }

  void Release(napi_env env) {
    if (keep_) napi_delete_reference(env, keep_);
    if (work_) napi_delete_async_work(env, work_);
    keep_ = nullptr;
    work_ = nullptr;
  }

  Call call_;
  Status status_;
  napi_deferred deferred_ = nullptr;
  napi_ref keep_ = nullptr;
  napi_async_work work_ = nullptr;
};

}  // namespace bn
