// Synchronized batch normalization (PyTorch SyncBatchNorm semantics) on host tensors:
// each rank holds a shard of the batch, and the ops exchange only per-channel numbers.
//   forward:  gather (count, mean, M2) of every shard in float64, merge them in rank order
//             with Chan et al.'s update (exact, deterministic), normalize with the global
//             statistics, update the running statistics with the global unbiased variance;
//   backward: all-reduce Σdy and Σdy·(x − μ) per channel (and the count), then apply dx
//             locally. dscale/doffset stay the shard's own sums, as in PyTorch: summing
//             them over the ranks (what data-parallel training does with every parameter
//             gradient) gives the whole batch's.
// Shards may have different batch sizes, including 0. Every piece is an existing local
// primitive; only the exchange is new.
import { backendCode } from '../backend';
import { native } from '../binding';
import { DeviceTensor } from '../device';
import { BackendError, withCallerStack } from '../errors';
import { batchNormalizationAsync, planMoments, type Moments, type MomentsOptions } from '../ops';
import { AsyncOutput, fixedInput, product, type Tensor } from '../tensor';
import {
  batchNormalizationGradAsync, fusedBatchNormAsync, mergeMoments, planFused, planGrad,
  type BatchNormGradOptions, type BatchNormGrads, type FusedBatchNormOptions, type FusedBatchNormResult,
  type FusedPlan, type GradPlan, type SufficientStatistics,
} from '../training';
import { abortGroup, checkCommunicator, collective, type Communicator } from './communicator';


// ---- the bookkeeping of the whole batch's statistics ----------------------------------
// The local ops do this in the backend's native code; here the statistics come from the
// ranks' exchange, so the same float64 arithmetic and float32 roundings are applied to
// the merged values (the results equal the local op's when there is one rank).

interface Stats {
  mean: Float32Array;
  varBiased: Float32Array;
  varUnbiased: Float32Array;
}

/** Plans of synchronized calls hold host data only (rejectDevice ran first). */
function host(v: Float32Array | DeviceTensor | null): Float32Array | null {
  return v as Float32Array | null;
}

function statsFrom(mean64: Float64Array, m2: Float64Array, n: number): Stats {
  const bessel = Math.max(n - 1, 1);
  return {
    mean: Float32Array.from(mean64),
    varBiased: Float32Array.from(m2, (v) => v / n),
    varUnbiased: Float32Array.from(m2, (v) => v / bessel),
  };
}

function finishFused(p: FusedPlan, y: Tensor, s: Stats): FusedBatchNormResult {
  const C = p.view.C;
  const vec = (data: Float32Array): Tensor => ({ data, shape: [C] });
  const f = p.f;
  const runMean = host(p.runMean);
  const runVar = host(p.runVar);
  const runningMean = Float32Array.from(s.mean, (m, c) => (f === 1 ? m : (1 - f) * runMean![c] + f * m));
  const runningVariance = Float32Array.from(s.varUnbiased, (v, c) => (f === 1 ? v : (1 - f) * runVar![c] + f * v));
  return {
    y, batchMean: vec(s.mean), batchVariance: vec(s.varUnbiased), batchVarianceBiased: vec(s.varBiased),
    runningMean: vec(runningMean), runningVariance: vec(runningVariance),
    savedMean: vec(s.mean.slice()), savedInvStd: vec(Float32Array.from(s.varBiased, (v) => 1 / Math.sqrt(v + p.eps))),
  };
}

function paramTensor(p: FusedPlan, data: Float32Array | DeviceTensor | null): Tensor | null {
  return data ? { data: data as Float32Array, shape: p.view.paramShape } : null;
}

/** channelGradSums/Apply's leading arguments: dy, x as [A, C, B] and μ in float64. */
function channelArgs(p: GradPlan): [Float32Array, Float32Array, number, number, number, Float64Array] {
  return [fixedInput((p.dy as Tensor).data), fixedInput((p.x as Tensor).data), p.view.A, p.view.C, p.view.B,
    Float64Array.from(p.mean as Float32Array)];
}

/** Per-channel coefficients of dx = g·(dy − a − (x − μ)·b), and dscale/doffset. */
function gradCoefficients(p: GradPlan, s1: Float64Array, s2: Float64Array, N: number) {
  const C = p.view.C;
  const invStd = p.invStd as Float32Array;
  const scale = host(p.scale);
  const g = new Float64Array(C);
  const a = new Float64Array(C);
  const b = new Float64Array(C);
  const dscale = new Float32Array(C);
  const doffset = new Float32Array(C);
  for (let c = 0; c < C; c++) {
    const inv = invStd[c];
    g[c] = (scale ? scale[c] : 1) * inv;
    if (p.training && N > 0) {
      a[c] = s1[c] / N;
      b[c] = (inv * inv * s2[c]) / N;
    }
    dscale[c] = inv * s2[c]; // Σ dy·x̂
    doffset[c] = s1[c];
  }
  return { g, a, b, dscale, doffset };
}

