// Synchronized batch normalization (PyTorch SyncBatchNorm semantics): each rank holds a
// shard of the batch, and the ops exchange only per-channel numbers. The native training
// ops do the work and the bookkeeping; this file is the exchange.
//   forward:  each shard's (count, mean, M2) in float64 (native moments), gathered and
//             merged in rank order with Chan et al.'s update (exact, deterministic), then
//             one native fusedBatchNorm with those whole-batch statistics (wholeBatch);
//   backward: each shard's Σdy and Σdy·(x − μ) per channel (native channelGradSums),
//             all-reduced with the count, then one native batchNormalizationGrad with the
//             whole batch's sums for dx and the shard's own for dscale/doffset, as in
//             PyTorch: summing those over the ranks (what data-parallel training does with
//             every parameter gradient) gives the whole batch's.
// DeviceTensors with an NcclCommunicator: one native call that exchanges on the device
// (nccl); no numbers pass through JavaScript.
// Shards may have different batch sizes, including 0.
import type { NcclCommHandle } from '../../binding';
import { native } from '../binding';
import { DeviceTensor } from '../device';
import { BackendError, withCallerStack } from '../errors';
import { planMoments, type Moments, type MomentsOptions } from '../ops';
import { fixedInput, product, type Tensor } from '../tensor';
import {
  fixFusedInputs, fixGradInputs, mergeMoments, planFused, planGrad,
  runFusedAsync, runGradAsync, type BatchNormGradOptions, type BatchNormGrads, type DeviceBatchNormGrads,
  type DeviceFusedBatchNormResult, type FusedBatchNormOptions, type FusedBatchNormResult, type SufficientStatistics,
} from '../training';
import { abortGroup, checkCommunicator, collective, type Communicator } from './communicator';
import { NcclCommunicator } from './nccl';

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
    throw new BackendError(`${fn}: options.sync takes host tensors here: moments has no device communicator path; ` +
      'download() the shard first', 'ERR_UNSUPPORTED');
  }
}

/**
 * The fused ops' device path: DeviceTensor inputs synchronize inside the native op, over
 * an NcclCommunicator's device communicator. Any other communicator exchanges host
 * arrays, which device data would have to cross PCIe for: ERR_UNSUPPORTED.
 */
function deviceCommunicator(fn: string, comm: Communicator, device: boolean): NcclCommunicator | null {
  if (!device) return null;
  if (comm instanceof NcclCommunicator) return comm;
  throw new BackendError(`${fn}: DeviceTensor inputs with options.sync need a device communicator (NcclCommunicator): ` +
    'the statistics are exchanged on the GPU inside the op; this communicator exchanges host Float64Arrays', 'ERR_UNSUPPORTED');
}

/**
 * cuDNN's training routines compute the shard's own statistics and sums, so a synchronized
 * training call cannot run there: refused before any exchange (the native dispatch refuses
 * it too, but the shard's statistics would fail first, with moments' message).
 */
