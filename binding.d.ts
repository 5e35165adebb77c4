// Exact types of the raw native exports (native/addon.cc). This is the contract between
// lib/ and native/: lib/ validates and normalizes every argument before calling these,
// and these functions re-check only the invariants the kernels rely on.

/** -1 = auto, 0 = cpu, 1 = cuda, 2 = cudnn */
export type BackendCode = -1 | 0 | 1 | 2;
export type BackendName = 'cpu' | 'cuda' | 'cudnn';

/**
 * moments' one options object. Writes per-output mean and variance (M2 / (n − correction))
 * into mean and variance (length = product of the kept dims); axes: distinct, in [0, rank).
 * x, mean and variance all Float32Arrays or all DeviceTensor handles. mean64/m2: optional
 * float64 sufficient statistics (host x only; both or neither): mean and M2 = Σ(x − mean)²
 * per output. Outputs are disjoint from x and each other. No other key is accepted.
 */
export interface MomentsCall {
  x: F32OrDevice;
  shape: number[];
  axes: number[];
  correction: number;
  backend: BackendCode;
  mean: F32OrDevice;
  variance: F32OrDevice;
  mean64?: Float64Array | null;
  m2?: Float64Array | null;
}

/** A tensor operand across the boundary: data.length = product of shape. */
export interface Operand {
  data: F32OrDevice;
  shape: number[];
}

/**
 * batchNormalization's one options object: y = (x − mean) · scale / sqrt(variance +
 * epsilon) + offset, every operand numpy-broadcast to y.shape. offset/scale may be null
 * (0 / 1). y.data may be x.data itself when x has y's shape; otherwise y shares no byte
 * with any operand. y lives where x does; the parameters may be host or device data.
 * No other key is accepted.
 */
export interface BatchNormalizationCall {
  x: Operand;
  mean: Operand;
  variance: Operand;
  offset: Operand | null;
  scale: Operand | null;
  epsilon: number;
  backend: BackendCode;
  y: Operand;
}

/**
 * fusedBatchNorm's one options object. x is viewed around its channel axis `axis` of
 * `shape` (rank >= 2); every vector has C = shape[axis] elements. Inputs: scale/offset
 * (null = ones / zeros), mean/variance = the running statistics (read in inference and
 * when exponentialAvgFactor != 1; null otherwise). Outputs: y (may be x itself: in place)
 * and the seven statistics, all disjoint from every input and each other.
 */
export interface FusedBatchNormCall {
  x: F32OrDevice;
  shape: number[];
  axis: number;
  scale: F32OrDevice | null;
  offset: F32OrDevice | null;
  mean: F32OrDevice | null;
  variance: F32OrDevice | null;
  epsilon: number;
  exponentialAvgFactor: number;
  isTraining: boolean;
  backend: BackendCode;
  y: F32OrDevice;
  batchMean: F32OrDevice;
  batchVariance: F32OrDevice;
  batchVarianceBiased: F32OrDevice;
  runningMean: F32OrDevice;
  runningVariance: F32OrDevice;
  savedMean: F32OrDevice;
  savedInvStd: F32OrDevice;
  /**
   * Synchronized training (at most one of the two; absent or null = local statistics).
   * wholeBatch: host data only; the whole batch's per-channel statistics as the ranks
   * exchanged them (count = elements per channel over every shard, mean and
   * m2 = Σ(x − mean)², C float64 each): no statistics pass, the same bookkeeping.
   * nccl: DeviceTensors only, backend 'cuda': the op exchanges the statistics itself.
   */
  wholeBatch?: WholeBatchStats | null;
  nccl?: NcclCommHandle | null;
}

/** The whole batch's per-channel statistics of a synchronized forward (C float64 each). */
export interface WholeBatchStats {
  count: number;
  mean: Float64Array;
  m2: Float64Array;
}

/**
 * The synchronized backward's per-channel sums (C float64 each): the whole batch's Σdy,
 * Σdy·(x − μ) and count (for dx), and this shard's own (dscale = invStd·shardSumDyXmu,
 * doffset = shardSumDy).
 */
export interface WholeBatchGradSums {
  count: number;
  sumDy: Float64Array;
  sumDyXmu: Float64Array;
  shardSumDy: Float64Array;
  shardSumDyXmu: Float64Array;
}

