// What `batchnorm bench` times and how. Every op is memory-bound, so each result is put
// against a floor: the bytes the op must move over the bandwidth measured in the same run
// on buffers of the same size (CPU: the addon's copy/read loops on the kernels' thread
// pool; GPU: a device-to-device cudaMemcpy and a read-only kernel, timed with CUDA events).
import * as os from 'node:os';
import { native } from '../binding';
import { explain, getNumThreads } from '../backend';
import { DeviceTensor, deviceTimeOp } from '../device';
import { moments, batchNormalization } from '../ops';
import { fusedBatchNorm, batchNormalizationGrad } from '../training';
import type { BenchBackend, BenchOp, Layout, Workload } from './options';

export interface Timing {
  /** Median, fastest and slowest of the timed repetitions, in milliseconds. */
  ms: number;
  minMs: number;
  maxMs: number;
  reps: number;
}

export interface Result extends Timing {
  op: BenchOp;
  workload: string;
  shape: number[];
  axes: number[];
  layout: Layout;
  backend: BenchBackend;
  /** CPU model or GPU name. */
  device: string;
  /** CPU threads; null on a GPU backend. */
  threads: number | null;
  /** Bytes of x. */
  bytes: number;
  /** Bytes the op must move at least (reads + writes), the numerator of gbs. */
  movedBytes: number;
  gbs: number;
  floorMs: number;
  /** ms / floorMs: 1 = at the floor, 2 = twice the floor's time. */
  floorRatio: number;
  /** How the floor is composed from the measured bandwidths. */
  floor: string;
  /** How ms was obtained. */
  method: string;
  outputs: 'reused' | 'fresh' | 'new DeviceTensors';
  /** Part of a --sweep (x scaled to bytes). */
  sweep: boolean;
}

export interface Skip { op: BenchOp | 'all'; workload: string; backend: BenchBackend; reason: string; failed: boolean }

export interface CpuFloor { bytes: number; measuredBytes: number; copyGbs: number; readGbs: number; threads: number }
export interface GpuFloor { bytes: number; copyMs: number; readMs: number; copyGbs: number; readGbs: number }
export interface PageFault { bytes: number; freshMs: number; touchedMs: number; msPerGiB: number }
export interface Staging { workload: string; bytes: number; uploadMs: number; downloadMs: number; uploadGbs: number; downloadGbs: number; method: string }

export const median = (a: number[]): number => {
  const s = a.slice().sort((p, q) => p - q);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

export function summarize(times: number[]): Timing {
  return { ms: median(times), minMs: Math.min(...times), maxMs: Math.max(...times), reps: times.length };
}

const numel = (shape: number[]): number => shape.reduce((a, b) => a * b, 1);
const nowMs = (): number => Number(process.hrtime.bigint()) / 1e6;

/** Deterministic data in [-0.5, 0.5): the kernels' speed does not depend on the values. */
export function fillData(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    a[i] = (s >>> 8) / 16777216 - 0.5;
  }
  return a;
}

/** Bytes moved and the floor of each op, from the read and copy times over x's bytes. */
export function opCost(op: BenchOp, bytes: number): { moved: number; floor: string; floorMs: (readMs: number, copyMs: number) => number } {
  switch (op) {
    case 'moments':
      return { moved: bytes, floor: 'read x', floorMs: (r) => r };
    case 'batchNormalization':
      return { moved: 2 * bytes, floor: 'copy x to y (read x + write y)', floorMs: (_r, c) => c };
    case 'fusedBatchNorm':
      return { moved: 3 * bytes, floor: 'read x, then copy x to y (statistics pass + normalize pass)', floorMs: (r, c) => r + c };
    case 'fusedBatchNormGrad':
      return { moved: 3 * bytes, floor: 'read x and dy, write dx: read + copy of x\'s bytes', floorMs: (r, c) => r + c };
  }
}

