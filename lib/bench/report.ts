// The report of `batchnorm bench`: the JSON document (--json) and the table on stdout.
import type { CpuFloor, GpuFloor, PageFault, Result, Skip, Staging } from './measure';
import type { BenchOp, Layout } from './options';

export interface PeerResult {
  op: BenchOp;
  workload: string;
  bytes: number;
  movedBytes: number;
  device: 'cpu' | 'cuda';
  ms: number;
  minMs: number;
  maxMs: number;
  reps: number;
  gbs: number;
  /** The floor of the same op and size on the same device, measured by batchnorm in this run. */
  floorMs: number;
  floorRatio: number;
  /** The peer call that was timed. */
  what: string;
  method: string;
}

export interface PeerReport {
  peer: 'torch' | 'onnxruntime';
  status: 'ok' | 'skipped' | 'failed';
  reason: string | null;
  version: string | null;
  deviceName: string | null;
  results: PeerResult[];
  skipped: { op: BenchOp; workload: string; reason: string }[];
}

export interface BenchReport {
  version: string;
  command: string;
  date: string;
  machine: {
    cpu: string; cores: number; memoryGiB: number; threads: number; cpuFeatures: string; node: string; platform: string;
    gpu?: string; computeCapability?: string; gpuMemoryGiB?: number; driver?: number; cudaRuntime?: number;
  };
  settings: {
    ops: BenchOp[]; backends: string[]; workloads: { id: string; shape: number[]; axes: number[]; layout: Layout }[];
    reps: number; warmup: number; quick: boolean; sweep: boolean; fresh: boolean; budgetMsPerCase: number;
  };
  /** How each kind of number was obtained. */
  method: Record<string, string>;
  floors: {
    cpu: CpuFloor[];
    pageFault: (PageFault & { method: string }) | null;
    gpu: (GpuFloor & { device: string })[];
    /** Reference lines of the sweep chart: the floors measured at the sweep's largest size. */
    sweepReference: { label: string; gbs: number; device: string }[];
  };
  results: Result[];
  staging: Staging[];
  skipped: Skip[];
  peers: PeerReport[];
}

const f = (v: number, d: number): string => v.toFixed(d);
const ms = (v: number): string => (v >= 100 ? f(v, 1) : v >= 10 ? f(v, 2) : v >= 1 ? f(v, 3) : f(v, 4));

export function sizeLabel(bytes: number): string {
  if (bytes >= 2 ** 30) return `${f(bytes / 2 ** 30, bytes % 2 ** 30 ? 2 : 0)} GiB`;
  if (bytes >= 2 ** 20) return `${f(bytes / 2 ** 20, bytes % 2 ** 20 ? 1 : 0)} MiB`;
  return `${f(bytes / 2 ** 10, bytes % 2 ** 10 ? 1 : 0)} KiB`;
}

function grid(head: string[], rows: string[][], right: boolean[]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => (right[i] ? c.padStart(w[i]) : c.padEnd(w[i]))).join('  ').trimEnd();
  return [line(head), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n');
}

/** The human-readable report: machine, floors, one row per result, peers, skips. */
export function formatTable(r: BenchReport): string {
  const m = r.machine;
  const out: string[] = [];
  out.push(`batchnorm ${r.version} bench — ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.cpuFeatures}, ${m.threads} threads, Node ${m.node}` +
    (m.gpu ? `\nGPU: ${m.gpu} (cc ${m.computeCapability}, ${m.gpuMemoryGiB} GiB, driver ${m.driver}, runtime ${m.cudaRuntime})` : ''));
  const fl: string[] = [];
  for (const c of r.floors.cpu) fl.push(`  cpu ${sizeLabel(c.bytes)}${c.measuredBytes !== c.bytes ? ` (measured over ${sizeLabel(c.measuredBytes)})` : ''}: copy ${f(c.copyGbs, 1)} GB/s, read ${f(c.readGbs, 1)} GB/s (${c.threads} threads)`);
  if (r.floors.pageFault) {
    const p = r.floors.pageFault;
    fl.push(`  cpu fresh memory: ${f(p.msPerGiB, 1)} ms per GiB of page faults (new ${sizeLabel(p.bytes)} Float32Array filled: ${ms(p.freshMs)} ms, refilled: ${ms(p.touchedMs)} ms)`);
  }
  for (const g of r.floors.gpu) fl.push(`  ${g.device} ${sizeLabel(g.bytes)}: D2D copy ${f(g.copyGbs, 0)} GB/s (${ms(g.copyMs)} ms), read kernel ${f(g.readGbs, 0)} GB/s (${ms(g.readMs)} ms)`);
  if (fl.length && !r.settings.sweep) out.push(`floors measured in this run (bytes of x):\n${fl.join('\n')}`);
  if (r.settings.sweep && r.floors.sweepReference.length) {
    out.push(`floors at the largest size: ${r.floors.sweepReference.map((s) => `${s.label} ${f(s.gbs, 1)} GB/s`).join(', ')}`);
  }
  const head = ['workload', 'shape / axes', 'op', 'backend', 'ms', 'min–max ms', 'GB/s', 'floor ms', '× floor', 'threads / device'];
  const rows = r.results.map((x) => [
    x.workload, `[${x.shape.join(',')}] / [${x.axes.join(',')}] ${x.layout}`, x.op, x.backend,
    ms(x.ms), `${ms(x.minMs)}–${ms(x.maxMs)}`, f(x.gbs, 1), ms(x.floorMs), f(x.floorRatio, 2),
    x.threads !== null ? `${x.threads} threads` : x.device,
  ]);
  for (const p of r.peers) {
    for (const x of p.results) {
      rows.push([x.workload, '', x.op, `${p.peer} ${x.device}`, ms(x.ms), `${ms(x.minMs)}–${ms(x.maxMs)}`, f(x.gbs, 1), ms(x.floorMs), f(x.floorRatio, 2), x.what]);
    }
  }
  out.push('', grid(head, rows, [false, false, false, false, true, true, true, true, true, false]));
  out.push('', 'GB/s = bytes the op must move / median time. × floor = median time / floor time (1 = at the floor; lower is better).');
  out.push('floors: moments = read x; batchNormalization = copy (read x + write y); fusedBatchNorm and fusedBatchNormGrad = read + copy of x\'s bytes.');
  if (r.staging.length) {
    out.push('', 'host <-> device staging (what a Float32Array call on a GPU backend adds):');
    for (const s of r.staging) out.push(`  ${s.workload} ${sizeLabel(s.bytes)}: upload ${ms(s.uploadMs)} ms (${f(s.uploadGbs, 1)} GB/s), download ${ms(s.downloadMs)} ms (${f(s.downloadGbs, 1)} GB/s)`);
  }
  for (const p of r.peers) {
    if (p.status !== 'ok') out.push(`peer ${p.peer}: ${p.status}: ${p.reason}`);
    for (const s of p.skipped) out.push(`peer ${p.peer} ${s.workload} ${s.op}: skipped: ${s.reason}`);
  }
  for (const s of r.skipped) out.push(`${s.workload} ${s.op} ${s.backend}: ${s.failed ? 'FAILED' : 'skipped'}: ${s.reason}`);
  return out.join('\n');
}