function rejectCudnn(fn: string, code: number): void {
  if (code === 2) {
    throw new BackendError(`${fn}: backend 'cudnn' cannot run this call: cuDNN computes the shard's own statistics; ` +
      "synchronized batch norm runs on 'cpu' (host data) or 'cuda'", 'ERR_UNSUPPORTED');
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
    await native.momentsAsync({
      x: fixedInput(p.x), shape: p.shape, axes: p.axes, correction: 0, backend: p.backend,
      mean: new Float32Array(k), variance: new Float32Array(k), mean64: mean, m2,
    });
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
 * per-channel count (host data; for DeviceTensors the op keeps it on the device: null).
 * Inference: the running statistics, no exchange (any communicator, any data).
 */
export async function syncFusedBatchNorm(
  fn: string, x: Tensor, scale: unknown, offset: unknown, options: unknown,
): Promise<{ result: FusedBatchNormResult; count: number }>;
export async function syncFusedBatchNorm(
  fn: string, x: unknown, scale: unknown, offset: unknown, options: unknown,
): Promise<{ result: FusedBatchNormResult | DeviceFusedBatchNormResult; count: number | null }>;
export async function syncFusedBatchNorm(
  fn: string, x: unknown, scale: unknown, offset: unknown, options: unknown,
): Promise<{ result: FusedBatchNormResult | DeviceFusedBatchNormResult; count: number | null }> {
  const site = new Error();
  const { comm, rest } = splitSync<FusedBatchNormOptions>(fn, options);
  return asRank(fn, comm, site, async () => {
    const p = planFused(fn, x, scale, offset, rest);
    let started = false;
    try {
      checkBatchAxis(fn, p.view.axis);
      if (!p.training) {
        started = true;
        return { result: await runFusedAsync(fn, p), count: p.view.n };
      }
      rejectCudnn(fn, p.code);
      const nccl = deviceCommunicator(fn, comm, p.ops.device);
      if (nccl) {
        started = true;
        const result = await runFusedAsync(fn, p, (o) => nccl.withHandle(fn, (h: NcclCommHandle) => native.fusedBatchNormAsync({ ...o, nccl: h })));
        return { result, count: null };
      }
      const C = p.view.C;
      fixFusedInputs(p);
      const mean = new Float64Array(C);
      const m2 = new Float64Array(C);
      const xt = p.x as Tensor;
      await native.momentsAsync({
        x: xt.data, shape: xt.shape.slice(), axes: p.view.reduceAxes, correction: 0, backend: p.code,
        mean: new Float32Array(C), variance: new Float32Array(C), mean64: mean, m2,
      });
      const g = await gatherStatistics(fn, comm, p.view.n, mean, m2);
      started = true;
      const wholeBatch = { count: g.count, mean: g.mean, m2: g.m2 };
      const result = await runFusedAsync(fn, p, (o) => native.fusedBatchNormAsync({ ...o, wholeBatch }));
      return { result, count: g.count };
    } finally {
      // The plan's device temporaries, when no call took them over.
      if (!started) p.ops.done(true);
    }
  });
}

/**
 * batchNormalizationGradAsync with options.sync. Training: dx of the whole batch's
 * statistics (Σdy and Σdy·(x − μ) all-reduced); dscale/doffset are this shard's sums.
 * Frozen statistics (isTraining false): no exchange.
 */
export async function syncBatchNormGrad(
  fn: string, dy: unknown, x: unknown, scale: unknown, saved: unknown, options: unknown,
): Promise<BatchNormGrads | DeviceBatchNormGrads> {
  const site = new Error();
  const { comm, rest } = splitSync<BatchNormGradOptions>(fn, options);
  return asRank(fn, comm, site, async () => {
    const p = planGrad(fn, dy, x, scale, saved, rest);
    let started = false;
    try {
      checkBatchAxis(fn, p.view.axis);
      if (!p.training) {
        started = true;
        return await runGradAsync(fn, p);
      }
      rejectCudnn(fn, p.code);
      const nccl = deviceCommunicator(fn, comm, p.ops.device);
      if (nccl) {
        started = true;
        return await runGradAsync(fn, p, (o) => nccl.withHandle(fn, (h: NcclCommHandle) => native.batchNormalizationGradAsync({ ...o, nccl: h })));
      }
      const C = p.view.C;
      fixGradInputs(p);
      const shardSumDy = new Float64Array(C);
      const shardSumDyXmu = new Float64Array(C);
      await native.channelGradSumsAsync({
        dy: (p.dy as Tensor).data, x: (p.x as Tensor).data, shape: p.view.shape, axis: p.view.axis,
        // The shard's sums of host data are reduced on the CPU whatever the backend (the
        // channel sums have no staged GPU variant); dx then runs on the backend asked for.
        savedMean: p.mean as Float32Array, backend: 0, sumDy: shardSumDy, sumDyXmu: shardSumDyXmu,
      });
      const payload = new Float64Array(2 * C + 1);
      payload.set(shardSumDy, 0);
      payload.set(shardSumDyXmu, C);
      payload[2 * C] = p.view.n;
      const sum = await collective(fn, comm, 'allReduce', payload);
      const wholeBatch = {
        count: sum[2 * C], sumDy: sum.slice(0, C), sumDyXmu: sum.slice(C, 2 * C), shardSumDy, shardSumDyXmu,
      };
      started = true;
      return await runGradAsync(fn, p, (o) => native.batchNormalizationGradAsync({ ...o, wholeBatch }));
    } finally {
      if (!started) p.ops.done(true);
    }
  });
}
