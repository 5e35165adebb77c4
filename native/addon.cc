// The N-API binding: argument checks of last resort, conversion of plain JS values into
// the op structs of ops.h, backend dispatch, and Status -> JS error. lib/ validates every
// public argument with better messages first; these checks only guard the invariants the
// kernels rely on (typed array kinds, lengths = product of shapes), so that a caller who
// bypasses lib/ gets an exception instead of a crash.
#include <napi.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "../cuda/cuda_backend.h"
#include "async_work.h"
#include "../cuda/cudnn_backend.h"
#include "nccl_binding.h"
#include "backend.h"
#include "device_binding.h"
#include "hostmem.h"
#include "ops.h"
#include "simd.h"
#include "threadpool.h"

namespace bn {
namespace {

// lib's BackendError class for this environment (empty until lib registers it).
Napi::FunctionReference* backend_error_class(Napi::Env env);

Napi::Value make_error(Napi::Env env, const Status& s) {
  switch (s.code) {
    case Code::kTypeError: return Napi::TypeError::New(env, s.message).Value();
    case Code::kRangeError: return Napi::RangeError::New(env, s.message).Value();
    default: break;
  }
  Napi::FunctionReference* cls = backend_error_class(env);
  if (cls && !cls->IsEmpty())
    return cls->New({Napi::String::New(env, s.message),
                                    Napi::String::New(env, backend_error_code(s.code))});
  Napi::Error e = Napi::Error::New(env, s.message);
  e.Set("code", Napi::String::New(env, backend_error_code(s.code)));
  return e.Value();
}

[[noreturn]] void throw_status(Napi::Env env, const Status& s) {
  throw Napi::Error(env, make_error(env, s));
}

[[noreturn]] void type_error(Napi::Env env, const std::string& m) { throw Napi::TypeError::New(env, m); }
[[noreturn]] void range_error(Napi::Env env, const std::string& m) { throw Napi::RangeError::New(env, m); }

// A Float32Array argument (or null when nullable). Keeps a reference for async use.
struct F32 {
  float* data = nullptr;
  size_t length = 0;
  Napi::Value value;
  bool device = false;         // a DeviceTensor handle (data is a device pointer)
  std::shared_ptr<void> hold;  // keeps its device block alive during async work
  size_t bytes() const { return device ? 0 : length * sizeof(float); }  // host bytes, 0 for device data
};

// How two host byte ranges relate. Judged by address, not by ArrayBuffer object: two
// SharedArrayBuffer objects (one sent through a worker or a MessageChannel) can share memory.
enum class Rel { kDisjoint, kSame, kOverlap };
Rel relation(const void* a, size_t an, const void* b, size_t bn) {
  if (!a || !b || an == 0 || bn == 0) return Rel::kDisjoint;
  const uintptr_t a0 = reinterpret_cast<uintptr_t>(a), b0 = reinterpret_cast<uintptr_t>(b);
  if (a0 >= b0 + bn || b0 >= a0 + an) return Rel::kDisjoint;
  return a0 == b0 && an == bn ? Rel::kSame : Rel::kOverlap;
}

// An output must share no byte with another operand: the kernels read inputs while they
// write outputs, from several threads.
void check_disjoint(Napi::Env env, const char* fn, const char* out_name, const void* out, size_t out_bytes,
                    const char* in_name, const void* in, size_t in_bytes) {
  if (relation(out, out_bytes, in, in_bytes) != Rel::kDisjoint)
    range_error(env, std::string(fn) + ": " + out_name + " overlaps " + in_name + " in memory");
}

F32 get_f32(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, bool nullable) {
  Napi::Env env = info.Env();
  Napi::Value v = info[i];
  F32 r;
  r.value = v;
  if (nullable && (v.IsNull() || v.IsUndefined())) return r;
  DeviceRef dev;
  if (get_device_ref(env, v, fn, name, &dev)) {
    r.data = dev.data;
    r.length = dev.length;
    r.device = true;
    r.hold = std::move(dev.hold);
    return r;
  }
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    type_error(env, std::string(fn) + ": " + name + " must be a Float32Array");
  Napi::Float32Array a = v.As<Napi::Float32Array>();
  r.data = a.Data();
  r.length = a.ElementLength();
  if (r.length > 0 && r.data == nullptr)
    type_error(env, std::string(fn) + ": " + name + " is backed by a detached ArrayBuffer");
  return r;
}

// A Float64Array argument of exactly `length` elements (or null when nullable).
double* get_f64(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, int64_t length,
                bool nullable, std::vector<Napi::Value>* keep) {
  Napi::Env env = info.Env();
  Napi::Value v = info[i];
  if (nullable && (v.IsNull() || v.IsUndefined())) return nullptr;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    type_error(env, std::string(fn) + ": " + name + " must be a Float64Array");
  Napi::Float64Array a = v.As<Napi::Float64Array>();
  if (static_cast<int64_t>(a.ElementLength()) != length)
    range_error(env, std::string(fn) + ": " + name + " must have " + std::to_string(length) + " elements");
  if (length > 0 && a.Data() == nullptr)
    type_error(env, std::string(fn) + ": " + name + " is backed by a detached ArrayBuffer");
  keep->push_back(v);
  return a.Data();
}

int64_t get_count(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  const double d = info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : -1.0;
  if (!(d >= 0) || d != std::floor(d) || d > 9007199254740991.0)
    type_error(info.Env(), std::string(fn) + ": " + name + " must be a non-negative integer");
  return static_cast<int64_t>(d);
}

Shape get_shape(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  Napi::Env env = info.Env();
  if (!info[i].IsArray()) type_error(env, std::string(fn) + ": " + name + " must be an array of integers");
  Napi::Array arr = info[i].As<Napi::Array>();
  if (arr.Length() > 64)
    range_error(env, std::string(fn) + ": " + name + " has rank " + std::to_string(arr.Length()) +
                         "; at most 64 dimensions are supported");
  Shape s(arr.Length());
  int64_t total = 1;
  for (uint32_t k = 0; k < arr.Length(); ++k) {
    Napi::Value e = arr.Get(k);
    const double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : -1.0;
    if (!(d >= 0) || d != std::floor(d) || d > 9007199254740991.0)
      type_error(env, std::string(fn) + ": " + name + "[" + std::to_string(k) + "] must be a non-negative integer");
    s[k] = static_cast<int64_t>(d);
    if (s[k] != 0 && total > std::numeric_limits<int64_t>::max() / s[k])
      range_error(env, std::string(fn) + ": " + name + " has too many elements");
    total *= s[k];
  }
  return s;
}

void check_length(Napi::Env env, const F32& a, const Shape& s, const char* fn, const char* name) {
  if (a.data == nullptr && a.value.IsNull()) return;
  if (static_cast<int64_t>(a.length) != numel(s))
    range_error(env, std::string(fn) + ": " + name + " has " + std::to_string(a.length) +
                         " elements but its shape needs " + std::to_string(numel(s)));
}

int get_backend(const Napi::CallbackInfo& info, size_t i) {
  const int b = info[i].IsNumber() ? info[i].As<Napi::Number>().Int32Value() : -2;
  if (b < -1 || b > 2) type_error(info.Env(), "backend must be -1 (auto), 0 (cpu), 1 (cuda) or 2 (cudnn)");
  return b;
}

// Everything a call needs, gathered on the JS thread; run() is safe off it. The async
// twin (AsyncCall) also waits for queued GPU work and resolves with the backend's name.
template <typename Self>
struct OpCall {
  Backend backend = Backend::kCpu;
  std::vector<Napi::Value> keep;            // JS values to keep alive during async work
  std::vector<std::shared_ptr<void>> hold;  // device blocks of DeviceTensor arguments

