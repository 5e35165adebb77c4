// Argument readers and errors of the binding: JS values to the op structs of ops.h,
// the checks of last resort the kernels rely on (typed array kinds, lengths = product of
// shapes, outputs disjoint from inputs), and Status -> JS error. lib/ validates every
// public argument with better messages first; these only make sure that a caller who
// bypasses lib/ gets an exception instead of a crash.
#pragma once
#include <napi.h>

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "backend_api/cuda.h"

namespace bn {

// lib's BackendError class for this environment (empty until lib registers it; addon.cc).
Napi::FunctionReference* backend_error_class(Napi::Env env);

Napi::Value make_error(Napi::Env env, const Status& s);
[[noreturn]] void throw_status(Napi::Env env, const Status& s);
[[noreturn]] void type_error(Napi::Env env, const std::string& m);
[[noreturn]] void range_error(Napi::Env env, const std::string& m);

// A Float32Array argument (or null when nullable), or a DeviceTensor handle. Keeps a
// reference for async use.
struct F32 {
  float* data = nullptr;
  size_t length = 0;
  Napi::Value value;
  bool device = false;         // a DeviceTensor handle (data is a device pointer)
  std::shared_ptr<void> hold;  // keeps its device block alive during async work
  size_t bytes() const { return device ? 0 : length * sizeof(float); }  // host bytes, 0 for device data
  bool absent() const { return value.IsEmpty() || value.IsNull() || value.IsUndefined(); }
};

// How two host byte ranges relate. Judged by address, not by ArrayBuffer object: two
// SharedArrayBuffer objects (one sent through a worker or a MessageChannel) can share memory.
enum class Rel { kDisjoint, kSame, kOverlap };
Rel relation(const void* a, size_t an, const void* b, size_t bn);

// An output must share no byte with another operand: the kernels read inputs while they
// write outputs, from several threads.
void check_disjoint(Napi::Env env, const char* fn, const char* out_name, const void* out, size_t out_bytes,
                    const char* in_name, const void* in, size_t in_bytes);

F32 read_f32(Napi::Env env, Napi::Value v, const char* fn, const char* name, bool nullable);
// A Float64Array of exactly `length` elements (or null when nullable); keep (if given)
// gets the value, to be referenced during async work.
double* read_f64(Napi::Env env, Napi::Value v, const char* fn, const char* name, int64_t length, bool nullable,
                 std::vector<Napi::Value>* keep);
Shape read_shape(Napi::Env env, Napi::Value v, const char* fn, const char* name);
// Distinct axes in [0, rank) as reduce[d] = true; an axis out of range or repeated is a
// RangeError naming its index.
std::vector<bool> read_axes(Napi::Env env, Napi::Value v, const char* fn, const char* name, size_t rank);
// `s` numpy-broadcasts to `out` (aligned right: each extent equal or 1, rank not above).
void check_broadcast(Napi::Env env, const char* fn, const char* name, const Shape& s, const Shape& out);
void check_length(Napi::Env env, const F32& a, const Shape& s, const char* fn, const char* name);
int read_backend(Napi::Env env, Napi::Value v, const std::string& name);
int get_backend(const Napi::CallbackInfo& info, size_t i);

// ---- named options objects: one object per call, read by small helpers -------------
// Each names the key in its error: "fusedBatchNorm: options.epsilon must be a number".
Napi::Object get_options(const Napi::CallbackInfo& info, const char* fn);
// The options object whose keys must all be among `known`: a misspelt optional key would
// otherwise be read as absent. TypeError "moments: options.foo is not a known key".
Napi::Object get_options(const Napi::CallbackInfo& info, const char* fn, std::initializer_list<const char*> known);
F32 attr_f32(Napi::Object o, const char* fn, const char* key, bool nullable);
double attr_number(Napi::Object o, const char* fn, const char* key);
double* attr_f64(Napi::Object o, const char* fn, const char* key, int64_t length, std::vector<Napi::Value>* keep,
                 bool nullable = false);
bool attr_bool(Napi::Object o, const char* fn, const char* key);
Shape attr_shape(Napi::Object o, const char* fn, const char* key);
std::vector<bool> attr_axes(Napi::Object o, const char* fn, const char* key, size_t rank);
int attr_backend(Napi::Object o, const char* fn);

// A tensor operand {data: Float32Array | DeviceTensor handle, shape}, its length checked
// against its shape; absent (data empty) when nullable and the key is null/undefined.
struct OperandRef {
  F32 data;
  Shape shape;
  bool absent() const { return data.absent(); }
};
OperandRef attr_operand(Napi::Object o, const char* fn, const char* key, bool nullable);

// Everything a call needs, gathered on the JS thread; run() is safe off it. The async
// twin (AsyncCall) resolves with the backend's name. Host data on a GPU backend is copied
// back before run() returns; device-only work is just queued, and the promise settles
// without waiting for it (a later download waits).
template <typename Self>
struct OpCall {
  Backend backend = Backend::kCpu;
  bool device_only = false;                 // every output lives in device memory
  std::vector<Napi::Value> keep;            // JS values to keep alive during async work
  std::vector<std::shared_ptr<void>> hold;  // device blocks of DeviceTensor arguments

  Status run_async() const {
    Status s = static_cast<const Self&>(*this).run();
    if (s.ok() && !device_only && (backend == Backend::kCuda || backend == Backend::kCudnn))
      s = cuda::synchronize("async op");
    return s;
  }
  napi_value result(napi_env env) const {
    napi_value v = nullptr;
    napi_create_string_utf8(env, backend_name(backend), NAPI_AUTO_LENGTH, &v);
    return v;
  }
};

// Runs a call on the JS thread and returns the backend's name.
template <typename Call>
Napi::Value run_sync(const Napi::CallbackInfo& info, const Call& c) {
  Status s = c.run();
  if (!s.ok()) throw_status(info.Env(), s);
  return Napi::String::New(info.Env(), backend_name(c.backend));
}

}  // namespace bn
