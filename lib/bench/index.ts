// `batchnorm bench`: the package's own microbenchmark. Loaded by the CLI only; the core
// `require('batchnorm')` never loads this module, the chart packages or the progress line.
import * as fs from 'node:fs';
import * as os from 'node:os';
import { backends, getNumThreads, setNumThreads } from '../backend';
import { native } from '../binding';
import { version } from '../info';
import { ChartUnavailable, htmlPage, loadRenderer, renderSvg } from './chart';
import {
  cpuFloor, cpuModel, errorText, gpuFloor, pageFaultCost, runCpu, runGpu, opCost,
  type CpuFloor, type GpuFloor, type Result, type Skip, type Staging,
} from './measure';
import { BENCH_HELP, PRESETS, UsageError, describeLayout, parseBenchArgs, type BenchBackend, type BenchPlan, type Workload } from './options';
import { runOnnxruntime, runTorch, type PeerRun } from './peers';
import { createProgress, progressEnabled } from './progress';
import { formatTable, sizeLabel, type BenchReport, type PeerReport } from './report';

export { BENCH_HELP } from './options';

const SWEEP_MIN = 64 * 1024;

/**
 * x of `w`'s layout with about `bytes` bytes: the kept axes stay, the reduced axes shrink
 * (inner ones keep their extent while it fits, the outermost takes the rest).
 */
export function scaleWorkload(w: Workload, bytes: number): Workload | null {
  const keptElems = w.shape.reduce((a, d, i) => (w.axes.includes(i) ? a : a * d), 1);
  let rest = Math.max(1, Math.round(bytes / 4 / keptElems));
  if (rest * keptElems * 4 < bytes / 2) return null;
  const shape = w.shape.slice();
  const reduced = w.axes.slice().sort((a, b) => a - b);
  for (let k = reduced.length - 1; k >= 1; k--) {
    const d = shape[reduced[k]];
    shape[reduced[k]] = d <= rest ? d : 1;
    rest = Math.max(1, Math.round(rest / shape[reduced[k]]));
  }
  if (reduced.length) shape[reduced[0]] = rest;
  const got = 4 * shape.reduce((a, b) => a * b, 1);
  if (got > 2 * bytes || got < bytes / 2) return null;
  return { ...w, id: `${w.id}@${sizeLabel(got)}`, shape, ...describeLayout(shape, w.axes) };
}

function buffersPerCase(plan: BenchPlan): number {
  // x, plus y (or dx) for the ops that write, plus dy for the gradient.
  return 1 + (plan.ops.some((o) => o !== 'moments') ? 1 : 0) + (plan.ops.includes('fusedBatchNormGrad') ? 1 : 0);
}

function resolveBackends(plan: BenchPlan): BenchBackend[] {
  const all = backends();
  if (plan.backends === 'available') return all.filter((b) => b.available).map((b) => b.name);
  for (const name of plan.backends) {
    const b = all.find((x) => x.name === name);
    if (!b || !b.available) throw new UsageError(`--backend ${name} is unavailable here: ${b?.reason ?? 'unknown backend'}`);
  }
  return plan.backends;
}

function writeOut(file: string, text: string): void {
  if (file === '-') process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
  else fs.writeFileSync(file, text);
}