  Status run_async() const {
    Status s = static_cast<const Self&>(*this).run();
    // GPU work is only queued by run(); the promise settles when it has finished.
    if (s.ok() && (backend == Backend::kCuda || backend == Backend::kCudnn)) s = cuda::synchronize("async op");
    return s;
  }
  napi_value result(napi_env env) const {
    napi_value v = nullptr;
    napi_create_string_utf8(env, backend_name(backend), NAPI_AUTO_LENGTH, &v);
    return v;
  }
};

struct MomentsCall : OpCall<MomentsCall> {
  MomentsArgs args;

  Status run() const { return run_moments(backend, args); }
};

struct BatchNormCall : OpCall<BatchNormCall> {
  BatchNormArgs args;

  Status run() const {
    if (backend == Backend::kCpu && args.y != args.x.data)
      advise_fresh_output(args.y, static_cast<size_t>(numel(args.out_shape)) * sizeof(float));
    return run_batch_norm(backend, args);
  }
};

// moments(x, shape, axes, correction, outMean, outVariance, backend)
MomentsCall parse_moments(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "moments";
  if (info.Length() < 7) type_error(env, "moments: expected 7 arguments");
  MomentsCall c;
  F32 x = get_f32(info, 0, fn, "x", false);
  c.args.shape = get_shape(info, 1, fn, "shape");
  check_length(env, x, c.args.shape, fn, "x");
  const size_t rank = c.args.shape.size();
  c.args.reduce.assign(rank, false);
  if (!info[2].IsArray()) type_error(env, "moments: axes must be an array of integers");
  Napi::Array axes = info[2].As<Napi::Array>();
  for (uint32_t k = 0; k < axes.Length(); ++k) {
    Napi::Value e = axes.Get(k);
    const double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : -1.0;
    if (!(d >= 0) || d != std::floor(d) || d >= static_cast<double>(rank) || c.args.reduce[static_cast<size_t>(d)])
      range_error(env, "moments: axes[" + std::to_string(k) + "] must be a distinct axis in [0, " +
                           std::to_string(rank) + ")");
    c.args.reduce[static_cast<size_t>(d)] = true;
  }
  if (!info[3].IsNumber()) type_error(env, "moments: correction must be a number");
  c.args.correction = info[3].As<Napi::Number>().DoubleValue();
  F32 mean = get_f32(info, 4, fn, "out.mean", false);
  F32 var = get_f32(info, 5, fn, "out.variance", false);
  int64_t kept = 1;
  for (size_t d = 0; d < rank; ++d)
    if (!c.args.reduce[d]) kept *= c.args.shape[d];
  if (static_cast<int64_t>(mean.length) != kept || static_cast<int64_t>(var.length) != kept)
    range_error(env, "moments: out.mean and out.variance must have " + std::to_string(kept) + " elements");
  c.args.x = x.data;
  c.args.mean = mean.data;
  c.args.variance = var.data;
  check_disjoint(env, fn, "out.mean", mean.data, mean.bytes(), "x", x.data, x.bytes());
  check_disjoint(env, fn, "out.variance", var.data, var.bytes(), "x", x.data, x.bytes());
  check_disjoint(env, fn, "out.mean", mean.data, mean.bytes(), "out.variance", var.data, var.bytes());
  // DeviceTensors: x and both outputs live in GPU memory, or none of them does.
  if (x.device != mean.device || x.device != var.device)
    type_error(env, "moments: x, out.mean and out.variance must all be DeviceTensors or all Float32Arrays");
  c.args.mem = x.device ? Memory::kDevice : Memory::kHost;
  c.hold = {x.hold, mean.hold, var.hold};
  c.keep = {x.value, mean.value, var.value};
  // Optional float64 sufficient statistics: outMean64, outM2 (both or neither; host only).
  if (info.Length() > 8 && !info[7].IsNull() && !info[7].IsUndefined()) {
    c.args.mean64 = get_f64(info, 7, fn, "outMean64", kept, false, &c.keep);
    c.args.m2_64 = get_f64(info, 8, fn, "outM2", kept, false, &c.keep);
    const size_t b64 = static_cast<size_t>(kept) * sizeof(double);
    const std::pair<const char*, const F32*> others[3] = {{"x", &x}, {"out.mean", &mean}, {"out.variance", &var}};
    for (const auto& [name, o] : others) {
      check_disjoint(env, fn, "outMean64", c.args.mean64, b64, name, o->data, o->bytes());
      check_disjoint(env, fn, "outM2", c.args.m2_64, b64, name, o->data, o->bytes());
    }
    check_disjoint(env, fn, "outMean64", c.args.mean64, b64, "outM2", c.args.m2_64, b64);
  }
  std::string why;
  Status s = select_backend(Op::kMoments, get_backend(info, 6), &c.backend, &why, c.args.mem);
  if (!s.ok()) throw_status(env, s);
  return c;
}

// batchNormalization(x, xShape, mean, meanShape, variance, varianceShape, offset,
//                    offsetShape, scale, scaleShape, epsilon, out, outShape, backend)
BatchNormCall parse_batch_norm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "batchNormalization";
  if (info.Length() < 14) type_error(env, "batchNormalization: expected 14 arguments");
  BatchNormCall c;
  static const char* names[5] = {"x", "mean", "variance", "offset", "scale"};
  std::pair<const void*, size_t> ranges[5];
  Operand* ops[5] = {&c.args.x, &c.args.mean, &c.args.variance, &c.args.offset, &c.args.scale};
  c.args.out_shape = get_shape(info, 12, fn, "outShape");
  const Shape& out = c.args.out_shape;
  for (size_t k = 0; k < 5; ++k) {
    F32 a = get_f32(info, 2 * k, fn, names[k], k >= 3);
    Shape s = get_shape(info, 2 * k + 1, fn, (std::string(names[k]) + "Shape").c_str());
    if (a.data == nullptr && !(a.value.IsNull() || a.value.IsUndefined()) && numel(s) != 0)
      type_error(env, std::string(fn) + ": " + names[k] + " is empty");
    if (!(a.value.IsNull() || a.value.IsUndefined())) check_length(env, a, s, fn, names[k]);
    // Each operand must broadcast to the output shape (aligned right).
    if (s.size() > out.size())
      range_error(env, std::string(fn) + ": " + names[k] + " has a higher rank than the output");
    for (size_t i = 0; i < s.size(); ++i) {
      const int64_t e = s[s.size() - 1 - i], o = out[out.size() - 1 - i];
      if (e != o && e != 1)
        range_error(env, std::string(fn) + ": " + names[k] + " does not broadcast to the output shape");
    }
    if (numel(out) > 0 && numel(s) == 0 && a.data == nullptr && !(a.value.IsNull() || a.value.IsUndefined()))
      range_error(env, std::string(fn) + ": " + names[k] + " is empty");
    ops[k]->data = a.data;
    ranges[k] = {a.data, a.bytes()};
    ops[k]->shape = std::move(s);
    ops[k]->mem = a.device ? Memory::kDevice : Memory::kHost;
    if (a.device) c.hold.push_back(a.hold);
    c.keep.push_back(a.value);
  }
  if (!c.args.mean.data && numel(out) > 0) type_error(env, "batchNormalization: mean must be a Float32Array");
  if (!c.args.variance.data && numel(out) > 0) type_error(env, "batchNormalization: variance must be a Float32Array");
  if (!c.args.x.data && numel(out) > 0) type_error(env, "batchNormalization: x must be a Float32Array");
  if (!info[10].IsNumber()) type_error(env, "batchNormalization: varianceEpsilon must be a number");
  c.args.epsilon = info[10].As<Napi::Number>().DoubleValue();
  if (!(c.args.epsilon >= 0)) range_error(env, "batchNormalization: varianceEpsilon must be >= 0");
  F32 y = get_f32(info, 11, fn, "out", false);
  if (static_cast<int64_t>(y.length) != numel(out))
    range_error(env, "batchNormalization: out must have " + std::to_string(numel(out)) + " elements");
  // In place (out is exactly x's memory) is fine elementwise only when x is not broadcast;
  // any other shared byte between out and an operand is refused.
  const Rel rx = relation(y.data, y.bytes(), ranges[0].first, ranges[0].second);
  if (rx == Rel::kOverlap || (rx == Rel::kSame && numel(c.args.x.shape) != numel(out)))
    range_error(env, "batchNormalization: out overlaps x in memory; only exact in-place use (out is x, x of the output's shape) is supported");
  for (size_t k = 1; k < 5; ++k)
    check_disjoint(env, fn, "out", y.data, y.bytes(), names[k], ranges[k].first, ranges[k].second);
  c.args.y = y.data;
  c.keep.push_back(y.value);
  // DeviceTensors: y lives where x does; parameters may be on either side.
  if (y.device != (c.args.x.mem == Memory::kDevice))
    type_error(env, "batchNormalization: out must be a DeviceTensor exactly when x is one");
  c.args.mem = y.device ? Memory::kDevice : Memory::kHost;
  if (y.device) c.hold.push_back(y.hold);
  bool any_device = false;
  for (size_t k = 0; k < 5; ++k) any_device = any_device || ops[k]->mem == Memory::kDevice;
  std::string why;
  const CallInfo call = batch_norm_call_info(c.args);  // what the cuDNN path needs to judge
  Status s = select_backend(Op::kBatchNorm, get_backend(info, 13), &c.backend, &why,
                            any_device ? Memory::kDevice : Memory::kHost, &call);
  if (!s.ok()) throw_status(env, s);
  return c;
}

// Backward pass of per-channel batch normalization (two kernels; see cpu_training.cc).
struct GradSumsCall : OpCall<GradSumsCall> {
  ChannelGradArgs args;
  double* sum_dy = nullptr;
  double* sum_dy_xmu = nullptr;
  Status run() const { return run_channel_grad_sums(backend, args, sum_dy, sum_dy_xmu); }
};

struct GradApplyCall : OpCall<GradApplyCall> {
  ChannelGradArgs args;
  const double *g = nullptr, *a = nullptr, *b = nullptr;
  float* dx = nullptr;
  Status run() const {
    if (backend == Backend::kCpu && dx != args.dy && dx != args.x)
      advise_fresh_output(dx, static_cast<size_t>(args.A * args.C * args.B) * sizeof(float));
    return run_channel_grad_apply(backend, args, g, a, b, dx);
  }
};

// Common part: (dy, x, A, C, B, mean64) at argument positions 0..5.
template <typename Call>
void parse_channel_grad(const Napi::CallbackInfo& info, const char* fn, Call* c) {
  Napi::Env env = info.Env();
  F32 dy = get_f32(info, 0, fn, "dy", false);
  F32 x = get_f32(info, 1, fn, "x", false);
  c->args.A = get_count(info, 2, fn, "A");
  c->args.C = get_count(info, 3, fn, "C");
  c->args.B = get_count(info, 4, fn, "B");
  const int64_t A = c->args.A, C = c->args.C, B = c->args.B;
  if ((C != 0 && A > std::numeric_limits<int64_t>::max() / C) || (C * A != 0 && B > std::numeric_limits<int64_t>::max() / (A * C)))
    range_error(env, std::string(fn) + ": A·C·B overflows");
  if (static_cast<int64_t>(dy.length) != A * C * B || static_cast<int64_t>(x.length) != A * C * B)
    range_error(env, std::string(fn) + ": dy and x must have A·C·B = " + std::to_string(A * C * B) + " elements");
  if (dy.device || x.device)
    type_error(env, std::string(fn) + ": DeviceTensor inputs are not supported by the training kernels in this version");
  c->args.dy = dy.data;
  c->args.x = x.data;
  c->keep = {dy.value, x.value};
  c->args.mean = get_f64(info, 5, fn, "mean", C, false, &c->keep);
}

// Every output of a gradient kernel against dy, x, mean, the extra inputs and each other.
struct NamedRange {
  const char* name;
  const void* data;
  size_t bytes;
};
void check_grad_outputs(Napi::Env env, const char* fn, const ChannelGradArgs& a,
                        std::initializer_list<std::pair<const char*, const void*>> outs, size_t out_bytes,
                        std::initializer_list<NamedRange> extra) {
  const size_t n = static_cast<size_t>(a.A * a.C * a.B) * sizeof(float);
  std::vector<NamedRange> ins = {{"dy", a.dy, n}, {"x", a.x, n}, {"mean", a.mean, static_cast<size_t>(a.C) * sizeof(double)}};
  ins.insert(ins.end(), extra.begin(), extra.end());
  for (auto o = outs.begin(); o != outs.end(); ++o) {
    for (const NamedRange& in : ins) check_disjoint(env, fn, o->first, o->second, out_bytes, in.name, in.data, in.bytes);
    for (auto p = std::next(o); p != outs.end(); ++p)
      check_disjoint(env, fn, o->first, o->second, out_bytes, p->first, p->second, out_bytes);
  }
}

// channelGradSums(dy, x, A, C, B, mean64, outSumDy, outSumDyXmu, backend)
GradSumsCall parse_grad_sums(const Napi::CallbackInfo& info) {
  const char* fn = "batchNormalizationGrad";
  if (info.Length() < 9) type_error(info.Env(), "channelGradSums: expected 9 arguments");
  GradSumsCall c;
  parse_channel_grad(info, fn, &c);
  c.sum_dy = get_f64(info, 6, fn, "outSumDy", c.args.C, false, &c.keep);
  c.sum_dy_xmu = get_f64(info, 7, fn, "outSumDyXmu", c.args.C, false, &c.keep);
  check_grad_outputs(info.Env(), fn, c.args, {{"outSumDy", c.sum_dy}, {"outSumDyXmu", c.sum_dy_xmu}},
                     static_cast<size_t>(c.args.C) * sizeof(double), {});
  std::string why;
  Status s = select_backend(Op::kTraining, get_backend(info, 8), &c.backend, &why);
  if (!s.ok()) throw_status(info.Env(), s);
  return c;
}

// channelGradApply(dy, x, A, C, B, mean64, g, a, b, dx, backend)
GradApplyCall parse_grad_apply(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "batchNormalizationGrad";
  if (info.Length() < 11) type_error(env, "channelGradApply: expected 11 arguments");
  GradApplyCall c;
  parse_channel_grad(info, fn, &c);
  c.g = get_f64(info, 6, fn, "g", c.args.C, false, &c.keep);
  c.a = get_f64(info, 7, fn, "a", c.args.C, false, &c.keep);
  c.b = get_f64(info, 8, fn, "b", c.args.C, false, &c.keep);
  F32 dx = get_f32(info, 9, fn, "dx", false);
  if (dx.device) type_error(env, std::string(fn) + ": dx must be a Float32Array");
  if (static_cast<int64_t>(dx.length) != c.args.A * c.args.C * c.args.B)
    range_error(env, "batchNormalizationGrad: dx must have A·C·B elements");
  c.dx = dx.data;
  c.keep.push_back(dx.value);
  const size_t cb = static_cast<size_t>(c.args.C) * sizeof(double);
  check_grad_outputs(env, fn, c.args, {{"dx", dx.data}}, dx.bytes(), {{"g", c.g, cb}, {"a", c.a, cb}, {"b", c.b, cb}});
  std::string why;
  Status s = select_backend(Op::kTraining, get_backend(info, 10), &c.backend, &why);
  if (!s.ok()) throw_status(env, s);
  return c;
}

// ---- cuDNN training ops on DeviceTensors (issue 5) ---------------------------------
// fusedBatchNorm's training forward and batchNormalizationGrad when lib/ found (through
// explain) that the cudnn backend runs them. Every tensor is a DeviceTensor; lib/ uploads
// host vectors and passes ones/zeros for an absent scale/offset.

// An x shape of rank 4 or 5 and its channel axis (1 or last), checked as cuDNN needs them.
cudnn::Layout get_layout(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  cudnn::Layout l;
  l.shape = get_shape(info, i, fn, "shape");
  const int64_t axis = get_count(info, i + 1, fn, "axis");
  const size_t rank = l.shape.size();
  if (axis >= static_cast<int64_t>(rank) || rank < 1)
    range_error(info.Env(), std::string(fn) + ": axis must be in [0, rank)");
  l.axis = static_cast<int>(axis);
  return l;
}

// A DeviceTensor argument of exactly n floats.
float* get_device_f32(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, int64_t n,
                      std::vector<Napi::Value>* keep, std::vector<std::shared_ptr<void>>* hold, bool nullable = false) {
  F32 a = get_f32(info, i, fn, name, nullable);
  if (nullable && a.value.IsNull()) return nullptr;
  if (!a.device) type_error(info.Env(), std::string(fn) + ": " + name + " must be a DeviceTensor");
  if (static_cast<int64_t>(a.length) != n)
    range_error(info.Env(), std::string(fn) + ": " + name + " must have " + std::to_string(n) + " elements");
  keep->push_back(a.value);
  hold->push_back(a.hold);
  return a.data;
}

struct FusedForwardCall : OpCall<FusedForwardCall> {
  cudnn::FusedForwardArgs args;
  FusedForwardCall() { backend = Backend::kCudnn; }
  Status run() const { return cudnn::fused_forward(args); }
};

struct FusedBackwardCall : OpCall<FusedBackwardCall> {
  cudnn::BackwardArgs args;
  FusedBackwardCall() { backend = Backend::kCudnn; }
  Status run() const { return cudnn::backward(args); }
};

// Only cudnn runs these; any other choice means lib/ should not have called.
void require_cudnn(Napi::Env env, Op op, int requested, const cudnn::Layout& l, double eps, Backend* chosen) {
  CallInfo call;
  call.shape = l.shape;
  call.channel_axis = l.axis;
  call.epsilon = eps;
  std::string why;
  Status s = select_backend(op, requested, chosen, &why, Memory::kDevice, &call);
  if (!s.ok()) throw_status(env, s);
  if (*chosen != Backend::kCudnn)
    throw_status(env, Status::Error(Code::kUnsupported, "the cuDNN entry point was called but " + why));
}

// fusedBatchNormDevice(x, shape, axis, scale, offset, runMean|null, runVar|null, epsilon, factor,
//                      y, batchMean, batchVar, batchVarBiased, runMeanOut, runVarOut, savedMean, savedInvStd, backend)
FusedForwardCall parse_fused_forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "fusedBatchNorm";
  if (info.Length() < 18) type_error(env, "fusedBatchNormDevice: expected 18 arguments");
  FusedForwardCall c;
  cudnn::FusedForwardArgs& a = c.args;
  a.x_layout = get_layout(info, 1, fn);
  const int64_t n = numel(a.x_layout.shape), C = a.x_layout.shape[static_cast<size_t>(a.x_layout.axis)];
  a.x = get_device_f32(info, 0, fn, "x", n, &c.keep, &c.hold);
  a.scale = get_device_f32(info, 3, fn, "scale", C, &c.keep, &c.hold);
  a.offset = get_device_f32(info, 4, fn, "offset", C, &c.keep, &c.hold);
  a.running_mean = get_device_f32(info, 5, fn, "options.mean", C, &c.keep, &c.hold, true);
  a.running_var = get_device_f32(info, 6, fn, "options.variance", C, &c.keep, &c.hold, true);
  if (!info[7].IsNumber() || !info[8].IsNumber()) type_error(env, "fusedBatchNormDevice: epsilon and factor must be numbers");
  a.epsilon = info[7].As<Napi::Number>().DoubleValue();
  a.factor = info[8].As<Napi::Number>().DoubleValue();
  if (!(a.epsilon >= 0) || !(a.factor >= 0 && a.factor <= 1))
    range_error(env, "fusedBatchNormDevice: epsilon must be >= 0 and factor in [0, 1]");
  if (a.factor != 1 && (!a.running_mean || !a.running_var))
    type_error(env, "fusedBatchNormDevice: options.mean and options.variance are required when factor != 1");
  a.y = get_device_f32(info, 9, fn, "y", n, &c.keep, &c.hold);
  float** outs[7] = {&a.batch_mean, &a.batch_var, &a.batch_var_biased, &a.running_mean_out, &a.running_var_out,
                     &a.saved_mean, &a.saved_inv_std};
  for (size_t k = 0; k < 7; ++k) *outs[k] = get_device_f32(info, 10 + k, fn, "out vector", C, &c.keep, &c.hold);
  require_cudnn(env, Op::kFusedForward, get_backend(info, 17), a.x_layout, a.epsilon, &c.backend);
  return c;
}

