// Exact types of the raw native exports (native/addon.cc). This is the contract between
// lib/ and native/: lib/ validates and normalizes every argument before calling these,
// and these functions re-check only the invariants the kernels rely on.

/** -1 = auto, 0 = cpu, 1 = cuda, 2 = cudnn */
export type BackendCode = -1 | 0 | 1 | 2;
export type BackendName = 'cpu' | 'cuda' | 'cudnn';

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
  /**
   * Writes per-output mean and variance (M2 / (n - correction)) into outMean and
   * outVariance (length = product of the kept dims). axes: distinct, in [0, rank).
   * Returns the backend that ran.
   */
  moments(
    x: Float32Array, shape: number[], axes: number[], correction: number,
    outMean: Float32Array, outVariance: Float32Array, backend: BackendCode,
    /** Optional float64 sufficient statistics: mean and M2 = Σ(x − mean)² per output. */
    outMean64?: Float64Array | null, outM2?: Float64Array | null,
  ): BackendName;
  momentsAsync(
    x: Float32Array, shape: number[], axes: number[], correction: number,
    outMean: Float32Array, outVariance: Float32Array, backend: BackendCode,
    outMean64?: Float64Array | null, outM2?: Float64Array | null,
  ): Promise<BackendName>;

  /**
   * out = (x - mean) * scale / sqrt(variance + epsilon) + offset, every operand numpy-
   * broadcast to outShape. offset/scale may be null (0 / 1). out may be x itself when
   * x has outShape. Returns the backend that ran.
   */
  batchNormalization(
    x: Float32Array, xShape: number[],
    mean: Float32Array, meanShape: number[],
    variance: Float32Array, varianceShape: number[],
    offset: Float32Array | null, offsetShape: number[],
    scale: Float32Array | null, scaleShape: number[],
    epsilon: number, out: Float32Array, outShape: number[], backend: BackendCode,
  ): BackendName;
  batchNormalizationAsync(
    x: Float32Array, xShape: number[],
    mean: Float32Array, meanShape: number[],
    variance: Float32Array, varianceShape: number[],
    offset: Float32Array | null, offsetShape: number[],
    scale: Float32Array | null, scaleShape: number[],
    epsilon: number, out: Float32Array, outShape: number[], backend: BackendCode,
  ): Promise<BackendName>;

  /**
   * Backward pass, reductions: per channel c of dy, x viewed as [A, C, B],
   * outSumDy[c] = Σ dy and outSumDyXmu[c] = Σ dy·(x − mean[c]), in float64.
   */
  channelGradSums(
    dy: Float32Array, x: Float32Array, A: number, C: number, B: number, mean: Float64Array,
    outSumDy: Float64Array, outSumDyXmu: Float64Array, backend: BackendCode,
  ): BackendName;
  channelGradSumsAsync(
    dy: Float32Array, x: Float32Array, A: number, C: number, B: number, mean: Float64Array,
    outSumDy: Float64Array, outSumDyXmu: Float64Array, backend: BackendCode,
  ): Promise<BackendName>;
  /** Backward pass, elementwise: dx = g[c]·(dy − a[c] − (x − mean[c])·b[c]) in float64. */
  channelGradApply(
    dy: Float32Array, x: Float32Array, A: number, C: number, B: number, mean: Float64Array,
    g: Float64Array, a: Float64Array, b: Float64Array, dx: Float32Array, backend: BackendCode,
  ): BackendName;
  channelGradApplyAsync(
    dy: Float32Array, x: Float32Array, A: number, C: number, B: number, mean: Float64Array,
    g: Float64Array, a: Float64Array, b: Float64Array, dx: Float32Array, backend: BackendCode,
  ): Promise<BackendName>;

  backends(): NativeBackendInfo[];
  /** Which backend a call of `op` would use and why; throws BackendError when the requested one is unavailable. */
  explain(op: 'moments' | 'batchNormalization', backend: BackendCode): { backend: BackendName; reason: string };
  setNumThreads(n: number): void;
  numThreads(): number;
  /** Instruction-set level the CPU kernels run with, e.g. "x86-64-v4 (AVX-512)". */
  cpuFeatures(): string;
  cudaInfo(): NativeCudaInfo;
  /** Benchmark helper: copy (read + write) and read bandwidth in GB/s over `bytes`. */
  memoryBandwidth(bytes: number, reps: number): { copy: number; read: number };
  /** Registers lib's BackendError class; native errors are constructed as new cls(message, code). */
  setBackendErrorClass(cls: new (message: string, code: string) => Error): void;
}