/** Runs fn `warmup` times untimed, then up to `reps` timed runs (fewer when one run is long). */
export function timeSync(fn: () => void, warmup: number, reps: number, budgetMs: number): Timing {
  let first = 0;
  for (let i = 0; i < Math.max(1, warmup); i++) {
    const t0 = nowMs();
    fn();
    first = nowMs() - t0;
  }
  // Long cases keep at least 5 repetitions but stop near the time budget.
  const n = Math.max(Math.min(5, reps), Math.min(reps, Math.floor(budgetMs / Math.max(first, 1e-3))));
  const t: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = nowMs();
    fn();
    t.push(nowMs() - t0);
  }
  return summarize(t);
}

// ---- CPU -----------------------------------------------------------------------------

const cpuFloorCache = new Map<number, CpuFloor>();

/** Copy and read bandwidth over the op's bytes with the kernels' thread pool (best of reps). */
export function cpuFloor(bytes: number, reps: number): CpuFloor {
  // The native helper measures at least 1 MiB: smaller inputs get the 1 MiB floor.
  const measuredBytes = Math.min(16 * 2 ** 30, Math.max(2 ** 20, Math.round(bytes / 4) * 4));
  const hit = cpuFloorCache.get(measuredBytes);
  if (hit && hit.threads === getNumThreads()) return hit;
  const bw = native.memoryBandwidth(measuredBytes, reps);
  const f = { bytes, measuredBytes, copyGbs: bw.copy, readGbs: bw.read, threads: getNumThreads() };
  cpuFloorCache.set(measuredBytes, f);
  return f;
}

/**
 * Cost of fresh memory: a new Float32Array filled once (page faults + writes) against the
 * same fill of an array whose pages are already mapped, medians of reps.
 */
export function pageFaultCost(bytes: number, reps: number): PageFault {
  const n = Math.max(1, Math.floor(bytes / 4));
  const fresh: number[] = [];
  const touched: number[] = [];
  for (let r = 0; r < reps; r++) {
    let t0 = nowMs();
    const a = new Float32Array(n);
    a.fill(1);
    fresh.push(nowMs() - t0);
    t0 = nowMs();
    a.fill(2);
    touched.push(nowMs() - t0);
  }
  const freshMs = median(fresh);
  const touchedMs = median(touched);
  return { bytes: n * 4, freshMs, touchedMs, msPerGiB: Math.max(0, freshMs - touchedMs) / ((n * 4) / 2 ** 30) };
}

export interface CaseOptions { warmup: number; reps: number; budgetMs: number; fresh: boolean; sweep: boolean }

function channelVecs(w: Workload): { C: number; ones: Float32Array; zeros: Float32Array } {
  const C = w.channelAxis === null ? 0 : w.shape[w.channelAxis];
  return { C, ones: new Float32Array(C).fill(1), zeros: new Float32Array(C) };
}