// batchNormGradDevice(dy, x, shape, axis, scale, savedMean, savedInvStd, epsilon, dx, dscale, doffset, backend)
FusedBackwardCall parse_fused_backward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "batchNormalizationGrad";
  if (info.Length() < 12) type_error(env, "batchNormGradDevice: expected 12 arguments");
  FusedBackwardCall c;
  cudnn::BackwardArgs& a = c.args;
  a.x_layout = get_layout(info, 2, fn);
  const int64_t n = numel(a.x_layout.shape), C = a.x_layout.shape[static_cast<size_t>(a.x_layout.axis)];
  a.dy = get_device_f32(info, 0, fn, "dy", n, &c.keep, &c.hold);
  a.x = get_device_f32(info, 1, fn, "x", n, &c.keep, &c.hold);
  a.scale = get_device_f32(info, 4, fn, "scale", C, &c.keep, &c.hold);
  a.saved_mean = get_device_f32(info, 5, fn, "saved.mean", C, &c.keep, &c.hold);
  a.saved_inv_std = get_device_f32(info, 6, fn, "saved.invStd", C, &c.keep, &c.hold);
  if (!info[7].IsNumber()) type_error(env, "batchNormGradDevice: epsilon must be a number");
  a.epsilon = info[7].As<Napi::Number>().DoubleValue();
  if (!(a.epsilon >= 0)) range_error(env, "batchNormGradDevice: epsilon must be >= 0");
  a.dx = get_device_f32(info, 8, fn, "dx", n, &c.keep, &c.hold);
  a.dscale = get_device_f32(info, 9, fn, "dscale", C, &c.keep, &c.hold);
  a.doffset = get_device_f32(info, 10, fn, "doffset", C, &c.keep, &c.hold);
  require_cudnn(env, Op::kFusedBackward, get_backend(info, 11), a.x_layout, a.epsilon, &c.backend);
  return c;
}


