// The binding of the NCCL communicator: the loader probe, the unique id, communicator
// handles and the collectives (off the JS thread: a collective waits for every rank).
// A handle is a Napi::External owning a shared_ptr to the communicator; in-flight calls
// hold their own copy, so destroying a handle frees the communicator only when they end.
#include "nccl_binding.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>

#include "backend_api/nccl.h"
#include "library_probe.h"
#include "async_work.h"
#include "device_binding.h"

namespace bn {
namespace {

using CommPtr = std::shared_ptr<nccl::Comm>;

struct CommHandle {
  CommPtr comm;  // empty once destroyed
};

// Every live handle, so that another External (a DeviceTensor handle, say) passed where
// a communicator is expected is refused instead of being taken for one.
struct Registry {
  std::mutex mu;
  std::unordered_set<CommHandle*> live;
};
Registry& registry() {
  static Registry* r = new Registry;
  return *r;
}

CommHandle* unwrap(Napi::Value v) {
  if (!v.IsExternal()) return nullptr;
  CommHandle* h = v.As<Napi::External<CommHandle>>().Data();
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.live.count(h) ? h : nullptr;
}

[[noreturn]] void throw_type(Napi::Env env, const std::string& m) { throw Napi::TypeError::New(env, m); }
[[noreturn]] void throw_range(Napi::Env env, const std::string& m) { throw Napi::RangeError::New(env, m); }
[[noreturn]] void throw_status(Napi::Env env, const Status& s) { throw Napi::Error(env, status_error(env, s)); }

// ncclProbe(path?) -> {loaded, version, path, reason}
Napi::Value Probe(const Napi::CallbackInfo& info) { return library_probe(info, "ncclProbe", nccl::probe); }

Napi::Value UniqueId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Uint8Array out = Napi::Uint8Array::New(env, nccl::kUniqueIdBytes);
  const Status s = nccl::unique_id(out.Data());
  if (!s.ok()) throw_status(env, s);
  return out;
}

struct InitCall {
  std::vector<Napi::Value> keep;
  unsigned char id[nccl::kUniqueIdBytes];
  int size = 0;
  int rank = 0;
  double timeout_s = 0;
  mutable nccl::Comm* comm = nullptr;
  Status run_async() const { return nccl::comm_init(id, size, rank, timeout_s, &comm); }
  napi_value result(napi_env env) const {
    auto* h = new CommHandle{CommPtr(comm, nccl::comm_free)};
    comm = nullptr;
    {
      Registry& r = registry();
      std::lock_guard<std::mutex> lock(r.mu);
      r.live.insert(h);
    }
    return Napi::External<CommHandle>::New(env, h, [](Napi::Env, CommHandle* p) {
      {
        Registry& r = registry();
        std::lock_guard<std::mutex> lock(r.mu);
        r.live.erase(p);
      }
      delete p;
    });
  }
  InitCall() = default;
  InitCall(InitCall&& o) noexcept
      : keep(std::move(o.keep)), size(o.size), rank(o.rank), timeout_s(o.timeout_s), comm(o.comm) {
    std::memcpy(id, o.id, sizeof id);
    o.comm = nullptr;
  }
  // A communicator that was created but never handed to JS (the environment went away).
  ~InitCall() { nccl::comm_free(comm); }
};

// ncclCommInitRankAsync(id: Uint8Array(128), size, rank, timeoutMs) -> Promise<handle>
Napi::Value InitRank(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "ncclCommInitRank";
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
      info[0].As<Napi::Uint8Array>().ElementLength() != nccl::kUniqueIdBytes)
    throw_type(env, std::string(fn) + ": id must be a Uint8Array of 128 bytes (ncclGetUniqueId)");
  const double size = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -1;
  const double rank = info[2].IsNumber() ? info[2].As<Napi::Number>().DoubleValue() : -1;
  if (!(size >= 1 && size <= 65536) || size != std::floor(size)) throw_range(env, std::string(fn) + ": size must be an integer in [1, 65536]");
  if (!(rank >= 0 && rank < size) || rank != std::floor(rank)) throw_range(env, std::string(fn) + ": rank must be an integer in [0, size)");
  const double timeout_ms = info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : -1;
  if (!(timeout_ms > 0)) throw_range(env, std::string(fn) + ": timeoutMs must be a number > 0 (Infinity: no watchdog)");
  InitCall c;
  c.timeout_s = timeout_ms / 1000;
  std::memcpy(c.id, info[0].As<Napi::Uint8Array>().Data(), nccl::kUniqueIdBytes);
  c.size = static_cast<int>(size);
  c.rank = static_cast<int>(rank);
  return AsyncCall<InitCall>::Start(env, std::move(c));
}

