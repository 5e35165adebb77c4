// The NCCL communicator as seen from native/: plain C++, no CUDA or NCCL headers.
// Implemented by cuda/nccl.cu and, without nvcc, by native/cuda_stub.cc.
#pragma once
#include <cstddef>
#include <string>

#include "status.h"

struct CUstream_st;  // cudaStream_t (CUDA's driver_types.h), without the CUDA headers

namespace bn {
namespace nccl {

// Outcome of finding libnccl: dlopen, dlsym of every symbol, ncclGetVersion().
struct LoadInfo {
  bool loaded = false;
  int version = 0;    // ncclGetVersion(), e.g. 22703 for 2.27.3; 0 when not called
  std::string path;   // what was opened (a path or a soname)
  std::string reason; // why not, when !loaded
};

// The loader run on `path` ("" = BATCHNORM_NCCL_PATH when set, else libnccl.so.2).
// Needs no GPU. The first call with "" also becomes the process's library.
LoadInfo probe(const std::string& path);

constexpr size_t kUniqueIdBytes = 128;

// ncclGetUniqueId into out[128]. Needs the library and the CUDA backend.
Status unique_id(unsigned char* out);

struct Comm;  // an ncclComm_t and its state

// ncclCommInitRank on device 0 of this process (one process per GPU: the caller picks
// the GPU with CUDA_VISIBLE_DEVICES). Blocks until every rank has joined.
// timeout_s: how long a collective queued by the enqueue variants may stay unfinished
// before a watchdog aborts the communicator (a peer that died would otherwise hold our
// stream, and every later download, forever); > 0.
Status comm_init(const unsigned char* id, int size, int rank, double timeout_s, Comm** out);
// ncclCommAbort, callable while a collective of another thread is in flight (that
// collective then fails); later collectives fail at once. Idempotent.
void comm_abort(Comm* c);
// ncclCommDestroy (unless aborted) and frees *c; no collective may be in flight. null: no-op.
void comm_free(Comm* c);
// The number of ranks of the group (what comm_init was given).
int comm_size(const Comm* c);

// Collectives on our stream, waited for. Host variants stage float64 arrays through
// device memory; device variants take float32 device pointers and never touch the host.
// all_gather: recv holds size·count elements, rank-ordered.
Status all_reduce_host(Comm* c, const double* send, double* recv, size_t count);
Status all_gather_host(Comm* c, const double* send, double* recv, size_t count);
Status all_reduce_device(Comm* c, const float* send, float* recv, size_t count);
Status all_gather_device(Comm* c, const float* send, float* recv, size_t count);

// The same collectives on float64 device buffers, enqueued on `stream` and not waited
// for: they return once NCCL has queued the work, ordered on the stream after the
// kernels that produce `send` and before those that read `recv`. They report a bad call
// and a communicator that has already failed or been aborted. A failure while the
// collective runs shows at the next synchronization; a collective that cannot complete
// (a peer died before joining it) holds the stream, and whatever waits on it, until
// comm_abort. For the device training ops, whose calls only enqueue. `op` names the
// calling op in errors.
Status all_gather_enqueue(Comm* c, const double* send, double* recv, size_t count, CUstream_st* stream,
                          const char* op);
Status all_reduce_enqueue(Comm* c, const double* send, double* recv, size_t count, CUstream_st* stream,
                          const char* op);

}  // namespace nccl
}  // namespace bn