/** Times each op of `ops` on the CPU backend for workload w; returns results and skips. */
export function runCpu(
  w: Workload, ops: BenchOp[], o: CaseOptions, floorReps: number, cpuName: string, tick: (label: string) => void,
): { results: Result[]; skips: Skip[]; floor: CpuFloor } {
  const n = numel(w.shape);
  const bytes = 4 * n;
  const floor = cpuFloor(bytes, floorReps);
  const readMs = bytes / (floor.readGbs * 1e6);
  const copyMs = (2 * bytes) / (floor.copyGbs * 1e6);
  const results: Result[] = [];
  const skips: Skip[] = [];
  const x = { data: fillData(n, 7), shape: w.shape };
  const threads = getNumThreads();
  const stats = moments(x, w.axes, { keepDims: true, backend: 'cpu' });
  const { ones, zeros } = channelVecs(w);
  let y: Float32Array | null = null;
  let dy: { data: Float32Array; shape: number[] } | null = null;
  let saved: { mean: Float32Array; invStd: Float32Array } | null = null;
  for (const op of ops) {
    tick(`${w.id} ${op} cpu`);
    if ((op === 'fusedBatchNorm' || op === 'fusedBatchNormGrad') && w.channelAxis === null) {
      skips.push({ op, workload: w.id, backend: 'cpu', reason: `axes [${w.axes.join(',')}] keep more than one axis; ${op} needs one channel axis`, failed: false });
      continue;
    }
    const axis = w.channelAxis ?? 0;
    if (!o.fresh && op !== 'moments') y ??= new Float32Array(n);
    let fn: () => void;
    switch (op) {
      case 'moments': {
        const out = o.fresh ? undefined : { mean: new Float32Array(stats.mean.data.length), variance: new Float32Array(stats.mean.data.length) };
        fn = () => { moments(x, w.axes, { keepDims: true, backend: 'cpu', out }); };
        break;
      }
      case 'batchNormalization':
        fn = () => { batchNormalization(x, stats.mean, stats.variance, 0, 1, 1e-3, { backend: 'cpu', out: y ?? undefined }); };
        break;
      case 'fusedBatchNorm':
        fn = () => { fusedBatchNorm(x, ones, zeros, { axis, epsilon: 1e-3, backend: 'cpu', out: y ?? undefined }); };
        break;
      case 'fusedBatchNormGrad': {
        dy ??= { data: fillData(n, 11), shape: w.shape };
        if (!saved) {
          const f = fusedBatchNorm(x, ones, zeros, { axis, epsilon: 1e-3, backend: 'cpu', out: y ?? undefined });
          saved = { mean: f.savedMean.data, invStd: f.savedInvStd.data };
        }
        const d = dy;
        const s = saved;
        fn = () => { batchNormalizationGrad(d, x, ones, s, { axis, backend: 'cpu', out: y ?? undefined }); };
        break;
      }
    }
    try {
      const t = timeSync(fn, o.warmup, o.reps, o.budgetMs);
      const cost = opCost(op, bytes);
      const floorMs = cost.floorMs(readMs, copyMs);
      results.push({
        op, workload: w.id, shape: w.shape.slice(), axes: w.axes.slice(), layout: w.layout, backend: 'cpu',
        device: cpuName, threads, bytes, movedBytes: cost.moved, ...t, gbs: cost.moved / (t.ms * 1e6),
        floorMs, floorRatio: t.ms / floorMs, floor: cost.floor,
        method: `wall clock (process.hrtime) around each synchronous call, ${o.warmup} warm-up calls, median of ${t.reps}`,
        outputs: o.fresh ? 'fresh' : 'reused', sweep: o.sweep,
      });
    } catch (e) {
      skips.push({ op, workload: w.id, backend: 'cpu', reason: errorText(e), failed: true });
    }
  }
  return { results, skips, floor };
}

export function errorText(e: unknown): string {
  return e instanceof Error ? `${e.name}: ${e.message.split('\n')[0]}` : String(e);
}

// ---- GPU -----------------------------------------------------------------------------

/**
 * Wall-clock time per call for GPU ops that deviceTimeOp does not cover (cuDNN, the
 * training ops): batches of k back-to-back calls between two synchronizations, k chosen
 * so a batch lasts about a millisecond; one sample per batch.
 */
function timeGpuBatched(fn: () => void, warmup: number, reps: number, budgetMs: number): Timing & { k: number } {
  for (let i = 0; i < Math.max(1, warmup); i++) fn();
  native.deviceSynchronize();
  let t0 = nowMs();
  fn();
  native.deviceSynchronize();
  const one = Math.max(nowMs() - t0, 1e-3);
  const k = Math.max(1, Math.min(100, Math.ceil(1 / one)));
  const n = Math.max(Math.min(5, reps), Math.min(reps, Math.floor(budgetMs / (one * k))));
  const t: number[] = [];
  for (let r = 0; r < n; r++) {
    t0 = nowMs();
    for (let i = 0; i < k; i++) fn();
    native.deviceSynchronize();
    t.push((nowMs() - t0) / k);
  }
  return { ...summarize(t), k };
}

const gpuFloorCache = new Map<number, GpuFloor>();