/** Runs `batchnorm bench` with the arguments after "bench"; resolves to the exit code. */
export async function benchCommand(argv: string[]): Promise<number> {
  let plan: BenchPlan;
  let list: BenchBackend[];
  try {
    plan = parseBenchArgs(argv);
    if (plan.help) {
      console.log(BENCH_HELP);
      return 0;
    }
    list = resolveBackends(plan);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`batchnorm: bench: ${e.message}\nRun 'batchnorm help bench' for its options.`);
      return 2;
    }
    throw e;
  }
  let renderer: Awaited<ReturnType<typeof loadRenderer>> | null = null;
  if (plan.svg || plan.html) {
    try {
      renderer = await loadRenderer();
    } catch (e) {
      if (e instanceof ChartUnavailable) {
        console.error(`batchnorm: bench: ${e.message}`);
        return 2;
      }
      throw e;
    }
  }
  if (plan.threads !== null) setNumThreads(plan.threads);
  const threads = getNumThreads();
  const cuda = native.cudaInfo();
  const gpuName = cuda.available ? cuda.name : 'GPU';
  const cpuName = cpuModel();
  const budgetMs = plan.quick ? 500 : 3000;
  const floorReps = plan.quick ? 3 : 7;

  // The cases: presets / --shape, or for --sweep each of them scaled from 64 KiB up.
  let cases: Workload[] = plan.workloads;
  if (plan.sweep) {
    const bases = plan.workloadsGiven ? plan.workloads : [PRESETS[0]];
    const perCase = buffersPerCase(plan) + 2;
    let max = Math.min(plan.maxSize, (0.6 * os.freemem()) / perCase);
    if (list.some((b) => b !== 'cpu') && cuda.available) max = Math.min(max, (0.7 * cuda.totalMemory) / perCase);
    cases = [];
    for (const base of bases) {
      for (let b = SWEEP_MIN; b <= max; b *= 2) {
        const w = scaleWorkload(base, b);
        if (w) cases.push(w);
      }
    }
  }

  const stdoutTaken = [plan.json, plan.svg, plan.html].includes('-');
  const peersWanted = plan.compare.length;
  const progress = createProgress(cases.length * list.length * plan.ops.length + peersWanted, progressEnabled(stdoutTaken));
  const results: Result[] = [];
  const skipped: Skip[] = [];
  const staging: Staging[] = [];
  const cpuFloors = new Map<number, CpuFloor>();
  const gpuFloors = new Map<number, GpuFloor>();
  const opts = { warmup: plan.warmup, reps: plan.reps, budgetMs, fresh: plan.fresh, sweep: plan.sweep };
  const tick = (label: string) => progress.tick(label);
  try {
    for (const w of cases) {
      for (const backend of list) {
        if (backend === 'cpu') {
          try {
            const r = runCpu(w, plan.ops, opts, floorReps, cpuName, tick);
            results.push(...r.results);
            skipped.push(...r.skips);
            cpuFloors.set(r.floor.bytes, r.floor);
          } catch (e) {
            skipped.push({ op: 'all', workload: w.id, backend, reason: errorText(e), failed: true });
          }
        } else {
          const r = runGpu(w, backend, plan.ops, opts, gpuName, tick);
          results.push(...r.results);
          skipped.push(...r.skips);
          if (r.floor) gpuFloors.set(r.floor.bytes, r.floor);
          if (r.staging && backend === 'cuda') staging.push(r.staging);
        }
      }
    }
  } finally {
    progress.done();
  }
  let pageFault: BenchReport['floors']['pageFault'] = null;
  if (list.includes('cpu')) {
    const biggest = Math.max(...cases.map((w) => 4 * w.shape.reduce((a, b) => a * b, 1)));
    const p = pageFaultCost(Math.min(256 * 2 ** 20, Math.max(2 ** 20, biggest)), floorReps);
    pageFault = { ...p, method: 'a new Float32Array filled once (page faults + writes) minus the same fill of mapped memory, one JS thread, medians' };
  }

  // Peers: the same workloads; floors from this run's measurements of the same size.
  const peers: PeerReport[] = [];
  const peerDevice: 'cpu' | 'cuda' = list.some((b) => b !== 'cpu') ? 'cuda' : 'cpu';
  const peerReq = { device: peerDevice, threads, warmup: plan.warmup, reps: plan.reps, ops: plan.ops, workloads: cases };
  for (const name of plan.compare) {
    progress.tick(`peer ${name}`);
    let run: PeerRun;
    try {
      run = name === 'torch' ? runTorch(peerReq, 30 * 60e3) : await runOnnxruntime(peerReq, budgetMs);
    } catch (e) {
      run = { peer: name as PeerRun['peer'], status: 'failed', reason: errorText(e), version: null, deviceName: null, timings: [], skipped: [] };
    }
    const rep: PeerReport = { peer: run.peer, status: run.status, reason: run.reason, version: run.version, deviceName: run.deviceName, results: [], skipped: run.skipped };
    for (const t of run.timings) {
      const w = cases.find((c) => c.id === t.workload);
      if (!w) continue;
      const bytes = 4 * w.shape.reduce((a, b) => a * b, 1);
      const cost = opCost(t.op, bytes);
      let readMs: number;
      let copyMs: number;
      if (t.device === 'cuda') {
        const g = gpuFloors.get(Math.max(16, Math.floor(bytes / 16) * 16)) ?? gpuFloor(bytes, plan.warmup, Math.max(plan.reps, 10));
        readMs = g.readMs;
        copyMs = g.copyMs;
      } else {
        const c = cpuFloors.get(bytes) ?? cpuFloor(bytes, floorReps);
        readMs = bytes / (c.readGbs * 1e6);
        copyMs = (2 * bytes) / (c.copyGbs * 1e6);
      }
      const floorMs = cost.floorMs(readMs, copyMs);
      rep.results.push({
        op: t.op, workload: t.workload, bytes, movedBytes: cost.moved, device: t.device, ms: t.ms, minMs: t.minMs, maxMs: t.maxMs,
        reps: t.reps, gbs: cost.moved / (t.ms * 1e6), floorMs, floorRatio: t.ms / floorMs, what: t.what, method: t.method,
      });
    }
    peers.push(rep);
  }

  const sweepReference: BenchReport['floors']['sweepReference'] = [];
  if (plan.sweep) {
    const c = [...cpuFloors.values()].sort((a, b) => b.bytes - a.bytes)[0];
    if (c) sweepReference.push({ label: `cpu read floor (${sizeLabel(c.bytes)})`, gbs: c.readGbs, device: 'cpu' }, { label: `cpu copy floor (${sizeLabel(c.bytes)})`, gbs: c.copyGbs, device: 'cpu' });
    const g = [...gpuFloors.values()].sort((a, b) => b.bytes - a.bytes)[0];
    if (g) sweepReference.push({ label: `GPU read kernel (${sizeLabel(g.bytes)})`, gbs: g.readGbs, device: gpuName }, { label: `GPU D2D copy (${sizeLabel(g.bytes)})`, gbs: g.copyGbs, device: gpuName });
  }
  const report: BenchReport = {
    version,
    command: `batchnorm bench ${argv.join(' ')}`.trim(),
    date: new Date().toISOString(),
    machine: {
      cpu: cpuName, cores: os.cpus().length, memoryGiB: Math.round(os.totalmem() / 2 ** 30), threads,
      cpuFeatures: native.cpuFeatures(), node: process.version, platform: `${process.platform}-${process.arch}`,
      ...(cuda.available ? {
        gpu: cuda.name, computeCapability: cuda.computeCapability, gpuMemoryGiB: Math.round((cuda.totalMemory / 2 ** 30) * 10) / 10,
        driver: cuda.driverVersion, cudaRuntime: cuda.runtimeVersion,
      } : {}),
    },
    settings: {
      ops: plan.ops, backends: list, workloads: cases.map((w) => ({ id: w.id, shape: w.shape, axes: w.axes, layout: w.layout })),
      reps: plan.reps, warmup: plan.warmup, quick: plan.quick, sweep: plan.sweep, fresh: plan.fresh, budgetMsPerCase: budgetMs,
    },
    method: {
      cpu: 'wall clock (process.hrtime) around each synchronous call on the cpu backend, after warm-up calls; median, min and max of the timed calls (fewer than reps, at least 5, when one call is long: see budgetMsPerCase); outputs reused through options.out unless settings.fresh',
      cuda: 'moments and batchNormalization: CUDA events around each run on the stream (deviceTimeOp), DeviceTensor inputs; other ops and cudnn: wall clock over batches of back-to-back calls + synchronize',
      floors: 'cpu: copy and read bandwidth over buffers of x\'s size (at least 1 MiB), the addon\'s loops on the kernels\' thread pool, best of repetitions; GPU: device-to-device cudaMemcpy and a read-only kernel over x\'s bytes, CUDA events, medians',
      gbs: 'movedBytes / ms: moments reads x; batchNormalization reads x and writes y; fusedBatchNorm reads x twice and writes y; fusedBatchNormGrad reads x and dy and writes dx',
      floorRatio: 'ms / floorMs; floorMs = the op\'s bytes over the measured bandwidths (see each result\'s floor)',
      peers: 'the same workloads; timings as stated in each peer result; floorRatio uses batchnorm\'s floors of the same size and device from this run',
    },
    floors: {
      cpu: [...cpuFloors.values()].sort((a, b) => a.bytes - b.bytes),
      pageFault,
      gpu: [...gpuFloors.values()].sort((a, b) => a.bytes - b.bytes).map((g) => ({ ...g, device: gpuName })),
      sweepReference,
    },
    results, staging, skipped, peers,
  };

  const table = formatTable(report);
  if (!stdoutTaken) console.log(table);
  if (plan.json) writeOut(plan.json, `${JSON.stringify(report, null, 2)}\n`);
  if (renderer && (plan.svg || plan.html)) {
    const svg = await renderSvg(report, renderer);
    if (plan.svg) writeOut(plan.svg, svg);
    if (plan.html) writeOut(plan.html, htmlPage(report, svg, table));
  }
  if (!stdoutTaken) {
    for (const [flag, file] of [['json', plan.json], ['svg', plan.svg], ['html', plan.html]] as const) {
      if (file) console.log(`wrote ${flag}: ${file}`);
    }
  }
  return skipped.some((s) => s.failed) || peers.some((p) => p.status === 'failed') ? 1 : 0;
}
