// DeviceTensor handles in the binding: what addon.cc needs to accept them as op
// arguments, and the registration of the device functions (native/device_binding.cc).
#pragma once
#include <napi.h>

#include <memory>

#include "backend_api/status.h"

namespace bn {

// A DeviceTensor's memory as an op argument. `hold` keeps the block alive while an
// async op that uses it is in flight, even if the tensor is disposed meanwhile.
struct DeviceRef {
  float* data = nullptr;
  size_t length = 0;
  std::shared_ptr<void> hold;
};

// True when v is a DeviceTensor handle (then *r is filled). Throws TypeError naming
// fn/name for a disposed one.
bool get_device_ref(Napi::Env env, Napi::Value v, const char* fn, const char* name, DeviceRef* r);

// Adds the device* functions (upload, download, dispose, memory info, timing) to exports.
void register_device_functions(Napi::Env env, Napi::Object exports);

// Builds the JS error for a Status (addon.cc's make_error: BackendError with its code).
Napi::Value status_error(Napi::Env env, const Status& s);

}  // namespace bn