class Addon : public Napi::Addon<Addon> {
 public:
  Addon(Napi::Env env, Napi::Object exports) {
    DefineAddon(exports, {
        InstanceMethod("moments", &Addon::Moments),
        InstanceMethod("momentsAsync", &Addon::MomentsAsync),
        InstanceMethod("batchNormalization", &Addon::BatchNorm),
        InstanceMethod("batchNormalizationAsync", &Addon::BatchNormAsync),
        InstanceMethod("channelGradSums", &Addon::GradSums),
        InstanceMethod("channelGradSumsAsync", &Addon::GradSumsAsync),
        InstanceMethod("channelGradApply", &Addon::GradApply),
        InstanceMethod("channelGradApplyAsync", &Addon::GradApplyAsync),
        InstanceMethod("backends", &Addon::Backends),
        InstanceMethod("explain", &Addon::Explain),
        InstanceMethod("setNumThreads", &Addon::SetNumThreads),
        InstanceMethod("numThreads", &Addon::NumThreads),
        InstanceMethod("cpuFeatures", &Addon::CpuFeatures),
        InstanceMethod("cudaInfo", &Addon::CudaInfo),
        InstanceMethod("memoryBandwidth", &Addon::MemoryBandwidth),
        InstanceMethod("setBackendErrorClass", &Addon::SetBackendErrorClass),
        InstanceMethod("memoryRelation", &Addon::MemoryRelation),
        InstanceMethod("allocFloat32", &Addon::AllocFloat32),
        // cuDNN path (issue 5)
        InstanceMethod("cudnnProbe", &Addon::CudnnProbe),
        InstanceMethod("fusedBatchNormDevice", &Addon::FusedForward),
        InstanceMethod("fusedBatchNormDeviceAsync", &Addon::FusedForwardAsync),
        InstanceMethod("batchNormGradDevice", &Addon::FusedBackward),
        InstanceMethod("batchNormGradDeviceAsync", &Addon::FusedBackwardAsync),
    });
    register_device_functions(env, exports);
    register_nccl_functions(env, exports);
    // The cuDNN handle lives while any environment does (cuda/cudnn_bn.cu).
    cudnn::attach_environment();
    env.AddCleanupHook([] { cudnn::detach_environment(); });
  }