/** batchNormalizationGrad's one options object (layout as FusedBatchNormCall's). */
export interface BatchNormGradCall {
  dy: F32OrDevice;
  x: F32OrDevice;
  shape: number[];
  axis: number;
  scale: F32OrDevice | null;
  savedMean: F32OrDevice;
  savedInvStd: F32OrDevice;
  epsilon: number;
  isTraining: boolean;
  backend: BackendCode;
  dx: F32OrDevice;
  dscale: F32OrDevice;
  doffset: F32OrDevice;
  /** Synchronized training, as FusedBatchNormCall's (wholeBatch: host data; nccl: DeviceTensors). */
  wholeBatch?: WholeBatchGradSums | null;
  nccl?: NcclCommHandle | null;
}

/**
 * channelGradSums' one options object: host data only, layout as FusedBatchNormCall's.
 * Writes sumDy[c] = Σdy and sumDyXmu[c] = Σdy·(x − savedMean[c]) (C float64 each).
 */
export interface ChannelGradSumsCall {
  dy: Float32Array;
  x: Float32Array;
  shape: number[];
  axis: number;
  savedMean: Float32Array;
  backend: BackendCode;
  sumDy: Float64Array;
  sumDyXmu: Float64Array;
}
export type ExplainOp = 'moments' | 'batchNormalization' | 'fusedBatchNorm' | 'batchNormalizationGrad';

export interface NativeBackendInfo {
  name: BackendName;
  available: boolean;
  /** Why the backend is unavailable; null when available. */
  reason: string | null;
}

export interface NativeCudaInfo {
  /** The binary contains CUDA code (nvcc was found at build time). */
  compiled: boolean;
  available: boolean;
  reason: string | null;
  deviceCount: number;
  name: string;
  computeCapability: string;
  totalMemory: number;
  driverVersion: number;
  runtimeVersion: number;
}

export interface Binding {
  /** moments (see MomentsCall). Returns the backend that ran. */
  moments(options: MomentsCall): BackendName;
  momentsAsync(options: MomentsCall): Promise<BackendName>;
  /** batchNormalization (see BatchNormalizationCall). Returns the backend that ran. */
  batchNormalization(options: BatchNormalizationCall): BackendName;
  batchNormalizationAsync(options: BatchNormalizationCall): Promise<BackendName>;

  /**
   * fusedBatchNorm (TF FusedBatchNormV3 semantics), training or inference, on the backend
   * native dispatch picks. Every tensor lives where x does (all Float32Arrays or all
   * DeviceTensor handles). Returns the backend that ran; the Async twin resolves before
   * device work has finished (downloads wait for it).
   */
  fusedBatchNorm(options: FusedBatchNormCall): BackendName;
  fusedBatchNormAsync(options: FusedBatchNormCall): Promise<BackendName>;
  /** batchNormalizationGrad from the forward's saved statistics, training or frozen. */
  batchNormalizationGrad(options: BatchNormGradCall): BackendName;
  batchNormalizationGradAsync(options: BatchNormGradCall): Promise<BackendName>;
  /** How many op calls (sync or async) have entered the op bindings in this process. */
  opCalls(): number;

  /**
   * A shard's backward sums (CPU only), which the synchronized backward all-reduces and
   * passes to batchNormalizationGrad as wholeBatch.
   */
  channelGradSums(options: ChannelGradSumsCall): BackendName;
  channelGradSumsAsync(options: ChannelGradSumsCall): Promise<BackendName>;

  backends(): NativeBackendInfo[];
  /**
   * Which backend a call of `op` would use and why; throws BackendError when the requested
   * one is unavailable or cannot run the call. `call` describes per-channel parameters
   * along `axis` of x (what the cuDNN path needs to be considered).
   */
  explain(
    op: ExplainOp, backend: BackendCode, onDevice?: boolean,
    call?: { shape: number[]; axis: number; epsilon: number; isTraining?: boolean },
  ): { backend: BackendName; reason: string };
  setNumThreads(n: number): void;
  numThreads(): number;
  /** Instruction-set level the CPU kernels run with, e.g. "x86-64-v4 (AVX-512)". */
  cpuFeatures(): string;
  cudaInfo(): NativeCudaInfo;
  /** Benchmark helper: copy (read + write) and read bandwidth in GB/s over `bytes`. */
  memoryBandwidth(bytes: number, reps: number): { copy: number; read: number };
  /** Registers lib's BackendError class; native errors are constructed as new cls(message, code). */
  setBackendErrorClass(cls: new (message: string, code: string) => Error): void;
  /**
   * How the host bytes of two typed arrays relate, judged by address (two
   * SharedArrayBuffer objects can share memory): 'same' = exactly the same bytes.
   */
  memoryRelation(a: ArrayBufferView, b: ArrayBufferView): 'disjoint' | 'same' | 'overlap';
  /**
   * A zeroed Float32Array of `length` (>= 1) elements whose memory is returned to the
   * system off the JS thread once it is collected (for large outputs).
   */
  allocFloat32(length: number): Float32Array;

