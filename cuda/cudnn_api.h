// The few cuDNN declarations the cuDNN path needs, written out here so that the package
// builds without cuDNN's headers and never links it: the library is dlopen'ed at first
// use (cuda/cudnn_bn.cu) and every function below is a pointer type resolved with dlsym.
//
// Values and signatures are those of NVIDIA's cuDNN API reference and headers
// (cudnn_graph.h / cudnn_ops.h of cuDNN 9; cudnn_ops_infer.h / cudnn_ops_train.h of
// cuDNN 8 — the legacy batch-norm API is unchanged between them):
//   https://docs.nvidia.com/deeplearning/cudnn/api/latest/api/cudnn-graph-library.html
//   https://docs.nvidia.com/deeplearning/cudnn/api/latest/api/cudnn-ops-library.html
// Only what is listed here may be used; add a declaration (with its source) before use.
#pragma once
#include <cstddef>

extern "C" {

// Opaque handles (cudnnContext*, cudnnTensorStruct* in cudnn_graph.h).
struct cudnnContext;
typedef struct cudnnContext* cudnnHandle_t;
struct cudnnTensorStruct;
typedef struct cudnnTensorStruct* cudnnTensorDescriptor_t;
struct cudnnActivationStruct;
typedef struct cudnnActivationStruct* cudnnActivationDescriptor_t;
// cudaStream_t is `struct CUstream_st*` (CUDA driver_types.h); spelled out so this header
// needs no CUDA header either.
struct CUstream_st;
typedef struct CUstream_st* cudnnStream_t;

// cudnnStatus_t: only SUCCESS is compared against; every other value goes through
// cudnnGetErrorString (cuDNN 9 renumbered the error codes, e.g. BAD_PARAM 2000).
typedef int cudnnStatus_t;
constexpr cudnnStatus_t CUDNN_STATUS_SUCCESS = 0;

// cudnnTensorFormat_t (cudnn_graph.h): CUDNN_TENSOR_NCHW = 0, CUDNN_TENSOR_NHWC = 1.
// Not needed by the calls below (strides describe the layout) but kept for reference.
typedef int cudnnTensorFormat_t;
constexpr cudnnTensorFormat_t CUDNN_TENSOR_NCHW = 0;
constexpr cudnnTensorFormat_t CUDNN_TENSOR_NHWC = 1;

// cudnnDataType_t (cudnn_graph.h): CUDNN_DATA_FLOAT = 0.
typedef int cudnnDataType_t;
constexpr cudnnDataType_t CUDNN_DATA_FLOAT = 0;

// cudnnBatchNormMode_t (cudnn_ops.h): PER_ACTIVATION = 0, SPATIAL = 1 (one mean/variance
// per channel over N and the spatial dims: our per-channel statistics), SPATIAL_PERSISTENT = 2.
typedef int cudnnBatchNormMode_t;
constexpr cudnnBatchNormMode_t CUDNN_BATCHNORM_PER_ACTIVATION = 0;
constexpr cudnnBatchNormMode_t CUDNN_BATCHNORM_SPATIAL = 1;
constexpr cudnnBatchNormMode_t CUDNN_BATCHNORM_SPATIAL_PERSISTENT = 2;

// cudnnBatchNormOps_t (cudnn_ops.h): what the Ex calls fuse after the normalization.
// OPS_BN = 0 (batch norm only), OPS_BN_ACTIVATION = 1, OPS_BN_ADD_ACTIVATION = 2.
typedef int cudnnBatchNormOps_t;
constexpr cudnnBatchNormOps_t CUDNN_BATCHNORM_OPS_BN = 0;

// cudnn_ops.h (v9) and cudnn_ops_infer.h (v8): `#define CUDNN_BN_MIN_EPSILON 0.0`.
// (cuDNN <= 7.x headers had 1e-5; this package requires cuDNN 9.)
constexpr double CUDNN_BN_MIN_EPSILON = 0.0;

// Function types, exactly as declared by cuDNN (CUDNNWINAPI is empty on Linux).
typedef size_t (*cudnnGetVersion_t)(void);
typedef const char* (*cudnnGetErrorString_t)(cudnnStatus_t status);
typedef cudnnStatus_t (*cudnnCreate_t)(cudnnHandle_t* handle);
typedef cudnnStatus_t (*cudnnDestroy_t)(cudnnHandle_t handle);
typedef cudnnStatus_t (*cudnnSetStream_t)(cudnnHandle_t handle, cudnnStream_t streamId);
typedef cudnnStatus_t (*cudnnCreateTensorDescriptor_t)(cudnnTensorDescriptor_t* tensorDesc);
typedef cudnnStatus_t (*cudnnDestroyTensorDescriptor_t)(cudnnTensorDescriptor_t tensorDesc);
typedef cudnnStatus_t (*cudnnSetTensorNdDescriptor_t)(cudnnTensorDescriptor_t tensorDesc, cudnnDataType_t dataType,
                                                      int nbDims, const int dimA[], const int strideA[]);
typedef cudnnStatus_t (*cudnnDeriveBNTensorDescriptor_t)(cudnnTensorDescriptor_t derivedBnDesc,
                                                         const cudnnTensorDescriptor_t xDesc, cudnnBatchNormMode_t mode);
typedef cudnnStatus_t (*cudnnBatchNormalizationForwardInference_t)(
    cudnnHandle_t handle, cudnnBatchNormMode_t mode, const void* alpha, const void* beta,
    const cudnnTensorDescriptor_t xDesc, const void* x, const cudnnTensorDescriptor_t yDesc, void* y,
    const cudnnTensorDescriptor_t bnScaleBiasMeanVarDesc, const void* bnScale, const void* bnBias,
    const void* estimatedMean, const void* estimatedVariance, double epsilon);
typedef cudnnStatus_t (*cudnnBatchNormalizationForwardTraining_t)(
    cudnnHandle_t handle, cudnnBatchNormMode_t mode, const void* alpha, const void* beta,
    const cudnnTensorDescriptor_t xDesc, const void* x, const cudnnTensorDescriptor_t yDesc, void* y,
    const cudnnTensorDescriptor_t bnScaleBiasMeanVarDesc, const void* bnScale, const void* bnBias,
    double exponentialAverageFactor, void* resultRunningMean, void* resultRunningVariance, double epsilon,
    void* resultSaveMean, void* resultSaveInvVariance);
typedef cudnnStatus_t (*cudnnBatchNormalizationBackward_t)(
    cudnnHandle_t handle, cudnnBatchNormMode_t mode, const void* alphaDataDiff, const void* betaDataDiff,
    const void* alphaParamDiff, const void* betaParamDiff, const cudnnTensorDescriptor_t xDesc, const void* x,
    const cudnnTensorDescriptor_t dyDesc, const void* dy, const cudnnTensorDescriptor_t dxDesc, void* dx,
    const cudnnTensorDescriptor_t dBnScaleBiasDesc, const void* bnScale, void* dBnScaleResult, void* dBnBiasResult,
    double epsilon, const void* savedMean, const void* savedInvVariance);

// The Ex API (cuDNN >= 7.4; cudnn_ops.h in cuDNN 9, deprecated there like the rest of
// the legacy batch-norm API): with CUDNN_BATCHNORM_SPATIAL_PERSISTENT it has NHWC
// kernels, and takes a workspace and a reserve space whose sizes are queried first.
typedef cudnnStatus_t (*cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize_t)(
    cudnnHandle_t handle, cudnnBatchNormMode_t mode, cudnnBatchNormOps_t bnOps, const cudnnTensorDescriptor_t xDesc,
    const cudnnTensorDescriptor_t zDesc, const cudnnTensorDescriptor_t yDesc,
    const cudnnTensorDescriptor_t bnScaleBiasMeanVarDesc, const cudnnActivationDescriptor_t activationDesc,
    size_t* sizeInBytes);
typedef cudnnStatus_t (*cudnnGetBatchNormalizationBackwardExWorkspaceSize_t)(
    cudnnHandle_t handle, cudnnBatchNormMode_t mode, cudnnBatchNormOps_t bnOps, const cudnnTensorDescriptor_t xDesc,
    const cudnnTensorDescriptor_t yDesc, const cudnnTensorDescriptor_t dyDesc, const cudnnTensorDescriptor_t dzDesc,
    const cudnnTensorDescriptor_t dxDesc, const cudnnTensorDescriptor_t dBnScaleBiasDesc,
    const cudnnActivationDescriptor_t activationDesc, size_t* sizeInBytes);
typedef cudnnStatus_t (*cudnnGetBatchNormalizationTrainingExReserveSpaceSize_t)(
    cudnnHandle_t handle, cudnnBatchNormMode_t mode, cudnnBatchNormOps_t bnOps,
    const cudnnActivationDescriptor_t activationDesc, const cudnnTensorDescriptor_t xDesc, size_t* sizeInBytes);
typedef cudnnStatus_t (*cudnnBatchNormalizationForwardTrainingEx_t)(
    cudnnHandle_t handle, cudnnBatchNormMode_t mode, cudnnBatchNormOps_t bnOps, const void* alpha, const void* beta,
    const cudnnTensorDescriptor_t xDesc, const void* xData, const cudnnTensorDescriptor_t zDesc, const void* zData,
    const cudnnTensorDescriptor_t yDesc, void* yData, const cudnnTensorDescriptor_t bnScaleBiasMeanVarDesc,
    const void* bnScale, const void* bnBias, double exponentialAverageFactor, void* resultRunningMean,
    void* resultRunningVariance, double epsilon, void* resultSaveMean, void* resultSaveInvVariance,
    const cudnnActivationDescriptor_t activationDesc, void* workspace, size_t workSpaceSizeInBytes,
    void* reserveSpace, size_t reserveSpaceSizeInBytes);
typedef cudnnStatus_t (*cudnnBatchNormalizationBackwardEx_t)(
    cudnnHandle_t handle, cudnnBatchNormMode_t mode, cudnnBatchNormOps_t bnOps, const void* alphaDataDiff,
    const void* betaDataDiff, const void* alphaParamDiff, const void* betaParamDiff,
    const cudnnTensorDescriptor_t xDesc, const void* xData, const cudnnTensorDescriptor_t yDesc, const void* yData,
    const cudnnTensorDescriptor_t dyDesc, const void* dyData, const cudnnTensorDescriptor_t dzDesc, void* dzData,
    const cudnnTensorDescriptor_t dxDesc, void* dxData, const cudnnTensorDescriptor_t dBnScaleBiasDesc,
    const void* bnScaleData, const void* bnBiasData, void* dBnScaleData, void* dBnBiasData, double epsilon,
    const void* savedMean, const void* savedInvVariance, const cudnnActivationDescriptor_t activationDesc,
    void* workSpace, size_t workSpaceSizeInBytes, void* reserveSpace, size_t reserveSpaceSizeInBytes);

}  // extern "C"
