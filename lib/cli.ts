#!/usr/bin/env node
// batchnorm CLI: `demo` runs the classic TF example, `info` describes this installation.
import { batchNormalization, explain, info, moments, type BackendChoice } from './index';

const USAGE = `usage: batchnorm <command> [options]

commands:
  demo [--backend auto|cpu|cuda|cudnn] [--shape 128,32,32,64]
       the classic tf.nn.moments + tf.nn.batch_normalization example: x ~ N(0,1),
       moments over every axis but the last, normalize with scale 1, offset 0, eps 0.001
  info print version, backends (with the reason when unavailable), threads, CPU features
`;

function parseArgs(argv: string[]): { cmd: string | undefined; opts: Map<string, string> } {
  const opts = new Map<string, string>();
  let cmd: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      if (eq > 0) opts.set(a.slice(2, eq), a.slice(eq + 1));
      else opts.set(a.slice(2), argv[++i] ?? '');
    } else if (cmd === undefined) cmd = a;
    else throw new Error(`unexpected argument ${JSON.stringify(a)}`);
  }
  return { cmd, opts };
}

/** Standard normal samples from a seeded generator (xorshift32 + Box–Muller). */
function randn(n: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const u = () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(u()));
    const t = 2 * Math.PI * u();
    out[i] = r * Math.cos(t);
    if (i + 1 < n) out[i + 1] = r * Math.sin(t);
  }
  return out;
}

function fmt(a: ArrayLike<number>, k: number): string {
  return Array.from({ length: Math.min(k, a.length) }, (_, i) => a[i].toFixed(6)).join(', ');
}

function demo(opts: Map<string, string>): void {
  const backend = (opts.get('backend') ?? 'auto') as BackendChoice;
  const shape = (opts.get('shape') ?? '128,32,32,64').split(',').map(Number);
  const n = shape.reduce((a, b) => a * b, 1);
  const C = shape[shape.length - 1];
  const axes = shape.slice(0, -1).map((_, i) => i);
  console.log(`x ~ N(0, 1), shape [${shape.join(', ')}] (${(n * 4 / 2 ** 20).toFixed(1)} MiB), axes [${axes.join(', ')}]`);
  const x = { data: randn(n, 42), shape };
  const ex = explain('moments', { backend });
  console.log(`backend: ${ex.backend} (${ex.reason})`);

  // warm-up, then timed
  moments(x, axes);
  const t0 = process.hrtime.bigint();
  const { mean, variance } = moments(x, axes);
  const t1 = process.hrtime.bigint();
  const y = batchNormalization(x, mean, variance, 0, 1, 0.001);
  const t2 = process.hrtime.bigint();
  console.log(`mean[0..4]     = ${fmt(mean.data, 5)}   shape [${mean.shape.join(', ')}]`);
  console.log(`variance[0..4] = ${fmt(variance.data, 5)}`);

  // Check the output: per-channel mean ≈ 0 and std ≈ 1, and the hand-written formula.
  const s = new Float64Array(C);
  const ss = new Float64Array(C);
  let maxDiff = 0;
  for (let i = 0; i < n; i++) {
    const c = i % C;
    s[c] += y.data[i];
    ss[c] += y.data[i] * y.data[i];
    const ref = (x.data[i] - mean.data[c]) / Math.sqrt(variance.data[c] + 0.001);
    maxDiff = Math.max(maxDiff, Math.abs(ref - y.data[i]));
  }
  const rows = n / C;
  const ym = Array.from(s, (v) => v / rows);
  const ysd = Array.from(ss, (v, c) => Math.sqrt(v / rows - ym[c] * ym[c]));
  console.log(`normalized mean[0..4] = ${fmt(ym, 5)}`);
  console.log(`normalized std[0..4]  = ${fmt(ysd, 5)}   (≈ sqrt(var/(var+0.001)))`);
  console.log(`max |y − (x − mean)/sqrt(var + 0.001)| = ${maxDiff.toExponential(2)}`);
  console.log(`moments: ${(Number(t1 - t0) / 1e6).toFixed(3)} ms, batchNormalization: ${(Number(t2 - t1) / 1e6).toFixed(3)} ms (fresh output)`);
}

function printInfo(): void {
  const i = info();
  console.log(`batchnorm ${i.version} (Node ${i.node}, N-API ${i.napi})`);
  console.log(`CPU: ${i.threads} threads, kernels: ${i.cpuFeatures}`);
  for (const b of i.backends) {
    console.log(`  ${b.name.padEnd(6)} ${b.available ? 'available' : `unavailable: ${b.reason}`}`);
  }
  const c = i.cuda;
  console.log(`CUDA: ${c.compiled ? `compiled in (runtime ${c.runtimeVersion})` : 'not compiled in'}` +
    (c.available ? `, device 0: ${c.name}, compute ${c.computeCapability}, ${(c.totalMemory / 2 ** 30).toFixed(1)} GiB, driver ${c.driverVersion}` : ''));
}

function main(): number {
  let parsed;
  try {
    parsed = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(`batchnorm: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  switch (parsed.cmd) {
    case 'demo': demo(parsed.opts); return 0;
    case 'info': printInfo(); return 0;
    case undefined: case 'help': case '--help': console.log(USAGE); return parsed.cmd === undefined ? 2 : 0;
    default:
      console.error(`batchnorm: unknown command ${JSON.stringify(parsed.cmd)}\n${USAGE}`);
      return 2;
  }
}

try {
  process.exitCode = main();
} catch (e) {
  console.error(`batchnorm: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
  process.exitCode = 1;
}