  /** The cuDNN loader run afresh on `path` (file or directory; default: BATCHNORM_CUDNN_PATH, then the sonames). No GPU needed. */
  cudnnProbe(path?: string): { loaded: boolean; version: number; path: string; reason: string | null };

  // ---- NCCL communicator (cuda/nccl.cu, native/nccl_binding.cc) ----
  /** The NCCL loader on `path` (file or directory; default: the process's library from BATCHNORM_NCCL_PATH, then libnccl.so.2). No GPU needed. */
  ncclProbe(path?: string): { loaded: boolean; version: number; path: string; reason: string | null };
  /** ncclGetUniqueId: 128 bytes for ncclCommInitRankAsync on every rank. BackendError without CUDA or NCCL. */
  ncclGetUniqueId(): Uint8Array;
  /**
   * ncclCommInitRank on device 0 of this process; resolves when every rank has joined.
   * timeoutMs: a collective that the training ops queued and that has not finished this
   * long after makes a watchdog abort the communicator (a dead peer never holds the stream).
   */
  ncclCommInitRankAsync(id: Uint8Array, size: number, rank: number, timeoutMs: number): Promise<NcclCommHandle>;
  /** Sum over the ranks: Float64Arrays (staged through the device) or float32 DeviceTensor handles; recv.length = send.length. */
  ncclAllReduceAsync(comm: NcclCommHandle, send: Float64Array | DeviceHandle, recv: Float64Array | DeviceHandle, size: number): Promise<void>;
  /** Rank-ordered concatenation; recv.length = size · send.length. */
  ncclAllGatherAsync(comm: NcclCommHandle, send: Float64Array | DeviceHandle, recv: Float64Array | DeviceHandle, size: number): Promise<void>;
  /** ncclCommDestroy, or ncclCommAbort when abort (in-flight collectives then reject). Idempotent. */
  ncclCommDestroy(comm: NcclCommHandle, abort: boolean): void;

  // ---- DeviceTensor handles (native/device_binding.cc) ----
  /** Copies data into new device memory. Throws BackendError when CUDA is unavailable (except for 0 elements). */
  deviceUpload(data: Float32Array): DeviceHandle;
  /** Uninitialized device memory for `length` floats. */
  deviceAlloc(length: number): DeviceHandle;
  /** Waits for queued GPU work, then copies the whole tensor into out (same length). */
  deviceDownload(handle: DeviceHandle, out: Float32Array): void;
  deviceDownloadAsync(handle: DeviceHandle, out: Float32Array): Promise<void>;
  /** Returns the memory to the caching allocator (idempotent; in-flight async ops keep it until they finish). */
  deviceDispose(handle: DeviceHandle): void;
  deviceMemoryInfo(): NativeDeviceMemoryInfo;
  /** cudaFree of every cached (free) block. */
  deviceEmptyCache(): void;
  deviceSynchronize(): void;
  /** Benchmark helper: per-run milliseconds from CUDA events, after `warmup` untimed runs. */
  deviceTimeOp(op: 'moments' | 'batchNormalization' | 'copy' | 'read', spec: object, warmup: number, reps: number): number[];
}

/** An opaque native handle to an NCCL communicator (a Napi::External). */
export interface NcclCommHandle { readonly __brand: 'NcclCommHandle' }

/** An opaque native handle to device memory (a Napi::External). */
export interface DeviceHandle { readonly __brand: 'DeviceHandle' }
export type F32OrDevice = Float32Array | DeviceHandle;

export interface NativeDeviceMemoryInfo {
  allocatedBytes: number;
  cachedBytes: number;
  reservedBytes: number;
  peakAllocatedBytes: number;
  cudaMallocCalls: number;
  cacheHits: number;
}
