#include "args.h"

#include <cmath>
#include <limits>

#include "device_binding.h"

namespace bn {

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

F32 read_f32(Napi::Env env, Napi::Value v, const char* fn, const char* name, bool nullable) {
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

// A Float64Array of exactly `length` elements (or null when nullable).
double* read_f64(Napi::Env env, Napi::Value v, const char* fn, const char* name, int64_t length, bool nullable,
                 std::vector<Napi::Value>* keep) {
  if (nullable && (v.IsNull() || v.IsUndefined())) return nullptr;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    type_error(env, std::string(fn) + ": " + name + " must be a Float64Array");
  Napi::Float64Array a = v.As<Napi::Float64Array>();
  if (static_cast<int64_t>(a.ElementLength()) != length)
    range_error(env, std::string(fn) + ": " + name + " must have " + std::to_string(length) + " elements");
  if (length > 0 && a.Data() == nullptr)
    type_error(env, std::string(fn) + ": " + name + " is backed by a detached ArrayBuffer");
  if (keep) keep->push_back(v);
  return a.Data();
}

namespace {
// A JS number that is an integer in [0, limit) (limit at most 2^53, where doubles stop
// being exact), or -1.
int64_t index_below(Napi::Value v, double limit) {
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1.0;
  return d >= 0 && d < limit && d == std::floor(d) ? static_cast<int64_t>(d) : -1;
}
constexpr double kExactLimit = 9007199254740992.0;  // 2^53
}  // namespace

Shape read_shape(Napi::Env env, Napi::Value v, const char* fn, const char* name) {
  if (!v.IsArray()) type_error(env, std::string(fn) + ": " + name + " must be an array of integers");
  Napi::Array arr = v.As<Napi::Array>();
  if (arr.Length() > 64)
    range_error(env, std::string(fn) + ": " + name + " has rank " + std::to_string(arr.Length()) +
                         "; at most 64 dimensions are supported");
  Shape s(arr.Length());
  int64_t total = 1;
  for (uint32_t k = 0; k < arr.Length(); ++k) {
    s[k] = index_below(arr.Get(k), kExactLimit);
    if (s[k] < 0)
      type_error(env, std::string(fn) + ": " + name + "[" + std::to_string(k) + "] must be a non-negative integer");
    if (s[k] != 0 && total > std::numeric_limits<int64_t>::max() / s[k])
      range_error(env, std::string(fn) + ": " + name + " has too many elements");
    total *= s[k];
  }
  return s;
}

std::vector<bool> read_axes(Napi::Env env, Napi::Value v, const char* fn, const char* name, size_t rank) {
  if (!v.IsArray()) type_error(env, std::string(fn) + ": " + name + " must be an array of integers");
  Napi::Array axes = v.As<Napi::Array>();
  std::vector<bool> reduce(rank, false);
  for (uint32_t k = 0; k < axes.Length(); ++k) {
    const int64_t d = index_below(axes.Get(k), static_cast<double>(rank));
    if (d < 0 || reduce[static_cast<size_t>(d)])
      range_error(env, std::string(fn) + ": " + name + "[" + std::to_string(k) + "] must be a distinct axis in [0, " +
                           std::to_string(rank) + ")");
    reduce[static_cast<size_t>(d)] = true;
  }
  return reduce;
}

void check_broadcast(Napi::Env env, const char* fn, const char* name, const Shape& s, const Shape& out) {
  if (s.size() > out.size()) range_error(env, std::string(fn) + ": " + name + " has a higher rank than the output");
  for (size_t i = 0; i < s.size(); ++i) {
    const int64_t e = s[s.size() - 1 - i], o = out[out.size() - 1 - i];
    if (e != o && e != 1) range_error(env, std::string(fn) + ": " + name + " does not broadcast to the output shape");
  }
}

void check_length(Napi::Env env, const F32& a, const Shape& s, const char* fn, const char* name) {
  if (a.data == nullptr && a.value.IsNull()) return;
  if (static_cast<int64_t>(a.length) != numel(s))
    range_error(env, std::string(fn) + ": " + name + " has " + std::to_string(a.length) +
                         " elements but its shape needs " + std::to_string(numel(s)));
}

int read_backend(Napi::Env env, Napi::Value v, const std::string& name) {
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -2.0;
  if (!(d >= -1 && d <= 2) || d != std::floor(d))
    type_error(env, name + " must be -1 (auto), 0 (cpu), 1 (cuda) or 2 (cudnn)");
  return static_cast<int>(d);
}

int get_backend(const Napi::CallbackInfo& info, size_t i) { return read_backend(info.Env(), info[i], "backend"); }

Napi::Object get_options(const Napi::CallbackInfo& info, const char* fn) {
  if (info.Length() != 1 || !info[0].IsObject() || info[0].IsArray() || info[0].IsTypedArray())
    type_error(info.Env(), std::string(fn) + ": expected one options object");
  return info[0].As<Napi::Object>();
}

Napi::Object get_options(const Napi::CallbackInfo& info, const char* fn, std::initializer_list<const char*> known) {
  Napi::Object o = get_options(info, fn);
  // Own keys only: an enumerable property someone added to Object.prototype is no option.
  napi_value names = nullptr;
  NAPI_THROW_IF_FAILED(info.Env(),
                       napi_get_all_property_names(info.Env(), o, napi_key_own_only,
                                                   static_cast<napi_key_filter>(napi_key_enumerable | napi_key_skip_symbols),
                                                   napi_key_numbers_to_strings, &names),
                       o);
  Napi::Array keys(info.Env(), names);
  for (uint32_t k = 0; k < keys.Length(); ++k) {
    const std::string key = keys.Get(k).As<Napi::String>().Utf8Value();
    bool ok = false;
    for (const char* name : known) ok = ok || key == name;
    if (!ok) type_error(info.Env(), std::string(fn) + ": options." + key + " is not a known key");
  }
  return o;
}

namespace {
std::string key_name(const char* key) { return std::string("options.") + key; }
}  // namespace

F32 attr_f32(Napi::Object o, const char* fn, const char* key, bool nullable) {
  return read_f32(o.Env(), o.Get(key), fn, key_name(key).c_str(), nullable);
}

double attr_number(Napi::Object o, const char* fn, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) type_error(o.Env(), std::string(fn) + ": " + key_name(key) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

double* attr_f64(Napi::Object o, const char* fn, const char* key, int64_t length, std::vector<Napi::Value>* keep,
                 bool nullable) {
  return read_f64(o.Env(), o.Get(key), fn, key_name(key).c_str(), length, nullable, keep);
}

bool attr_bool(Napi::Object o, const char* fn, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsBoolean()) type_error(o.Env(), std::string(fn) + ": " + key_name(key) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

Shape attr_shape(Napi::Object o, const char* fn, const char* key) {
  return read_shape(o.Env(), o.Get(key), fn, key_name(key).c_str());
}

std::vector<bool> attr_axes(Napi::Object o, const char* fn, const char* key, size_t rank) {
  return read_axes(o.Env(), o.Get(key), fn, key_name(key).c_str(), rank);
}

OperandRef attr_operand(Napi::Object o, const char* fn, const char* key, bool nullable) {
  Napi::Env env = o.Env();
  const std::string name = key_name(key);
  Napi::Value v = o.Get(key);
  OperandRef r;
  r.data.value = v;
  if (nullable && (v.IsNull() || v.IsUndefined())) return r;
  if (!v.IsObject() || v.IsArray() || v.IsTypedArray() || v.IsExternal())
    type_error(env, std::string(fn) + ": " + name + " must be an object {data, shape}");
  Napi::Object t = v.As<Napi::Object>();
  r.data = read_f32(env, t.Get("data"), fn, (name + ".data").c_str(), false);
  r.shape = read_shape(env, t.Get("shape"), fn, (name + ".shape").c_str());
  check_length(env, r.data, r.shape, fn, name.c_str());
  return r;
}

int attr_backend(Napi::Object o, const char* fn) {
  return read_backend(o.Env(), o.Get("backend"), std::string(fn) + ": " + key_name("backend"));
}

}  // namespace bn
