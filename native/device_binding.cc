// The binding of DeviceTensor handles: upload, download (sync and async), dispose,
// memory accounting and GPU timing. A handle is a Napi::External owning a shared
// DeviceBlock; the block returns to the caching allocator when the tensor is disposed
// or, as a safety net, when the External is garbage-collected (its finalizer) — and
// not before every async op that holds it has finished.
#include "device_binding.h"

#include "args.h"
#include "async_work.h"

#include <cmath>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "backend_api/cuda.h"
#include "backend_api/ops.h"

namespace bn {
namespace {

struct DeviceBlock {
  void* p = nullptr;
  ~DeviceBlock() { cuda::device_free(p); }
};

struct DeviceHandle {
  std::shared_ptr<DeviceBlock> block;  // empty once disposed
  size_t length = 0;
};

// Every live handle, so that an External from elsewhere is never taken for ours.
struct Registry {
  std::mutex mu;
  std::unordered_set<DeviceHandle*> live;
};
Registry& registry() {
  static Registry* r = new Registry;
  return *r;
}

DeviceHandle* unwrap(Napi::Value v) {
  if (!v.IsExternal()) return nullptr;
  DeviceHandle* h = v.As<Napi::External<DeviceHandle>>().Data();
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.live.count(h) ? h : nullptr;
}

Napi::Value make_handle(Napi::Env env, std::shared_ptr<DeviceBlock> block, size_t length) {
  auto* h = new DeviceHandle{std::move(block), length};
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    r.live.insert(h);
  }
  return Napi::External<DeviceHandle>::New(env, h, [](Napi::Env, DeviceHandle* d) {
    {
      Registry& r = registry();
      std::lock_guard<std::mutex> lock(r.mu);
      r.live.erase(d);
    }
    delete d;  // drops this handle's share of the block
  });
}

DeviceHandle* get_handle(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  DeviceHandle* h = unwrap(info[i]);
  if (!h) type_error(info.Env(), std::string(fn) + ": expected a DeviceTensor handle");
  return h;
}

DeviceHandle* get_live_handle(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  DeviceHandle* h = get_handle(info, i, fn);
  if (!h->block) type_error(info.Env(), std::string(fn) + ": the DeviceTensor was disposed");
  return h;
}

Napi::Float32Array get_f32(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  Napi::Value v = info[i];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    type_error(info.Env(), std::string(fn) + ": " + name + " must be a Float32Array");
  return v.As<Napi::Float32Array>();
}

std::shared_ptr<DeviceBlock> alloc_block(Napi::Env env, size_t n, const char* fn) {
  auto b = std::make_shared<DeviceBlock>();
  Status s = cuda::device_alloc(n * sizeof(float), &b->p, fn);
  if (!s.ok()) throw_status(env, s);
  return b;
}

// deviceUpload(data: Float32Array) -> handle
Napi::Value Upload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "DeviceTensor.upload";
  Napi::Float32Array a = get_f32(info, 0, fn, "data");
  const size_t n = a.ElementLength();
  std::shared_ptr<DeviceBlock> b = alloc_block(env, n, fn);
  Status s = cuda::copy_to_device(b->p, a.Data(), n * sizeof(float), fn);
  if (!s.ok()) throw_status(env, s);  // b returns to the cache
  return make_handle(env, std::move(b), n);
}

// deviceAlloc(length) -> handle (uninitialized contents)
Napi::Value Alloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const double n = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
  if (!(n >= 0) || n != std::floor(n) || n > 9007199254740991.0)
    type_error(env, "deviceAlloc: length must be a non-negative integer");
  return make_handle(env, alloc_block(env, static_cast<size_t>(n), "DeviceTensor"), static_cast<size_t>(n));
}

// deviceDownload(handle, out: Float32Array of the same length)
Napi::Value Download(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "DeviceTensor.download";
  DeviceHandle* h = get_live_handle(info, 0, fn);
  Napi::Float32Array out = get_f32(info, 1, fn, "out");
  if (out.ElementLength() != h->length)
    range_error(env, std::string(fn) + ": out must have " + std::to_string(h->length) + " elements");
  Status s = cuda::copy_to_host(out.Data(), h->block->p, h->length * sizeof(float), fn);
  if (!s.ok()) throw_status(env, s);
  return env.Undefined();
}

