// The NCCL communicator: finding libnccl at run time and the four collectives the sync
// ops need. This is the only file that calls NCCL.
//
// Loading (as the cuDNN path, TensorFlow's stub pattern): dlopen at first use,
// RTLD_LOCAL, every symbol resolved up front, ncclGetVersion() checked; any failure is a
// reason string (ncclProbe, info().nccl), never a crash, never a link-time dependency.
//
// Running: one process per GPU; each process uses device 0 (the caller selects the GPU
// with CUDA_VISIBLE_DEVICES), as NCCL does not allow two ranks on one GPU. Collectives
// are enqueued on the stream of our kernels, so they are ordered with the ops that
// produce and consume the buffers, and waited for before the call returns. Host float64
// arrays are staged through device memory from our caching allocator. The enqueue
// variants serve the synchronized training ops (cuda/training.cu): they only queue the
// collective between those ops' kernels, and the op returns before the GPU is done.
//
// UNTESTED ON A GPU in CI (no CI machine has one): the loader's failure paths are tested
// with fake libraries; scripts/nccl-check.sh runs the collectives on a GPU machine.
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common.cuh"
#include "nccl_api.h"
#include "dl_library.h"
#include "../native/backend_api/nccl.h"

namespace bn {
namespace nccl {
using namespace ::bn::cuda;

namespace {

struct Api {
  ncclGetVersion_t GetVersion = nullptr;
  ncclGetErrorString_t GetErrorString = nullptr;
  ncclGetUniqueId_t GetUniqueId = nullptr;
  ncclCommInitRank_t CommInitRank = nullptr;
  ncclCommDestroy_t CommDestroy = nullptr;
  ncclCommAbort_t CommAbort = nullptr;
  ncclCommGetAsyncError_t CommGetAsyncError = nullptr;
  ncclAllReduce_t AllReduce = nullptr;
  ncclAllGather_t AllGather = nullptr;
};

constexpr const char* kSoname = "libnccl.so.2";
// ncclCommGetAsyncError and ncclCommAbort appeared in NCCL 2.4.
constexpr int kMinMajor = 2;
constexpr int kMinMinor = 4;

using dl::is_directory;
using dl::version_major;
using dl::version_minor;
using dl::version_text;

// Libraries are never dlclose'd: NCCL keeps proxy threads and static state.
// override_path: "" = the default search path; `source` says where it came from (for reasons).
LoadInfo load(const std::string& override_path, const std::string& source, Api* api) {
  LoadInfo info;
  std::string name = kSoname;
  std::string tried;
  if (!override_path.empty()) {
    name = is_directory(override_path) ? override_path + "/" + kSoname : override_path;
    tried = source + override_path;
  } else {
    tried = std::string(kSoname) + " on the default library search path";
  }
  info.path = name;
  if (dl::refuses(name)) {
    info.reason = std::string(kSoname) + " not loaded (tried " + tried + ": not a regular file or a directory)";
    return info;
  }
  std::string err;
  void* h = dl::open_library(name, &err);
  if (!h) {
    info.reason = std::string(kSoname) + " not found (tried " + tried + ": " + err + ")" +
                  (override_path.empty() ? "; install NCCL (e.g. pip install nvidia-nccl-cu13) and set BATCHNORM_NCCL_PATH "
                                           "to the library or its directory"
                                         : "");
    return info;
  }
  auto resolve = [&](const char* sym, void** out) -> bool {
    dlerror();
    *out = dlsym(h, sym);
    if (*out) return true;
    info.reason = std::string("symbol ") + sym + " missing from " + name;
    return false;
  };
#define BN_RESOLVE(fn)                                      \
  do {                                                      \
    void* p_ = nullptr;                                     \
    if (!resolve("nccl" #fn, &p_)) return info;             \
    api->fn = reinterpret_cast<decltype(api->fn)>(p_);      \
  } while (0)
  // The version first: an old NCCL is reported as such, not as a missing symbol.
  BN_RESOLVE(GetVersion);
  int v = 0;
  const ncclResult_t r = api->GetVersion(&v);
  info.version = v;
  if (r != ncclSuccess) {
    info.reason = "ncclGetVersion() failed with code " + std::to_string(r) + " in " + name;
    return info;
  }
  const int major = version_major(v), minor = version_minor(v);
  if (major < kMinMajor || (major == kMinMajor && minor < kMinMinor)) {
    info.reason = "NCCL " + version_text(v) + " is too old (ncclGetVersion() = " + std::to_string(v) + " from " + name +
                  "); the NCCL communicator needs NCCL 2.4 or newer";
    return info;
  }
  BN_RESOLVE(GetErrorString);
  BN_RESOLVE(GetUniqueId);
  BN_RESOLVE(CommInitRank);
  BN_RESOLVE(CommDestroy);
  BN_RESOLVE(CommAbort);
  BN_RESOLVE(CommGetAsyncError);
  BN_RESOLVE(AllReduce);
  BN_RESOLVE(AllGather);
#undef BN_RESOLVE
  info.loaded = true;
  return info;
}

struct Library {
  LoadInfo info;
  Api api;
};
Library& lib() {
  // Never destroyed (see load); loaded once, on first use.
  static Library* l = [] {
    auto* x = new Library;
    const char* env = std::getenv("BATCHNORM_NCCL_PATH");
    x->info = load(env ? env : "", "BATCHNORM_NCCL_PATH=", &x->api);
    return x;
  }();
  return *l;
}

// The library and the CUDA backend, or why not.
Status require(const char* op) {
  const DeviceInfo& d = device_info();
  if (!d.available)
    return Status::Error(Code::kBackendUnavailable, std::string(op) + ": NCCL needs the CUDA backend: " + d.reason);
  if (!lib().info.loaded)
    return Status::Error(Code::kBackendUnavailable, std::string(op) + ": NCCL is unavailable: " + lib().info.reason);
  return Status::Ok();
}

Status nccl_error(ncclResult_t r, const char* op, const char* what) {
  const char* s = lib().api.GetErrorString ? lib().api.GetErrorString(r) : nullptr;
  return Status::Error(Code::kNccl, std::string(op) + ": " + what + " failed: " + (s ? s : "unknown NCCL error") +
                                        " (ncclResult_t " + std::to_string(r) + ")");
}

#define BN_NCCL_TRY(expr, op, what)                              \
  do {                                                           \
    const ncclResult_t bn_r_ = (expr);                           \
    if (bn_r_ != ncclSuccess) return nccl_error(bn_r_, op, what); \
  } while (0)

}  // namespace

// The enqueue variants return before their collective has run, so nothing waits for it:
// a peer that died would leave it, our stream and every later download blocked forever.
// Each enqueued collective is followed by an event; a watchdog thread (started with the
// first one) polls the events and, when one is still unfinished timeout_s after it was
// queued, aborts the communicator: NCCL then ends the queued collective kernels, the
// stream moves on, and every later call on the communicator fails with the reason.
struct Comm {
  ncclComm_t comm = nullptr;
  int size = 0;
  int rank = 0;
  std::mutex mu;        // one collective at a time per communicator
  std::mutex state_mu;  // guards `aborted`, `abort_reason` and every NCCL call but the wait on the stream
  bool aborted = false;
  std::string abort_reason;  // set when the watchdog aborted it

  double timeout_s = 300;
  struct Pending {
    cudaEvent_t done;
    std::chrono::steady_clock::time_point deadline;
  };
  std::mutex watch_mu;  // guards pending, stop and watchdog; never held with state_mu
  std::condition_variable watch_cv;
  std::vector<Pending> pending;
  bool stop = false;
  std::thread watchdog;
};

LoadInfo probe(const std::string& path) {
  if (path.empty()) return lib().info;
  Api api;
  return load(path, "path ", &api);
}

Status unique_id(unsigned char* out) {
  const char* op = "ncclGetUniqueId";
  BN_TRY(require(op));
  ncclUniqueId id;
  BN_NCCL_TRY(lib().api.GetUniqueId(&id), op, "ncclGetUniqueId");
  std::memcpy(out, id.internal, kUniqueIdBytes);
  return Status::Ok();
}

Status comm_init(const unsigned char* id_bytes, int size, int rank, double timeout_s, Comm** out) {
  const char* op = "ncclCommInitRank";
  *out = nullptr;
  BN_TRY(require(op));
  BN_CUDA_TRY(cudaSetDevice(0), op, "cudaSetDevice(0)");
  ncclUniqueId id;
  std::memcpy(id.internal, id_bytes, kUniqueIdBytes);
  auto* c = new Comm;
  c->size = size;
  c->rank = rank;
  c->timeout_s = timeout_s > 0 ? timeout_s : 300;
  const ncclResult_t r = lib().api.CommInitRank(&c->comm, size, id, rank);
  if (r != ncclSuccess) {
    delete c;
    return nccl_error(r, op, "ncclCommInitRank");
  }
  *out = c;
  return Status::Ok();
}

namespace {

void abort_with(Comm* c, const std::string& reason) {
  std::lock_guard<std::mutex> lock(c->state_mu);
  if (c->aborted) return;
  c->aborted = true;
  c->abort_reason = reason;
  lib().api.CommAbort(c->comm);
}

void watch(Comm* c) {
  cudaSetDevice(0);  // the device of every communicator here (see comm_init)
  std::unique_lock<std::mutex> lock(c->watch_mu);
  while (!c->stop) {
    if (c->pending.empty()) {
      c->watch_cv.wait(lock, [c] { return c->stop || !c->pending.empty(); });
      continue;
    }
    if (c->watch_cv.wait_for(lock, std::chrono::milliseconds(20), [c] { return c->stop; })) break;
    const auto now = std::chrono::steady_clock::now();
    bool expired = false;
    std::vector<Comm::Pending> left;
    for (const Comm::Pending& p : c->pending) {
      const cudaError_t e = cudaEventQuery(p.done);
      if (e == cudaErrorNotReady) {
        expired = expired || now > p.deadline;
        left.push_back(p);
        continue;
      }
      // Finished, or failed: a failure of the stream reports at the next synchronization.
      if (e != cudaSuccess) cudaGetLastError();
      cudaEventDestroy(p.done);
    }
    c->pending.swap(left);
    if (expired) {
      const std::string reason = "a synchronized op's collective did not complete within " +
                                 std::to_string(static_cast<long long>(c->timeout_s)) +
                                 " s (a rank died or stopped calling the synchronized ops)";
      lock.unlock();
      abort_with(c, reason);  // idempotent; the aborted collectives' events then complete
      lock.lock();
    }
  }
  for (const Comm::Pending& p : c->pending) cudaEventDestroy(p.done);
  c->pending.clear();
}

// After a collective was queued on `s`: an event behind it for the watchdog.
Status watch_enqueued(Comm* c, cudaStream_t s, const char* op) {
  if (!(c->timeout_s < 1e9)) return Status::Ok();  // an infinite timeout: no watchdog
  cudaEvent_t ev = nullptr;
  BN_CUDA_TRY(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), op, "cudaEventCreate (watchdog)");
  const cudaError_t e = cudaEventRecord(ev, s);
  if (e != cudaSuccess) {
    cudaEventDestroy(ev);
    return cuda_error(e, op, "cudaEventRecord (watchdog)");
  }
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(c->timeout_s));
  {
    std::lock_guard<std::mutex> lock(c->watch_mu);
    c->pending.push_back({ev, deadline});
    if (!c->watchdog.joinable()) c->watchdog = std::thread(watch, c);
  }
  c->watch_cv.notify_all();
  return Status::Ok();
}

}  // namespace

void comm_abort(Comm* c) {
  if (!c) return;
  abort_with(c, "");
}

void comm_free(Comm* c) {
  if (!c) return;
  {
    std::lock_guard<std::mutex> lock(c->watch_mu);
    c->stop = true;
  }
  c->watch_cv.notify_all();
  if (c->watchdog.joinable()) c->watchdog.join();
  if (!c->aborted) lib().api.CommDestroy(c->comm);
  delete c;
}

int comm_size(const Comm* c) { return c ? c->size : 0; }

namespace {

// The caller holds state_mu.
Status aborted_error(const Comm* c, const char* op) {
  return Status::Error(Code::kNccl, std::string(op) + ": the communicator was aborted" +
                                        (c->abort_reason.empty() ? "" : ": " + c->abort_reason));
}

// Runs `enqueue(stream)` under state_mu unless the communicator was aborted: NCCL calls
// on one communicator never overlap comm_abort. The caller holds c->mu.
template <typename F>
Status enqueue_unless_aborted(Comm* c, const char* op, cudaStream_t s, F enqueue) {
  std::lock_guard<std::mutex> lock(c->state_mu);
  if (c->aborted) return aborted_error(c, op);
  return enqueue(s);
}

// Enqueues `enqueue` on our stream, waits for it, and reports a failure of the
// communicator itself (a peer that died, a network error, an abort) as well as of the
// call. The wait runs without state_mu, so comm_abort can interrupt it.
template <typename F>
Status run_collective(Comm* c, const char* op, F enqueue) {
  BN_TRY(require(op));
  std::lock_guard<std::mutex> serial(c->mu);
  cudaStream_t s;
  BN_TRY(get_stream(&s, op));
  BN_TRY(enqueue_unless_aborted(c, op, s, enqueue));
  const cudaError_t e = cudaStreamSynchronize(s);
  std::lock_guard<std::mutex> lock(c->state_mu);
  if (c->aborted) return aborted_error(c, op);
  ncclResult_t async = ncclSuccess;
  lib().api.CommGetAsyncError(c->comm, &async);
  if (async != ncclSuccess) return nccl_error(async, op, "the communicator");
  if (e != cudaSuccess) return cuda_error(e, op, "cudaStreamSynchronize");
  return Status::Ok();
}

// Enqueues `enqueue` on `s` without waiting. A communicator that has already failed is
// refused before anything is queued on it (its collectives would never complete).
template <typename F>
Status enqueue_collective(Comm* c, const char* op, cudaStream_t s, F enqueue) {
  BN_TRY(require(op));
  if (!c) return Status::Error(Code::kRangeError, std::string(op) + ": the NCCL communicator is missing");
  std::lock_guard<std::mutex> serial(c->mu);
  BN_TRY(enqueue_unless_aborted(c, op, s, [&](cudaStream_t st) -> Status {
    ncclResult_t async = ncclSuccess;
    lib().api.CommGetAsyncError(c->comm, &async);
    if (async != ncclSuccess) return nccl_error(async, op, "the communicator");
    return enqueue(st);
  }));
  return watch_enqueued(c, s, op);
}

Status host_collective(Comm* c, const char* op, const double* send, double* recv, size_t count, bool gather) {
  BN_TRY(require(op));
  const size_t out_count = gather ? count * static_cast<size_t>(c->size) : count;
  Scratch dsend, drecv;
  BN_TRY(dsend.alloc(count * sizeof(double), op));
  BN_TRY(drecv.alloc(out_count * sizeof(double), op));
  BN_TRY(copy_to_device(dsend.as<void>(), send, count * sizeof(double), op));
  BN_TRY(run_collective(c, op, [&](cudaStream_t s) -> Status {
    if (gather) {
      BN_NCCL_TRY(lib().api.AllGather(dsend.as<void>(), drecv.as<void>(), count, ncclFloat64, c->comm, s), op, "ncclAllGather");
    } else {
      BN_NCCL_TRY(lib().api.AllReduce(dsend.as<void>(), drecv.as<void>(), count, ncclFloat64, ncclSum, c->comm, s), op,
                  "ncclAllReduce");
    }
    return Status::Ok();
  }));
  return copy_to_host(recv, drecv.as<void>(), out_count * sizeof(double), op);
}

}  // namespace

Status all_reduce_host(Comm* c, const double* send, double* recv, size_t count) {
  return host_collective(c, "allReduce", send, recv, count, false);
}
Status all_gather_host(Comm* c, const double* send, double* recv, size_t count) {
  return host_collective(c, "allGather", send, recv, count, true);
}
Status all_reduce_device(Comm* c, const float* send, float* recv, size_t count) {
  return run_collective(c, "allReduceDevice", [&](cudaStream_t s) -> Status {
    BN_NCCL_TRY(lib().api.AllReduce(send, recv, count, ncclFloat32, ncclSum, c->comm, s), "allReduceDevice", "ncclAllReduce");
    return Status::Ok();
  });
}
Status all_gather_device(Comm* c, const float* send, float* recv, size_t count) {
  return run_collective(c, "allGatherDevice", [&](cudaStream_t s) -> Status {
    BN_NCCL_TRY(lib().api.AllGather(send, recv, count, ncclFloat32, c->comm, s), "allGatherDevice", "ncclAllGather");
    return Status::Ok();
  });
}

Status all_gather_enqueue(Comm* c, const double* send, double* recv, size_t count, CUstream_st* stream,
                          const char* op) {
  return enqueue_collective(c, op, stream, [&](cudaStream_t s) -> Status {
    BN_NCCL_TRY(lib().api.AllGather(send, recv, count, ncclFloat64, c->comm, s), op, "ncclAllGather");
    return Status::Ok();
  });
}
Status all_reduce_enqueue(Comm* c, const double* send, double* recv, size_t count, CUstream_st* stream,
                          const char* op) {
  return enqueue_collective(c, op, stream, [&](cudaStream_t s) -> Status {
    BN_NCCL_TRY(lib().api.AllReduce(send, recv, count, ncclFloat64, ncclSum, c->comm, s), op, "ncclAllReduce");
    return Status::Ok();
  });
}

}  // namespace nccl
}  // namespace bn