/** Whether a public op's options ask for synchronization. */
export function wantsSync(options: unknown): boolean {
  return options !== null && typeof options === 'object' && (options as { sync?: unknown }).sync !== undefined;
}

/**
 * The synchronous ops cannot wait for other ranks: a communicator is a TypeError there,
 * and the group is aborted (when the communicator can be) so that no rank waits for this one.
 */
export function rejectSync(fn: string, options: unknown): void {
  if (wantsSync(options)) {
    const e = new TypeError(`${fn}: options.sync needs the Promise-returning variant (${fn}Async); collectives cannot run synchronously`);
    const sync = (options as { sync: unknown }).sync as Communicator;
    if (sync && typeof sync === 'object' && typeof sync.abort === 'function') abortGroup(sync, e);
    throw e;
  }
}

function splitSync<T extends object>(fn: string, options: unknown): { comm: Communicator; rest: T } {
  const { sync, ...rest } = options as { sync: unknown };
  return { comm: checkCommunicator(fn, 'options.sync', sync), rest: rest as T };
}

function rejectDevice(fn: string, ...tensors: unknown[]): void {
  if (tensors.some((t) => t instanceof DeviceTensor)) {
    throw new BackendError(`${fn}: options.sync takes host tensors; synchronized statistics of DeviceTensors need device ` +
      `collectives inside the device training ops, which they do not have: download() the shard first`, 'ERR_UNSUPPORTED');
  }
}

// The ranks hold shards of the batch, axis 0; it cannot be the channel axis.
function checkBatchAxis(fn: string, channelAxis: number): void {
  if (channelAxis === 0) {
    throw new RangeError(`${fn}: with options.sync the ranks hold shards of the batch (axis 0), which cannot be the channel axis`);
  }
}

/**
 * Runs `body` for one rank: any failure of this rank (bad arguments, a native error, a
 * collective that failed) aborts the group, so that no other rank waits for it, and is
 * rethrown with the caller's stack.
 */
async function asRank<R>(fn: string, comm: Communicator, site: Error, body: () => Promise<R>): Promise<R> {
  try {
    return await body();
  } catch (e) {
    abortGroup(comm, e instanceof Error ? new Error(`${fn} failed on rank ${comm.rank}: ${e.message}`) : e);
    throw withCallerStack(e, site);
  }
}

/**
 * The statistics of the whole batch: every rank's (count, mean, M2) gathered and merged in
 * rank order (Chan et al.), so every rank computes bit-identical values.
 */
export async function gatherStatistics(
  fn: string, comm: Communicator, count: number, mean: Float64Array, m2: Float64Array,
): Promise<SufficientStatistics> {
  const n = mean.length;
  const payload = new Float64Array(2 * n + 1);
  payload[0] = count;
  payload.set(mean, 1);
  payload.set(m2, 1 + n);
  const all = await collective(fn, comm, 'allGather', payload);
  const shard = (r: number): SufficientStatistics => {
    const o = r * (2 * n + 1);
    return { count: all[o], mean: all.subarray(o + 1, o + 1 + n), m2: all.subarray(o + 1 + n, o + 1 + 2 * n), shape: [n] };
  };
  let acc = shard(0);
  for (let r = 1; r < comm.size; r++) acc = mergeMoments(acc, shard(r));
  return acc;
}

/** momentsAsync with options.sync: the moments of the concatenation of every rank's x. */
export async function syncMoments(fn: string, x: unknown, axes: unknown, options: unknown): Promise<Moments> {
  const site = new Error();
  const { comm, rest } = splitSync<MomentsOptions>(fn, options);
  return asRank(fn, comm, site, async () => {
    rejectDevice(fn, x);
    const p = planMoments(fn, x, axes, rest);
    if (!p.axes.includes(0)) {
      throw new RangeError(`${fn}: with options.sync the ranks hold shards of the batch (axis 0), so axes must include 0, got [${p.axes.join(', ')}]`);
    }
    const k = p.n;
    const mean = new Float64Array(k);
    const m2 = new Float64Array(k);
    await native.momentsAsync(fixedInput(p.x), p.shape, p.axes, 0, new Float32Array(k), new Float32Array(k), p.backend, mean, m2);
    const red = new Set(p.axes);
    const s = await gatherStatistics(fn, comm, product(p.shape.filter((_, i) => red.has(i))), mean, m2);
    const d = s.count - p.correction;
    // The statistics are C values written here, on the JS thread: the caller's out is safe to use directly.
    const outMean = p.out?.mean ?? new Float32Array(k);
    const outVariance = p.out?.variance ?? new Float32Array(k);
    for (let i = 0; i < k; i++) {
      outMean[i] = s.count > 0 ? s.mean[i] : NaN;
      outVariance[i] = d > 0 ? s.m2[i] / d : NaN;
    }
    return { mean: { data: outMean, shape: p.outShape }, variance: { data: outVariance, shape: p.outShape.slice() } };
  });
}