// deviceDownloadAsync: the copy (and the wait for the GPU work before it) runs on a
// libuv worker thread (AsyncCall, as the async ops).
struct DownloadCall {
  std::shared_ptr<DeviceBlock> block;  // alive even if the tensor is disposed meanwhile
  float* dst = nullptr;
  size_t length = 0;
  std::vector<Napi::Value> keep;

  Status run_async() const {
    return cuda::copy_to_host(dst, block->p, length * sizeof(float), "DeviceTensor.downloadAsync");
  }
  napi_value result(napi_env env) const {
    napi_value u = nullptr;
    napi_get_undefined(env, &u);
    return u;
  }
};

Napi::Value DownloadAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "DeviceTensor.downloadAsync";
  DeviceHandle* h = get_live_handle(info, 0, fn);
  Napi::Float32Array out = get_f32(info, 1, fn, "out");
  if (out.ElementLength() != h->length)
    range_error(env, std::string(fn) + ": out must have " + std::to_string(h->length) + " elements");
  DownloadCall c;
  c.block = h->block;
  c.dst = out.Data();
  c.length = h->length;
  c.keep = {info[0], out};
  return AsyncCall<DownloadCall>::Start(env, std::move(c));
}

// deviceDispose(handle): idempotent; in-flight async ops keep their share of the block.
Napi::Value Dispose(const Napi::CallbackInfo& info) {
  DeviceHandle* h = get_handle(info, 0, "DeviceTensor.dispose");
  h->block.reset();
  return info.Env().Undefined();
}

Napi::Value MemoryInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const cuda::MemoryStats m = cuda::memory_stats();
  Napi::Object o = Napi::Object::New(env);
  o.Set("allocatedBytes", m.allocated_bytes);
  o.Set("cachedBytes", m.cached_bytes);
  o.Set("reservedBytes", m.allocated_bytes + m.cached_bytes);
  o.Set("peakAllocatedBytes", m.peak_allocated_bytes);
  o.Set("cudaMallocCalls", m.malloc_calls);
  o.Set("cacheHits", m.cache_hits);
  return o;
}

Napi::Value EmptyCache(const Napi::CallbackInfo& info) {
  Status s = cuda::empty_cache();
  if (!s.ok()) throw_status(info.Env(), s);
  return info.Env().Undefined();
}

Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  Status s = cuda::synchronize("deviceSynchronize");
  if (!s.ok()) throw_status(info.Env(), s);
  return info.Env().Undefined();
}

// ---- deviceTimeOp(op, spec, warmup, reps) -> per-run milliseconds ---------------------
float* tensor_of(Napi::Env env, Napi::Object spec, const char* key, int64_t expect, bool nullable) {
  Napi::Value v = spec.Get(key);
  if (nullable && (v.IsNull() || v.IsUndefined())) return nullptr;
  DeviceHandle* h = unwrap(v);
  if (!h || !h->block) type_error(env, std::string("deviceTimeOp: spec.") + key + " must be a live DeviceTensor handle");
  if (static_cast<int64_t>(h->length) != expect)
    range_error(env, std::string("deviceTimeOp: spec.") + key + " has the wrong length");
  return static_cast<float*>(h->block->p);
}