 private:
  Napi::Value Moments(const Napi::CallbackInfo& info) {
    MomentsCall c = parse_moments(info);
    Status s = c.run();
    if (!s.ok()) throw_status(info.Env(), s);
    return Napi::String::New(info.Env(), backend_name(c.backend));
  }
  Napi::Value MomentsAsync(const Napi::CallbackInfo& info) {
    return AsyncCall<MomentsCall>::Start(info.Env(), parse_moments(info));
  }
  Napi::Value BatchNorm(const Napi::CallbackInfo& info) {
    BatchNormCall c = parse_batch_norm(info);
    Status s = c.run();
    if (!s.ok()) throw_status(info.Env(), s);
    return Napi::String::New(info.Env(), backend_name(c.backend));
  }
  Napi::Value BatchNormAsync(const Napi::CallbackInfo& info) {
    return AsyncCall<BatchNormCall>::Start(info.Env(), parse_batch_norm(info));
  }
  template <typename Call>
  static Napi::Value RunSync(const Napi::CallbackInfo& info, Call c) {
    Status s = c.run();
    if (!s.ok()) throw_status(info.Env(), s);
    return Napi::String::New(info.Env(), backend_name(c.backend));
  }
  Napi::Value GradSums(const Napi::CallbackInfo& info) { return RunSync(info, parse_grad_sums(info)); }
  Napi::Value GradSumsAsync(const Napi::CallbackInfo& info) {
    return AsyncCall<GradSumsCall>::Start(info.Env(), parse_grad_sums(info));
  }
  Napi::Value GradApply(const Napi::CallbackInfo& info) { return RunSync(info, parse_grad_apply(info)); }
  Napi::Value GradApplyAsync(const Napi::CallbackInfo& info) {
    return AsyncCall<GradApplyCall>::Start(info.Env(), parse_grad_apply(info));
  }
  Napi::Value Backends(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::vector<BackendInfo> v = backend_infos();
    Napi::Array arr = Napi::Array::New(env, v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("name", v[i].name);
      o.Set("available", v[i].available);
      o.Set("reason", v[i].available ? env.Null() : Napi::String::New(env, v[i].reason));
      arr.Set(static_cast<uint32_t>(i), o);
    }
    return arr;
  }
  // explain(op, backend, onDevice, call?: {shape, axis, epsilon}) -> {backend, reason}
  // op: 'moments' | 'batchNormalization' | 'fusedBatchNorm' | 'batchNormalizationGrad';
  // call describes per-channel parameters along `axis` (what the cuDNN path needs).
  Napi::Value Explain(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const std::string op = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    Op which;
    if (op == "moments") which = Op::kMoments;
    else if (op == "batchNormalization") which = Op::kBatchNorm;
    else if (op == "fusedBatchNorm") which = Op::kFusedForward;
    else if (op == "batchNormalizationGrad") which = Op::kFusedBackward;
    else type_error(env, "explain: op must be 'moments', 'batchNormalization', 'fusedBatchNorm' or 'batchNormalizationGrad'");
    Backend b;
    std::string why;
    const Memory data = info.Length() > 2 && info[2].ToBoolean() ? Memory::kDevice : Memory::kHost;  // onDevice
    // The training ops of host data run on the CPU (lib/training.ts); only DeviceTensors reach select_fused.
    if (data == Memory::kHost && (which == Op::kFusedForward || which == Op::kFusedBackward)) which = Op::kTraining;
    CallInfo call;
    const bool has_call = info.Length() > 3 && info[3].IsObject();
    if (has_call) {
      Napi::Object c = info[3].As<Napi::Object>();
      Napi::Value sh = c.Get("shape"), ax = c.Get("axis"), ep = c.Get("epsilon");
      if (!sh.IsArray() || !ax.IsNumber() || !ep.IsNumber())
        type_error(env, "explain: call must be {shape: number[], axis: number, epsilon: number}");
      Napi::Array arr = sh.As<Napi::Array>();
      for (uint32_t k = 0; k < arr.Length() && k < 64; ++k)
        call.shape.push_back(arr.Get(k).IsNumber() ? static_cast<int64_t>(arr.Get(k).As<Napi::Number>().DoubleValue()) : 0);
      call.channel_axis = ax.As<Napi::Number>().Int32Value();
      call.epsilon = ep.As<Napi::Number>().DoubleValue();
    }
    Status s = select_backend(which, get_backend(info, 1), &b, &why, data, has_call ? &call : nullptr);
    if (!s.ok()) throw_status(env, s);
    Napi::Object o = Napi::Object::New(env);
    o.Set("backend", backend_name(b));
    o.Set("reason", why);
    return o;
  }
  // cudnnProbe(path?) -> {loaded, version, path, reason}: the loader run afresh (no GPU needed).
  Napi::Value CudnnProbe(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string path;
    if (info.Length() > 0 && !info[0].IsUndefined() && !info[0].IsNull()) {
      if (!info[0].IsString()) type_error(env, "cudnnProbe: path must be a string");
      path = info[0].As<Napi::String>().Utf8Value();
      // dlopen would stop at a NUL and open whatever the prefix names ("" = the executable).
      if (path.find('\0') != std::string::npos) type_error(env, "cudnnProbe: path must not contain NUL characters");
    }
    const cudnn::LoadInfo r = cudnn::probe(path);
    Napi::Object o = Napi::Object::New(env);
    o.Set("loaded", r.loaded);
    o.Set("version", r.version);
    o.Set("path", r.path);
    o.Set("reason", r.loaded ? env.Null() : Napi::String::New(env, r.reason));
    return o;
  }
  Napi::Value FusedForward(const Napi::CallbackInfo& info) { return RunSync(info, parse_fused_forward(info)); }
  Napi::Value FusedForwardAsync(const Napi::CallbackInfo& info) {
    return AsyncCall<FusedForwardCall>::Start(info.Env(), parse_fused_forward(info));
  }
  Napi::Value FusedBackward(const Napi::CallbackInfo& info) { return RunSync(info, parse_fused_backward(info)); }
  Napi::Value FusedBackwardAsync(const Napi::CallbackInfo& info) {
    return AsyncCall<FusedBackwardCall>::Start(info.Env(), parse_fused_backward(info));
  }
  Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
    const double n = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0;
    if (!(n >= 1 && n <= 256) || n != std::floor(n))
      range_error(info.Env(), "setNumThreads: n must be an integer in [1, 256]");
    set_num_threads(static_cast<int>(n));
    return info.Env().Undefined();
  }
  Napi::Value NumThreads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), num_threads()); }
  Napi::Value CpuFeatures(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), cpu_simd_level()); }
  Napi::Value CudaInfo(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const cuda::DeviceInfo& d = cuda::device_info();
    Napi::Object o = Napi::Object::New(env);
    o.Set("compiled", cuda::compiled());
    o.Set("available", d.available);
    o.Set("reason", d.available ? env.Null() : Napi::String::New(env, d.reason));
    o.Set("deviceCount", d.device_count);
    o.Set("name", d.name);
    o.Set("computeCapability", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor));
    o.Set("totalMemory", d.total_memory_bytes);
    o.Set("driverVersion", d.driver_version);
    o.Set("runtimeVersion", d.runtime_version);
    return o;
  }
  // memoryBandwidth(bytes, reps) -> {copy, read} in GB/s (benchmark helper)
  Napi::Value MemoryBandwidth(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const double bytes = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0;
    const double reps = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : 0;
    if (!(bytes >= 1 << 20 && bytes <= 16.0 * (1u << 30))) range_error(env, "memoryBandwidth: bytes must be in [1 MiB, 16 GiB]");
    if (!(reps >= 1 && reps <= 1000)) range_error(env, "memoryBandwidth: reps must be in [1, 1000]");
    Bandwidth bw = measure_bandwidth(static_cast<size_t>(bytes), static_cast<int>(reps));
    Napi::Object o = Napi::Object::New(env);
    o.Set("copy", bw.copy_gbs);
    o.Set("read", bw.read_gbs);
    return o;
  }
  // memoryRelation(a, b) -> 'disjoint' | 'same' | 'overlap': the host bytes of two typed
  // arrays, by address (lib/'s overlap checks, which then name the parameters).
  Napi::Value MemoryRelation(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const void* p[2];
    size_t bytes[2];
    for (size_t i = 0; i < 2; ++i) {
      if (!info[i].IsTypedArray()) type_error(env, "memoryRelation: expected two typed arrays");
      napi_typedarray_type type;
      size_t length;
      void* data;
      napi_value ab;
      size_t offset;
      if (napi_get_typedarray_info(env, info[i], &type, &length, &data, &ab, &offset) != napi_ok)
        type_error(env, "memoryRelation: expected two typed arrays");
      p[i] = data;
      bytes[i] = length * info[i].As<Napi::TypedArray>().ElementSize();
    }
    const Rel r = relation(p[0], bytes[0], p[1], bytes[1]);
    return Napi::String::New(env, r == Rel::kDisjoint ? "disjoint" : r == Rel::kSame ? "same" : "overlap");
  }
  // allocFloat32(length) -> a zeroed Float32Array over memory that is unmapped off the JS
  // thread once V8 frees it (see alloc_host).
  Napi::Value AllocFloat32(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const double d = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1.0;
    if (!(d >= 1) || d != std::floor(d) || d > 4294967295.0)
      range_error(env, "allocFloat32: length must be an integer in [1, 2^32)");
    const size_t n = static_cast<size_t>(d), bytes = n * sizeof(float);
    void* p = alloc_host(bytes);
    if (!p) range_error(env, "allocFloat32: out of host memory for " + std::to_string(bytes) + " bytes");
    napi_value ab, ta;
    auto finalize = [](napi_env, void* data, void* hint) { free_host_later(data, reinterpret_cast<size_t>(hint)); };
    if (napi_create_external_arraybuffer(env, p, bytes, finalize, reinterpret_cast<void*>(bytes), &ab) != napi_ok) {
      free_host_later(p, bytes);
      range_error(env, "allocFloat32: could not create an ArrayBuffer of " + std::to_string(bytes) + " bytes");
    }
    if (napi_create_typedarray(env, napi_float32_array, n, ab, 0, &ta) != napi_ok)
      range_error(env, "allocFloat32: could not create a Float32Array of " + std::to_string(n) + " elements");
    return Napi::Value(env, ta);
  }
  Napi::Value SetBackendErrorClass(const Napi::CallbackInfo& info) {
    if (!info[0].IsFunction()) type_error(info.Env(), "setBackendErrorClass: expected a class");
    backend_error_ = Napi::Persistent(info[0].As<Napi::Function>());
    return info.Env().Undefined();
  }

 public:
  // Per-environment state: Napi::Addon is the instance data of its environment, so each
  // worker_thread that loads the addon gets its own (context-aware addon).
  Napi::FunctionReference backend_error_;
};

Napi::FunctionReference* backend_error_class(Napi::Env env) {
  Addon* a = env.GetInstanceData<Addon>();
  return a ? &a->backend_error_ : nullptr;
}

}  // namespace

Napi::Value status_error(Napi::Env env, const Status& s) { return make_error(env, s); }

}  // namespace bn

using BatchnormAddon = bn::Addon;
NODE_API_ADDON(BatchnormAddon)
