// `batchnorm bench` options: parsed with util.parseArgs, checked here, so every run
// starts from a plan that names exactly what will be timed. Bad flags are UsageErrors
// (exit code 2) with a message naming the flag, what it expects and what arrived.
import { parseArgs } from 'node:util';

export const OPS = ['moments', 'batchNormalization', 'fusedBatchNorm', 'fusedBatchNormGrad'] as const;
export type BenchOp = (typeof OPS)[number];
export type BenchBackend = 'cpu' | 'cuda' | 'cudnn';
export type Layout = 'NHWC' | 'NCHW' | 'NC' | 'other';

export interface Workload {
  id: string;
  shape: number[];
  axes: number[];
  layout: Layout;
  /** The one kept axis (the channel axis of the training ops); null when more than one axis is kept. */
  channelAxis: number | null;
}

/** The named workloads, as in the README: shapes and layouts of common batch-norm layers. */
export const PRESETS: readonly Workload[] = [
  { id: 'W1', shape: [128, 32, 32, 64], axes: [0, 1, 2], layout: 'NHWC', channelAxis: 3 },
  { id: 'W2', shape: [32, 256, 56, 56], axes: [0, 2, 3], layout: 'NCHW', channelAxis: 1 },
  { id: 'W3', shape: [256, 64, 112, 112], axes: [0, 2, 3], layout: 'NCHW', channelAxis: 1 },
  { id: 'W4', shape: [8192, 4096], axes: [0], layout: 'NC', channelAxis: 1 },
  { id: 'W5', shape: [256, 7, 7, 2048], axes: [0, 1, 2], layout: 'NHWC', channelAxis: 3 },
  { id: 'W6', shape: [64, 1024], axes: [0], layout: 'NC', channelAxis: 1 },
];

/** --quick: two real presets, one of a few MiB and one cache-sized, with few repetitions. */
export const QUICK_WORKLOADS = ['W1', 'W6'];

export interface BenchPlan {
  ops: BenchOp[];
  backends: BenchBackend[] | 'available';
  workloads: Workload[];
  threads: number | null;
  reps: number;
  warmup: number;
  quick: boolean;
  sweep: boolean;
  /** Largest size of --sweep in bytes (default 1 GiB, less when memory is short). */
  maxSize: number;
  fresh: boolean;
  json: string | null;
  svg: string | null;
  html: string | null;
  compare: string[];
  help: boolean;
  /** --workloads or --shape was given (else --sweep scales W1). */
  workloadsGiven: boolean;
}

export class UsageError extends Error {
  override name = 'UsageError';
}

export const BENCH_HELP = `usage: batchnorm bench [options]

Times moments, batchNormalization, fusedBatchNorm (training forward) and
fusedBatchNormGrad on this machine against floors measured in the same run
(CPU: copy/read bandwidth with the threads used, page-fault cost of fresh memory;
GPU: device-to-device copy and a read-only kernel, CUDA-event timed). Prints a
table; --json, --svg and --html write the results.

what:
  --ops LIST             ${OPS.join(',')} (default: all)
  --backend B            cpu | cuda | cudnn | all (default: every available one)
  --workloads LIST       named presets (default: W1-W6; --quick: ${QUICK_WORKLOADS.join(',')}):
${PRESETS.map((w) => `                           ${w.id} [${w.shape.join(',')}] ${w.layout === 'NC' ? 'rows x features' : w.layout}, axes [${w.axes.join(',')}]`).join('\n')}
  --shape D,D,...        your own shape instead of presets (the workload "custom")
  --axes A,A,...         axes to reduce for --shape (default: from --data-format)
  --data-format F        NHWC (channels last, default) | NCHW (channels at axis 1)
how:
  --threads N            CPU threads (default: the library's default)
  --reps N               timed repetitions per case, median reported (default 25)
  --quick                CI-sized: ${QUICK_WORKLOADS.join(' and ')}, 5 repetitions
  --sweep                sizes 64 KiB .. 1 GiB (or what memory allows), doubling:
                         GB/s against bytes, which shows the cache levels
  --max-size SIZE        largest --sweep size, e.g. 256MiB (default 1GiB; --quick 16MiB)
  --fresh                new output arrays each call (CPU): the floor then includes
                         the page-fault cost of the fresh output memory
  --compare LIST         peers, when present: torch (python3 with torch),
                         onnxruntime (onnxruntime-node); missing ones are skipped
output:
  --json FILE            results as JSON ("-" = stdout; the table is then omitted)
  --svg FILE             chart (needs the optional packages vega and vega-lite)
  --html FILE            the chart in a self-contained HTML page
  -h, --help             this text

exit codes: 0 ok, 1 a case failed, 2 bad flags or an unavailable backend/peer library.`;