struct CollectiveCall {
  std::vector<Napi::Value> keep;
  CommPtr comm;
  std::shared_ptr<void> hold_send, hold_recv;  // device blocks
  bool gather = false;
  bool device = false;
  const void* send = nullptr;
  void* recv = nullptr;
  size_t count = 0;
  Status run_async() const {
    if (device) {
      return gather ? nccl::all_gather_device(comm.get(), static_cast<const float*>(send), static_cast<float*>(recv), count)
                    : nccl::all_reduce_device(comm.get(), static_cast<const float*>(send), static_cast<float*>(recv), count);
    }
    return gather ? nccl::all_gather_host(comm.get(), static_cast<const double*>(send), static_cast<double*>(recv), count)
                  : nccl::all_reduce_host(comm.get(), static_cast<const double*>(send), static_cast<double*>(recv), count);
  }
  napi_value result(napi_env env) const {
    napi_value u;
    napi_get_undefined(env, &u);
    return u;
  }
};

bool is_f64(Napi::Value v) {
  return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float64_array;
}

// ncclAll{Reduce,Gather}Async(comm, send, recv, size): Float64Arrays, or DeviceTensor
// handles of float32. recv has count (reduce) or size·count (gather) elements.
Napi::Value Collective(const Napi::CallbackInfo& info, bool gather) {
  Napi::Env env = info.Env();
  const char* fn = gather ? "ncclAllGather" : "ncclAllReduce";
  CollectiveCall c;
  c.comm = get_comm(env, info[0], fn, "comm");
  c.gather = gather;
  const double size = info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : 0;
  if (!(size >= 1) || size != std::floor(size)) throw_range(env, std::string(fn) + ": size must be an integer >= 1");
  size_t send_len = 0, recv_len = 0;
  if (is_f64(info[1]) && is_f64(info[2])) {
    Napi::Float64Array s = info[1].As<Napi::Float64Array>(), r = info[2].As<Napi::Float64Array>();
    c.send = s.Data();
    c.recv = r.Data();
    send_len = s.ElementLength();
    recv_len = r.ElementLength();
    c.keep = {info[1], info[2]};
  } else {
    DeviceRef s, r;
    if (!get_device_ref(env, info[1], fn, "send", &s) || !get_device_ref(env, info[2], fn, "recv", &r))
      throw_type(env, std::string(fn) + ": send and recv must both be Float64Arrays or both DeviceTensor handles");
    c.device = true;
    c.send = s.data;
    c.recv = r.data;
    c.hold_send = s.hold;
    c.hold_recv = r.hold;
    send_len = s.length;
    recv_len = r.length;
  }
  const size_t want = gather ? send_len * static_cast<size_t>(size) : send_len;
  if (recv_len != want)
    throw_range(env, std::string(fn) + ": recv has " + std::to_string(recv_len) + " elements, expected " + std::to_string(want));
  c.count = send_len;
  return AsyncCall<CollectiveCall>::Start(env, std::move(c));
}

Napi::Value AllReduce(const Napi::CallbackInfo& info) { return Collective(info, false); }
Napi::Value AllGather(const Napi::CallbackInfo& info) { return Collective(info, true); }

// ncclCommDestroy(comm, abort): abort interrupts in-flight collectives (they reject);
// the communicator is freed when the last in-flight call has ended.
Napi::Value Destroy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CommHandle* h = unwrap(info[0]);
  if (!h) throw_type(env, "ncclCommDestroy: comm must be a communicator handle");
  if (h->comm) {
    if (info[1].ToBoolean()) nccl::comm_abort(h->comm.get());
    h->comm.reset();
  }
  return env.Undefined();
}

}  // namespace

std::shared_ptr<nccl::Comm> get_comm(Napi::Env env, Napi::Value v, const char* fn, const char* name) {
  CommHandle* h = unwrap(v);
  if (!h) throw_type(env, std::string(fn) + ": " + name + " must be a communicator handle");
  if (!h->comm) throw_type(env, std::string(fn) + ": " + name + " is a destroyed communicator");
  return h->comm;
}

void register_nccl_functions(Napi::Env env, Napi::Object exports) {
  exports.Set("ncclProbe", Napi::Function::New(env, Probe, "ncclProbe"));
  exports.Set("ncclGetUniqueId", Napi::Function::New(env, UniqueId, "ncclGetUniqueId"));
  exports.Set("ncclCommInitRankAsync", Napi::Function::New(env, InitRank, "ncclCommInitRankAsync"));
  exports.Set("ncclAllReduceAsync", Napi::Function::New(env, AllReduce, "ncclAllReduceAsync"));
  exports.Set("ncclAllGatherAsync", Napi::Function::New(env, AllGather, "ncclAllGatherAsync"));
  exports.Set("ncclCommDestroy", Napi::Function::New(env, Destroy, "ncclCommDestroy"));
}

}  // namespace bn