/** D2D copy and read-only kernel over `bytes`, CUDA events, medians. */
export function gpuFloor(bytes: number, warmup: number, reps: number): GpuFloor {
  const b = Math.max(16, Math.floor(bytes / 16) * 16);
  const hit = gpuFloorCache.get(b);
  if (hit) return hit;
  const copyMs = median(deviceTimeOp('copy', { bytes: b }, warmup, reps));
  const readMs = median(deviceTimeOp('read', { bytes: b }, warmup, reps));
  const f = { bytes: b, copyMs, readMs, copyGbs: (2 * b) / (copyMs * 1e6), readGbs: b / (readMs * 1e6) };
  gpuFloorCache.set(b, f);
  return f;
}

function disposeAll(r: object): void {
  for (const v of Object.values(r)) if (v instanceof DeviceTensor) v.dispose();
}

/** Times each op on a GPU backend ('cuda': our kernels; 'cudnn': cuDNN) with DeviceTensors. */
export function runGpu(
  w: Workload, backend: 'cuda' | 'cudnn', ops: BenchOp[], o: CaseOptions, gpuName: string, tick: (label: string) => void,
): { results: Result[]; skips: Skip[]; floor: GpuFloor | null; staging: Staging | null } {
  const n = numel(w.shape);
  const bytes = 4 * n;
  let floor: GpuFloor | null = null;
  const results: Result[] = [];
  const skips: Skip[] = [];
  const host = fillData(n, 7);
  const owned: DeviceTensor[] = [];
  const keep = <T extends DeviceTensor>(t: T): T => { owned.push(t); return t; };
  let staging: Staging | null = null;
  try {
    floor = gpuFloor(bytes, o.warmup, Math.max(o.reps, 10));
    // Host -> device staging, timed apart from the ops (what a Float32Array call would add).
    const up: number[] = [];
    const down: number[] = [];
    const back = new Float32Array(n);
    let x: DeviceTensor | null = null;
    for (let r = 0; r < Math.max(3, Math.min(o.reps, 10)); r++) {
      x?.dispose();
      native.deviceSynchronize();
      let t0 = nowMs();
      x = DeviceTensor.upload({ data: host, shape: w.shape });
      native.deviceSynchronize();
      up.push(nowMs() - t0);
      t0 = nowMs();
      x.download(back);
      down.push(nowMs() - t0);
    }
    const xt = keep(x!);
    staging = {
      workload: w.id, bytes, uploadMs: median(up), downloadMs: median(down),
      uploadGbs: bytes / (median(up) * 1e6), downloadGbs: bytes / (median(down) * 1e6),
      method: 'wall clock: DeviceTensor.upload + synchronize, and download (pageable host memory), medians',
    };
    const kept = w.shape.map((d, i) => (w.axes.includes(i) ? 1 : d));
    const st = moments(xt, w.axes, { keepDims: true, backend: 'cuda' });
    keep(st.mean);
    keep(st.variance);
    const C = w.channelAxis === null ? 0 : w.shape[w.channelAxis];
    const paramShape = w.channelAxis === null ? [] : w.shape.map((d, i) => (i === w.channelAxis ? d : 1));
    const vec = (v: number) => keep(DeviceTensor.upload({ data: new Float32Array(C).fill(v), shape: paramShape }));
    const readMs = floor.readMs;
    const copyMs = floor.copyMs;
    for (const op of ops) {
      tick(`${w.id} ${op} ${backend}`);
      const skip = (reason: string, failed = false) => skips.push({ op, workload: w.id, backend, reason, failed });
      if ((op !== 'moments' && op !== 'batchNormalization') && w.channelAxis === null) {
        skip(`axes [${w.axes.join(',')}] keep more than one axis; ${op} needs one channel axis`);
        continue;
      }
      if (backend === 'cudnn' && op === 'moments') { skip('cuDNN has no moments; the cuda backend computes them'); continue; }
      if (backend === 'cudnn' && w.channelAxis === null) { skip('cuDNN normalizes per channel; these axes keep more than one axis'); continue; }
      const axis = w.channelAxis ?? 0;
      if (backend === 'cudnn') {
        // Asked first, so a call cuDNN does not cover is a skip with its reason, not a failure.
        try {
          explain(op === 'fusedBatchNormGrad' ? 'batchNormalizationGrad' : op, { backend: 'cudnn', onDevice: true, shape: w.shape, axis, epsilon: 1e-3 });
        } catch (e) {
          skip(`cuDNN does not run this call: ${errorText(e)}`);
          continue;
        }
      }
      try {
        let t: Timing;
        let method: string;
        if (backend === 'cuda' && (op === 'moments' || op === 'batchNormalization')) {
          let ms: number[];
          if (op === 'moments') {
            const m = keep(DeviceTensor.empty(kept));
            const v = keep(DeviceTensor.empty(kept));
            ms = deviceTimeOp('moments', { x: xt, shape: w.shape, axes: w.axes, mean: m, variance: v }, o.warmup, o.reps);
          } else {
            const yb = keep(DeviceTensor.empty(w.shape));
            ms = deviceTimeOp('batchNormalization', {
              x: xt, xShape: w.shape, mean: st.mean, meanShape: kept, variance: st.variance, varianceShape: kept,
              offset: null, offsetShape: [], scale: null, scaleShape: [], epsilon: 1e-3, out: yb, outShape: w.shape,
            }, o.warmup, o.reps);
          }
          t = summarize(ms);
          method = `CUDA events around each run on the stream (deviceTimeOp), ${o.warmup} warm-up runs, median of ${t.reps}`;
        } else {
          const scale = vec(1);
          const offset = vec(0);
          let fn: () => void;
          if (op === 'batchNormalization') {
            const mean = vec(0);
            const variance = vec(1);
            fn = () => batchNormalization(xt, mean, variance, offset, scale, 1e-3, { backend }).dispose();
          } else if (op === 'fusedBatchNorm') {
            fn = () => disposeAll(fusedBatchNorm(xt, scale, offset, { axis, epsilon: 1e-3, backend }));
          } else {
            const dyt = keep(DeviceTensor.upload({ data: fillData(n, 11), shape: w.shape }));
            const f = fusedBatchNorm(xt, scale, offset, { axis, epsilon: 1e-3, backend });
            const sm = keep(f.savedMean);
            const si = keep(f.savedInvStd);
            for (const [k, v] of Object.entries(f)) if (k !== 'savedMean' && k !== 'savedInvStd' && v instanceof DeviceTensor) v.dispose();
            fn = () => disposeAll(batchNormalizationGrad(dyt, xt, scale, { mean: sm, invStd: si }, { axis, epsilon: 1e-3, backend }));
          }
          const b = timeGpuBatched(fn, o.warmup, o.reps, o.budgetMs);
          t = b;
          method = `wall clock over batches of ${b.k} back-to-back calls + deviceSynchronize (launch overhead and cached allocations included), ${o.warmup} warm-up calls, median of ${b.reps} batches`;
        }
        const cost = opCost(op, bytes);
        const floorMs = cost.floorMs(readMs, copyMs);
        results.push({
          op, workload: w.id, shape: w.shape.slice(), axes: w.axes.slice(), layout: w.layout, backend, device: gpuName,
          threads: null, bytes, movedBytes: cost.moved, ...t, gbs: cost.moved / (t.ms * 1e6), floorMs,
          floorRatio: t.ms / floorMs, floor: cost.floor, method, outputs: 'new DeviceTensors', sweep: o.sweep,
        });
      } catch (e) {
        skip(errorText(e), true);
      }
    }
  } catch (e) {
    skips.push({ op: 'all', workload: w.id, backend, reason: errorText(e), failed: true });
  } finally {
    for (const t of owned) t.dispose();
  }
  return { results, skips, floor, staging };
}

export function cpuModel(): string {
  return os.cpus()[0]?.model?.trim() || 'unknown CPU';
}
