// Peers for `batchnorm bench --compare`: other implementations of the same ops on the same
// shapes and layouts, run only when present on this machine and reported as skipped (with
// the reason) when not. PyTorch runs in a Python script shipped with the package;
// onnxruntime-node runs in this process.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import type { BenchOp, Workload } from './options';
import { errorText, fillData, summarize, type Timing } from './measure';
import { batchNormModel, momentsModel, trainingForwardModel } from './onnx';

export interface PeerTiming extends Timing {
  op: BenchOp;
  workload: string;
  /** 'cpu' or 'cuda'. */
  device: 'cpu' | 'cuda';
  /** The peer's call that was timed. */
  what: string;
  method: string;
}

export interface PeerRun {
  peer: 'torch' | 'onnxruntime';
  status: 'ok' | 'skipped' | 'failed';
  reason: string | null;
  version: string | null;
  deviceName: string | null;
  timings: PeerTiming[];
  skipped: { op: BenchOp; workload: string; reason: string }[];
}

export const TORCH_SCRIPT = path.join(__dirname, '..', '..', '..', 'scripts', 'bench_torch.py');

export interface PeerRequest {
  device: 'cpu' | 'cuda';
  threads: number;
  warmup: number;
  reps: number;
  ops: BenchOp[];
  workloads: Workload[];
}

/** PyTorch through scripts/bench_torch.py: JSON request on stdin, JSON report on stdout. */
export function runTorch(req: PeerRequest, timeoutMs: number): PeerRun {
  const run: PeerRun = { peer: 'torch', status: 'skipped', reason: null, version: null, deviceName: null, timings: [], skipped: [] };
  const py = process.env.PYTHON || 'python3';
  const probe = spawnSync(py, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8', timeout: 120e3 });
  if (probe.error || probe.status !== 0) {
    const why = probe.error ? probe.error.message : (probe.stderr || '').trim().split('\n').pop();
    run.reason = `${py} -c 'import torch' failed: ${why}`;
    return run;
  }
  const r = spawnSync(py, [TORCH_SCRIPT], {
    input: JSON.stringify({ ...req, workloads: req.workloads.map((w) => ({ id: w.id, shape: w.shape, axes: w.axes, channelAxis: w.channelAxis })) }),
    encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20,
  });
  if (r.error || r.status !== 0) {
    run.status = 'failed';
    run.reason = `${path.basename(TORCH_SCRIPT)} failed: ${r.error ? r.error.message : (r.stderr || '').trim().split('\n').slice(-3).join(' / ')}`;
    return run;
  }
  try {
    const out = JSON.parse(r.stdout) as { torch: string; device: string; results: PeerTiming[]; skipped: PeerRun['skipped'] };
    run.status = 'ok';
    run.version = out.torch;
    run.deviceName = out.device;
    run.timings = out.results;
    run.skipped = out.skipped;
  } catch (e) {
    run.status = 'failed';
    run.reason = `could not read the script's output: ${errorText(e)}`;
  }
  return run;
}

interface Ort {
  InferenceSession: { create(model: Uint8Array, opts: object): Promise<OrtSession> };
  Tensor: new (type: string, data: Float32Array, dims: number[]) => unknown;
  env?: { versions?: { common?: string } };
}
interface OrtSession { run(feeds: Record<string, unknown>): Promise<Record<string, { data: Float32Array }>>; release(): Promise<void> }

/** onnxruntime-node from this package's node_modules or the current project's. */
function loadOrt(): Ort | string {
  const attempts: string[] = [];
  for (const from of [__filename, path.join(process.cwd(), 'package.json')]) {
    try {
      return createRequire(from)('onnxruntime-node') as Ort;
    } catch (e) {
      attempts.push(errorText(e));
    }
  }
  return `onnxruntime-node does not resolve (${attempts[attempts.length - 1]}); npm install onnxruntime-node to compare`;
}

const nowMs = (): number => Number(process.hrtime.bigint()) / 1e6;

async function timeAsync(fn: () => Promise<unknown>, warmup: number, reps: number, budgetMs: number): Promise<Timing> {
  let first = 0;
  for (let i = 0; i < Math.max(1, warmup); i++) {
    const t0 = nowMs();
    await fn();
    first = nowMs() - t0;
  }
  const n = Math.max(Math.min(5, reps), Math.min(reps, Math.floor(budgetMs / Math.max(first, 1e-3))));
  const t: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = nowMs();
    await fn();
    t.push(nowMs() - t0);
  }
  return summarize(t);
}

/** onnxruntime-node, CPU execution provider, graphs of ReduceMean/Sub/Mul/Add/Sqrt/Div. */
export async function runOnnxruntime(req: PeerRequest, budgetMs: number): Promise<PeerRun> {
  const run: PeerRun = { peer: 'onnxruntime', status: 'skipped', reason: null, version: null, deviceName: 'cpu', timings: [], skipped: [] };
  const ort = loadOrt();
  if (typeof ort === 'string') {
    run.reason = ort;
    return run;
  }
  run.status = 'ok';
  run.version = ort.env?.versions?.common ?? null;
  const opts = { graphOptimizationLevel: 'all', intraOpNumThreads: req.threads, executionProviders: ['cpu'] };
  for (const w of req.workloads) {
    const n = w.shape.reduce((a, b) => a * b, 1);
    const ps = w.shape.map((d, i) => (w.axes.includes(i) ? 1 : d));
    const C = ps.reduce((a, b) => a * b, 1);
    const tx = new ort.Tensor('float32', fillData(n, 7), w.shape);
    const teps = new ort.Tensor('float32', Float32Array.of(1e-3), [1]);
    const tm = new ort.Tensor('float32', new Float32Array(C), ps);
    const tv = new ort.Tensor('float32', new Float32Array(C).fill(1), ps);
    for (const op of req.ops) {
      if (op === 'fusedBatchNormGrad') {
        run.skipped.push({ op, workload: w.id, reason: 'onnxruntime-node has no training (gradient) mode' });
        continue;
      }
      try {
        const [model, feeds, what] = op === 'moments' ? [momentsModel(w.shape, w.axes), { x: tx }, 'ReduceMean, Sub, Mul, ReduceMean']
          : op === 'batchNormalization' ? [batchNormModel(w.shape, w.axes), { x: tx, mean: tm, variance: tv, eps: teps }, 'Add, Sqrt, Sub, Div']
            : [trainingForwardModel(w.shape, w.axes), { x: tx, eps: teps }, 'statistics then normalize in one graph (no running statistics)'];
        const s = await ort.InferenceSession.create(model, opts);
        try {
          const t = await timeAsync(() => s.run(feeds), req.warmup, req.reps, budgetMs);
          run.timings.push({ op, workload: w.id, device: 'cpu', what, ...t, method: `wall clock around each await session.run (new outputs each run), ${req.warmup} warm-up runs, median of ${t.reps}` });
        } finally {
          await s.release();
        }
      } catch (e) {
        run.skipped.push({ op, workload: w.id, reason: errorText(e) });
      }
    }
  }
  return run;
}