function intList(flag: string, s: string, min: number): number[] {
  const parts = s.split(',');
  const out = parts.map((p) => (/^\s*-?\d+\s*$/.test(p) ? Number(p) : NaN));
  const bad = out.findIndex((v) => !Number.isSafeInteger(v) || v < min);
  if (s.trim() === '' || bad >= 0) {
    throw new UsageError(`--${flag} must be a comma-separated list of integers >= ${min}, got ${JSON.stringify(s)}`);
  }
  return out;
}

function positiveInt(flag: string, s: string | undefined, max: number): number | null {
  if (s === undefined) return null;
  const v = /^\d+$/.test(s) ? Number(s) : NaN;
  if (!(v >= 1 && v <= max)) throw new UsageError(`--${flag} must be an integer in [1, ${max}], got ${JSON.stringify(s)}`);
  return v;
}

/** "65536", "64KiB", "256MiB", "1GiB" -> bytes, within the sweep's range. */
export function parseSize(s: string): number {
  const m = /^(\d+)\s*(KiB|MiB|GiB|K|M|G)?$/i.exec(s.trim());
  const unit = m?.[2] ? 2 ** (10 * ('kmg'.indexOf(m[2][0].toLowerCase()) + 1)) : 1;
  const v = m ? Number(m[1]) * unit : NaN;
  if (!(v >= 64 * 1024 && v <= 2 ** 34)) throw new UsageError(`--max-size must be a size from 64KiB to 16GiB (e.g. 256MiB), got ${JSON.stringify(s)}`);
  return v;
}

/** The kept axes of a reduction; the channel axis when exactly one is kept. */
export function describeLayout(shape: number[], axes: number[]): { layout: Layout; channelAxis: number | null } {
  const kept = shape.map((_, i) => i).filter((i) => !axes.includes(i));
  const channelAxis = kept.length === 1 ? kept[0] : null;
  const rank = shape.length;
  let layout: Layout = 'other';
  if (channelAxis !== null && rank === 2 && channelAxis === 1) layout = 'NC';
  else if (channelAxis !== null && rank >= 3 && channelAxis === rank - 1) layout = 'NHWC';
  else if (channelAxis !== null && rank >= 3 && channelAxis === 1) layout = 'NCHW';
  return { layout, channelAxis };
}

export function customWorkload(shape: number[], axes: number[] | null, dataFormat: string | undefined): Workload {
  if (shape.length < 1 || shape.length > 8) throw new UsageError(`--shape must have 1 to 8 dimensions, got ${shape.length}`);
  if (shape.some((d) => d < 1)) throw new UsageError(`--shape dimensions must be >= 1, got [${shape.join(',')}]`);
  const elems = shape.reduce((a, b) => a * b, 1);
  if (elems > 2 ** 30) throw new UsageError(`--shape [${shape.join(',')}] has ${elems} elements; at most 2^30 (4 GiB) are allowed`);
  const rank = shape.length;
  if (dataFormat !== undefined && dataFormat !== 'NHWC' && dataFormat !== 'NCHW') {
    throw new UsageError(`--data-format must be NHWC or NCHW, got ${JSON.stringify(dataFormat)}`);
  }
  if (dataFormat === 'NCHW' && rank < 2) throw new UsageError('--data-format NCHW needs a --shape of rank >= 2');
  let ax: number[];
  if (axes) {
    const norm = axes.map((a) => (a < 0 ? a + rank : a));
    norm.forEach((a, i) => {
      if (a < 0 || a >= rank) throw new UsageError(`--axes: ${axes[i]} is out of range for a shape of rank ${rank}`);
    });
    if (new Set(norm).size !== norm.length) throw new UsageError(`--axes has a duplicate axis: ${axes.join(',')}`);
    ax = norm.sort((a, b) => a - b);
  } else {
    const channel = dataFormat === 'NCHW' ? 1 : rank - 1;
    ax = shape.map((_, i) => i).filter((i) => i !== channel);
  }
  return { id: 'custom', shape, axes: ax, ...describeLayout(shape, ax) };
}

