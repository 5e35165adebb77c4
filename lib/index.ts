export { tensor, type Tensor, type ParamLike } from './tensor';
export {
  moments, momentsAsync, batchNormalization, batchNormalizationAsync,
  type Moments, type MomentsOptions, type BatchNormOptions,
} from './ops';
export {
  backends, setBackend, getBackend, explain, setNumThreads, getNumThreads,
  type BackendChoice, type BackendInfo,
} from './backend';
export { BackendError } from './errors';
export { info, version, cudnnProbe, type Info, type CudnnProbe } from './info';
export {
  sufficientStatistics, mergeMoments, finalizeMoments, fusedBatchNorm, fusedBatchNormAsync,
  batchNormalizationGrad, batchNormalizationGradAsync, fusedBatchNormGrad, fusedBatchNormGradAsync,
  type SufficientStatistics, type FusedBatchNormOptions, type FusedBatchNormResult,
  type BatchNormGradOptions, type BatchNormGrads, type DataFormat, type DeviceFusedBatchNormOptions,
  type DeviceFusedBatchNormResult, type DeviceBatchNormGrads,
} from './training';
export {
  BatchNormalization, CONVENTIONS, type Convention, type ConventionSpec,
  type BatchNormalizationOptions, type BatchNormalizationState,
} from './layer';
export {
  DeviceTensor, memoryInfo, emptyCache, deviceTimeOp, type DeviceMoments, type DeviceMemoryInfo,
} from './device';
export { checkCommunicator, CollectiveError, type Communicator, type ReduceOp } from './sync/communicator';
export {
  createThreadGroup, threadCommunicator, abortThreadGroup, type ThreadGroupHandle, type ThreadGroupOptions,
} from './sync/threads';
export {
  NcclCommunicator, ncclProbe, type NcclProbe, type NcclCommunicatorOptions,
} from './sync/nccl';
