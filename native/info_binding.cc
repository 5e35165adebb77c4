// The binding's information functions: backends and their reasons, explain (which
// backend a call would use and why), threads and CPU features, CUDA device details, the
// cuDNN probe, and the host-memory helpers lib/ uses (memoryRelation, allocFloat32).
#include <cmath>
#include <string>
#include <vector>

#include "args.h"
#include "library_probe.h"
#include "backend_api/cudnn.h"
#include "hostmem.h"
#include "info_binding.h"
#include "simd.h"
#include "threadpool.h"

namespace bn {
namespace {

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
  CallInfo call;
  const bool has_call = info.Length() > 3 && info[3].IsObject();
  if (has_call) {
    Napi::Object c = info[3].As<Napi::Object>();
    Napi::Value sh = c.Get("shape"), ax = c.Get("axis"), ep = c.Get("epsilon"), tr = c.Get("isTraining");
    if (!sh.IsArray() || !ax.IsNumber() || !ep.IsNumber())
      type_error(env, "explain: call must be {shape: number[], axis: number, epsilon: number}");
    Napi::Array arr = sh.As<Napi::Array>();
    for (uint32_t k = 0; k < arr.Length() && k < 64; ++k)
      call.shape.push_back(arr.Get(k).IsNumber() ? static_cast<int64_t>(arr.Get(k).As<Napi::Number>().DoubleValue()) : 0);
    call.channel_axis = ax.As<Napi::Number>().Int32Value();
    call.epsilon = ep.As<Napi::Number>().DoubleValue();
    call.training = !tr.IsBoolean() || tr.As<Napi::Boolean>().Value();
  }
  Status s = select_backend(which, get_backend(info, 1), &b, &why, data, has_call ? &call : nullptr);
  if (!s.ok()) throw_status(env, s);
  Napi::Object o = Napi::Object::New(env);
  o.Set("backend", backend_name(b));
  o.Set("reason", why);
  return o;
}

// cudnnProbe(path?) -> {loaded, version, path, reason}: the loader run afresh (no GPU needed).
Napi::Value CudnnProbe(const Napi::CallbackInfo& info) { return library_probe(info, "cudnnProbe", cudnn::probe); }

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

}  // namespace

void register_info_functions(Napi::Env env, Napi::Object exports) {
  auto add = [&](const char* name, Napi::Value (*f)(const Napi::CallbackInfo&)) {
    exports.Set(name, Napi::Function::New(env, f, name));
  };
  add("backends", Backends);
  add("explain", Explain);
  add("cudnnProbe", CudnnProbe);
  add("setNumThreads", SetNumThreads);
  add("numThreads", NumThreads);
  add("cpuFeatures", CpuFeatures);
  add("cudaInfo", CudaInfo);
  add("memoryBandwidth", MemoryBandwidth);
  add("memoryRelation", MemoryRelation);
  add("allocFloat32", AllocFloat32);
}

}  // namespace bn