export function parseBenchArgs(argv: string[]): BenchPlan {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        ops: { type: 'string' },
        backend: { type: 'string' },
        workloads: { type: 'string' },
        shape: { type: 'string' },
        axes: { type: 'string' },
        'data-format': { type: 'string' },
        threads: { type: 'string' },
        reps: { type: 'string' },
        quick: { type: 'boolean' },
        sweep: { type: 'boolean' },
        'max-size': { type: 'string' },
        fresh: { type: 'boolean' },
        compare: { type: 'string' },
        json: { type: 'string' },
        svg: { type: 'string' },
        html: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const quick = values.quick ?? false;
  const plan: BenchPlan = {
    ops: [...OPS],
    backends: 'available',
    workloads: [],
    threads: positiveInt('threads', values.threads, 1024),
    reps: positiveInt('reps', values.reps, 100000) ?? (quick ? 5 : 25),
    warmup: quick ? 2 : 3,
    quick,
    sweep: values.sweep ?? false,
    maxSize: values['max-size'] !== undefined ? parseSize(values['max-size']) : quick ? 16 * 2 ** 20 : 2 ** 30,
    fresh: values.fresh ?? false,
    json: values.json ?? null,
    svg: values.svg ?? null,
    html: values.html ?? null,
    compare: [],
    help: values.help ?? false,
    workloadsGiven: values.workloads !== undefined || values.shape !== undefined,
  };
  if (plan.help) return plan;
  if (values.ops !== undefined) {
    const ops = values.ops.split(',').map((s) => s.trim());
    for (const op of ops) {
      if (!(OPS as readonly string[]).includes(op)) throw new UsageError(`--ops: unknown op ${JSON.stringify(op)}; expected some of ${OPS.join(', ')}`);
    }
    plan.ops = OPS.filter((op) => ops.includes(op));
  }
  if (values.backend !== undefined) {
    const b = values.backend;
    if (b === 'all') plan.backends = 'available';
    else if (b === 'cpu' || b === 'cuda' || b === 'cudnn') plan.backends = [b];
    else throw new UsageError(`--backend must be cpu, cuda, cudnn or all, got ${JSON.stringify(b)}`);
  }
  if (values.shape !== undefined) {
    if (values.workloads !== undefined) throw new UsageError('--shape and --workloads exclude each other');
    const axes = values.axes !== undefined ? intList('axes', values.axes, -64) : null;
    plan.workloads = [customWorkload(intList('shape', values.shape, 1), axes, values['data-format'])];
  } else {
    if (values.axes !== undefined || values['data-format'] !== undefined) {
      throw new UsageError('--axes and --data-format describe a --shape; the presets state their own');
    }
    const ids = values.workloads !== undefined ? values.workloads.split(',').map((s) => s.trim().toUpperCase())
      : quick ? QUICK_WORKLOADS : PRESETS.map((w) => w.id);
    for (const id of ids) {
      const w = PRESETS.find((p) => p.id === id);
      if (!w) throw new UsageError(`--workloads: unknown workload ${JSON.stringify(id)}; expected some of ${PRESETS.map((p) => p.id).join(', ')}`);
      if (!plan.workloads.includes(w)) plan.workloads.push(w);
    }
  }
  if (values.compare !== undefined) {
    for (const p of values.compare.split(',').map((s) => s.trim())) {
      if (p !== 'torch' && p !== 'onnxruntime') throw new UsageError(`--compare: unknown peer ${JSON.stringify(p)}; expected torch, onnxruntime`);
      if (!plan.compare.includes(p)) plan.compare.push(p);
    }
  }
  for (const f of ['json', 'svg', 'html'] as const) {
    if (plan[f] === '') throw new UsageError(`--${f} needs a file name`);
  }
  if ((plan.svg === '-' ? 1 : 0) + (plan.html === '-' ? 1 : 0) + (plan.json === '-' ? 1 : 0) > 1) {
    throw new UsageError('only one of --json, --svg, --html can write to stdout ("-")');
  }
  return plan;
}
