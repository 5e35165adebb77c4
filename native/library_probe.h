// One binding for the probes of the run-time loaded libraries (cuDNN, NCCL).
#pragma once
#include <napi.h>

#include <string>

namespace bn {

// The probe of a run-time loaded library (cudnnProbe, ncclProbe): reads the optional path
// argument and runs `probe(path)` afresh ("" = the environment variable, then the soname),
// answering {loaded, version, path, reason}. No GPU is needed.
template <class Probe>
Napi::Value library_probe(const Napi::CallbackInfo& info, const char* fn, Probe probe) {
  Napi::Env env = info.Env();
  std::string path;
  if (info.Length() > 0 && !info[0].IsUndefined() && !info[0].IsNull()) {
    if (!info[0].IsString()) throw Napi::TypeError::New(env, std::string(fn) + ": path must be a string");
    path = info[0].As<Napi::String>().Utf8Value();
    // dlopen would stop at a NUL and open whatever the prefix names ("" = the executable).
    if (path.find('\0') != std::string::npos) throw Napi::TypeError::New(env, std::string(fn) + ": path must not contain NUL characters");
  }
  const auto r = probe(path);
  Napi::Object o = Napi::Object::New(env);
  o.Set("loaded", r.loaded);
  o.Set("version", r.version);
  o.Set("path", r.path);
  o.Set("reason", r.loaded ? env.Null() : Napi::String::New(env, r.reason));
  return o;
}

}  // namespace bn
