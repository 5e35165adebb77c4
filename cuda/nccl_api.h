// The few NCCL declarations the NCCL communicator needs, written out here so that the
// package builds without NCCL's headers and never links it: the library is dlopen'ed at
// first use (cuda/nccl.cu) and every function below is a pointer type resolved with dlsym.
//
// Values and signatures are those of NVIDIA's nccl.h (NCCL 2.x) and its API reference:
//   https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/api.html
// Only what is listed here may be used; add a declaration (with its source) before use.
#pragma once
#include <cstddef>

extern "C" {

// ncclComm is opaque (struct ncclComm* in nccl.h).
struct ncclComm;
typedef struct ncclComm* ncclComm_t;
// cudaStream_t is `struct CUstream_st*` (CUDA driver_types.h).
struct CUstream_st;
typedef struct CUstream_st* ncclStream_t;

// NCCL_UNIQUE_ID_BYTES = 128; the id is passed by value to ncclCommInitRank.
constexpr int NCCL_UNIQUE_ID_BYTES = 128;
typedef struct {
  char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;

// ncclResult_t: ncclSuccess = 0; others go through ncclGetErrorString. ncclInProgress = 7
// (non-blocking communicators only; ours are blocking).
typedef int ncclResult_t;
constexpr ncclResult_t ncclSuccess = 0;

// ncclRedOp_t: ncclSum = 0.
typedef int ncclRedOp_t;
constexpr ncclRedOp_t ncclSum = 0;

// ncclDataType_t: ncclFloat32 = 7, ncclFloat64 = 8.
typedef int ncclDataType_t;
constexpr ncclDataType_t ncclFloat32 = 7;
constexpr ncclDataType_t ncclFloat64 = 8;

// Function types, exactly as declared by nccl.h.
typedef ncclResult_t (*ncclGetVersion_t)(int* version);
typedef const char* (*ncclGetErrorString_t)(ncclResult_t result);
typedef ncclResult_t (*ncclGetUniqueId_t)(ncclUniqueId* uniqueId);
typedef ncclResult_t (*ncclCommInitRank_t)(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank);
typedef ncclResult_t (*ncclCommDestroy_t)(ncclComm_t comm);
typedef ncclResult_t (*ncclCommAbort_t)(ncclComm_t comm);
typedef ncclResult_t (*ncclCommGetAsyncError_t)(ncclComm_t comm, ncclResult_t* asyncError);
typedef ncclResult_t (*ncclAllReduce_t)(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                                        ncclRedOp_t op, ncclComm_t comm, ncclStream_t stream);
typedef ncclResult_t (*ncclAllGather_t)(const void* sendbuff, void* recvbuff, size_t sendcount,
                                        ncclDataType_t datatype, ncclComm_t comm, ncclStream_t stream);

}  // extern "C"