/**
 * fusedBatchNormAsync with options.sync. Training: statistics of the whole batch; the
 * result is FusedBatchNormResult of the global statistics, `count` the whole batch's
 * per-channel count. Inference: the running statistics, no exchange.
 */
export async function syncFusedBatchNorm(
  fn: string, x: unknown, scale: unknown, offset: unknown, options: unknown,
): Promise<{ result: FusedBatchNormResult; count: number }> {
  const site = new Error();
  const { comm, rest } = splitSync<FusedBatchNormOptions>(fn, options);
  return asRank(fn, comm, site, async () => {
    rejectDevice(fn, x, scale, offset, rest.mean, rest.variance);
    const p = planFused(fn, x, scale, offset, rest);
    checkBatchAxis(fn, p.view.axis);
    if (!p.training) {
      const result = await fusedBatchNormAsync(x as Tensor, scale as Float32Array | null, offset as Float32Array | null, rest);
      return { result, count: p.view.n };
    }
    const C = p.view.C;
    const mean = new Float64Array(C);
    const m2 = new Float64Array(C);
    const xt = { data: (p.x as Tensor).data, shape: p.x.shape.slice() };
    await native.momentsAsync(fixedInput(xt.data), xt.shape, p.view.reduceAxes, 0, new Float32Array(C), new Float32Array(C),
      p.code, mean, m2);
    const g = await gatherStatistics(fn, comm, p.view.n, mean, m2);
    const s = statsFrom(g.mean, g.m2, g.count);
    const ps = p.view.paramShape;
    const y = await batchNormalizationAsync(xt, { data: s.mean, shape: ps }, { data: s.varBiased, shape: ps },
      paramTensor(p, p.offset), paramTensor(p, p.scale), p.eps, { backend: p.backend, out: p.out });
    return { result: finishFused(p, y, s), count: g.count };
  });
}

/**
 * batchNormalizationGradAsync with options.sync. Training: dx of the whole batch's
 * statistics (Σdy and Σdy·(x − μ) all-reduced); dscale/doffset are this shard's sums.
 * Frozen statistics (isTraining false): no exchange.
 */
export async function syncBatchNormGrad(
  fn: string, dy: unknown, x: unknown, scale: unknown, saved: unknown, options: unknown,
): Promise<BatchNormGrads> {
  const site = new Error();
  const { comm, rest } = splitSync<BatchNormGradOptions>(fn, options);
  return asRank(fn, comm, site, async () => {
    const sv = saved && typeof saved === 'object' ? saved as { mean?: unknown; invStd?: unknown } : {};
    rejectDevice(fn, dy, x, scale, sv.mean, sv.invStd);
    const p = planGrad(fn, dy, x, scale, saved, rest);
    checkBatchAxis(fn, p.view.axis);
    if (!p.training) {
      return batchNormalizationGradAsync(dy as Tensor, x as Tensor, scale as Float32Array | null,
        saved as { mean: Float32Array; invStd: Float32Array }, rest);
    }
    const C = p.view.C;
    const s1 = new Float64Array(C);
    const s2 = new Float64Array(C);
    const args = channelArgs(p);
    await native.channelGradSumsAsync(...args, s1, s2, p.code);
    const payload = new Float64Array(2 * C + 1);
    payload.set(s1, 0);
    payload.set(s2, C);
    payload[2 * C] = p.view.n;
    const sum = await collective(fn, comm, 'allReduce', payload);
    const global = gradCoefficients(p, sum.subarray(0, C), sum.subarray(C, 2 * C), sum[2 * C]);
    const local = gradCoefficients(p, s1, s2, p.view.n);
    const dx = p.out ? AsyncOutput.into(fn, 'options.out', p.out) : AsyncOutput.fresh(fn, 'dx', p.view.A * C * p.view.B);
    await native.channelGradApplyAsync(...args, global.g, global.a, global.b, dx.target, p.code);
    return { dx: { data: await dx.deliver(), shape: p.view.shape }, dscale: { data: local.dscale, shape: [C] }, doffset: { data: local.doffset, shape: [C] } };
  });
}