Napi::Value TimeOp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "deviceTimeOp";
  const std::string op = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  if (!info[1].IsObject()) type_error(env, "deviceTimeOp: spec must be an object");
  Napi::Object spec = info[1].As<Napi::Object>();
  const double warm = info[2].IsNumber() ? info[2].As<Napi::Number>().DoubleValue() : -1;
  const double reps = info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : -1;
  if (!(warm >= 0 && warm <= 1000 && reps >= 1 && reps <= 10000))
    range_error(env, "deviceTimeOp: warmup in [0, 1000] and reps in [1, 10000]");
  std::vector<double> ms;
  Status s;
  if (op == "moments") {
    MomentsArgs a;
    a.mem = Memory::kDevice;
    a.shape = read_shape(env, spec.Get("shape"), fn, "spec.shape");
    a.reduce = read_axes(env, spec.Get("axes"), fn, "spec.axes", a.shape.size());
    int64_t kept = 1;
    for (size_t d = 0; d < a.shape.size(); ++d)
      if (!a.reduce[d]) kept *= a.shape[d];
    a.correction = spec.Get("correction").IsNumber() ? spec.Get("correction").As<Napi::Number>().DoubleValue() : 0;
    a.x = tensor_of(env, spec, "x", numel(a.shape), false);
    a.mean = tensor_of(env, spec, "mean", kept, false);
    a.variance = tensor_of(env, spec, "variance", kept, false);
    s = cuda::time_moments(a, static_cast<int>(warm), static_cast<int>(reps), &ms);
  } else if (op == "batchNormalization") {
    BatchNormArgs a;
    a.mem = Memory::kDevice;
    a.out_shape = read_shape(env, spec.Get("outShape"), fn, "spec.outShape");
    static const char* names[5] = {"x", "mean", "variance", "offset", "scale"};
    static const char* shapes[5] = {"xShape", "meanShape", "varianceShape", "offsetShape", "scaleShape"};
    Operand* ops[5] = {&a.x, &a.mean, &a.variance, &a.offset, &a.scale};
    for (int k = 0; k < 5; ++k) {
      ops[k]->mem = Memory::kDevice;
      const std::string shape_key = std::string("spec.") + shapes[k];
      ops[k]->shape = read_shape(env, spec.Get(shapes[k]), fn, shape_key.c_str());
      check_broadcast(env, fn, shape_key.c_str(), ops[k]->shape, a.out_shape);
      ops[k]->data = tensor_of(env, spec, names[k], numel(ops[k]->shape), k >= 3);
    }
    a.epsilon = spec.Get("epsilon").IsNumber() ? spec.Get("epsilon").As<Napi::Number>().DoubleValue() : 1e-3;
    a.y = tensor_of(env, spec, "out", numel(a.out_shape), false);
    s = cuda::time_batch_norm(a, static_cast<int>(warm), static_cast<int>(reps), &ms);
  } else if (op == "copy" || op == "read") {
    const double bytes = spec.Get("bytes").IsNumber() ? spec.Get("bytes").As<Napi::Number>().DoubleValue() : 0;
    if (!(bytes >= 16 && bytes <= 64.0 * (1u << 30))) range_error(env, "deviceTimeOp: bytes in [16, 64 GiB]");
    const size_t b = static_cast<size_t>(bytes) / 16 * 16;
    s = op == "copy" ? cuda::time_copy(b, static_cast<int>(warm), static_cast<int>(reps), &ms)
                     : cuda::time_read(b, static_cast<int>(warm), static_cast<int>(reps), &ms);
  } else {
    type_error(env, "deviceTimeOp: op must be 'moments', 'batchNormalization', 'copy' or 'read'");
  }
  if (!s.ok()) throw_status(env, s);
  Napi::Array out = Napi::Array::New(env, ms.size());
  for (size_t i = 0; i < ms.size(); ++i) out.Set(static_cast<uint32_t>(i), ms[i]);
  return out;
}

}  // namespace

bool get_device_ref(Napi::Env env, Napi::Value v, const char* fn, const char* name, DeviceRef* r) {
  DeviceHandle* h = unwrap(v);
  if (!h) return false;
  if (!h->block) type_error(env, std::string(fn) + ": " + name + " is a disposed DeviceTensor");
  r->data = static_cast<float*>(h->block->p);
  r->length = h->length;
  r->hold = h->block;
  return true;
}

void register_device_functions(Napi::Env env, Napi::Object exports) {
  exports.Set("deviceUpload", Napi::Function::New(env, Upload, "deviceUpload"));
  exports.Set("deviceAlloc", Napi::Function::New(env, Alloc, "deviceAlloc"));
  exports.Set("deviceDownload", Napi::Function::New(env, Download, "deviceDownload"));
  exports.Set("deviceDownloadAsync", Napi::Function::New(env, DownloadAsync, "deviceDownloadAsync"));
  exports.Set("deviceDispose", Napi::Function::New(env, Dispose, "deviceDispose"));
  exports.Set("deviceMemoryInfo", Napi::Function::New(env, MemoryInfo, "deviceMemoryInfo"));
  exports.Set("deviceEmptyCache", Napi::Function::New(env, EmptyCache, "deviceEmptyCache"));
  exports.Set("deviceSynchronize", Napi::Function::New(env, Synchronize, "deviceSynchronize"));
  exports.Set("deviceTimeOp", Napi::Function::New(env, TimeOp, "deviceTimeOp"));
}

}  // namespace bn
