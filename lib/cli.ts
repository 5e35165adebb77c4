#!/usr/bin/env node
// batchnorm CLI. Each command is one entry of COMMANDS: its util.parseArgs options (with
// a help line each), its help text and what it runs. Usage errors exit 2, failures 1.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { suggest } from './check';
import { batchNormalization, explain, info, moments, version, type BackendChoice } from './index';

/** A mistake in the command line: printed with a pointer to the help, exit status 2. */
class UsageError extends Error {}

type OptionSpec = NonNullable<ParseArgsConfig['options']>[string] & { help: string; arg?: string };
type Values = Record<string, string | boolean | (string | boolean)[] | undefined>;

export interface Command {
  /** One line for the command list. */
  summary: string;
  /** Paragraph(s) for `batchnorm help <command>`. */
  description: string;
  options: Record<string, OptionSpec>;
  run(values: Values): number | Promise<number>;
}

const BACKENDS = ['auto', 'cpu', 'cuda', 'cudnn'] as const;

function backendValue(cmd: string, v: unknown): BackendChoice {
  if (v === undefined) return 'auto';
  if (!(BACKENDS as readonly unknown[]).includes(v)) {
    throw new UsageError(`${cmd}: --backend must be one of ${BACKENDS.join(', ')}, got ${JSON.stringify(v)}`);
  }
  return v as BackendChoice;
}

function shapeValue(cmd: string, v: unknown, dflt: number[]): number[] {
  if (v === undefined) return dflt;
  const s = String(v);
  if (!/^\d+(,\d+)*$/.test(s)) {
    throw new UsageError(`${cmd}: --shape must be comma-separated integers like 128,32,32,64, got ${JSON.stringify(s)}`);
  }
  const shape = s.split(',').map(Number);
  if (shape.length < 2 || shape.some((d) => d < 1 || !Number.isSafeInteger(d))) {
    throw new UsageError(`${cmd}: --shape needs at least 2 dimensions, each >= 1 (channels last), got ${JSON.stringify(s)}`);
  }
  const n = shape.reduce((a, b) => a * b, 1);
  if (n > 2 ** 28) throw new UsageError(`${cmd}: --shape ${s} has ${n} elements; the demo allows at most 2^28 (1 GiB)`);
  return shape;
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

function demo(backend: BackendChoice, shape: number[]): void {
  const n = shape.reduce((a, b) => a * b, 1);
  const C = shape[shape.length - 1];
  const axes = shape.slice(0, -1).map((_, i) => i);
  console.log(`x ~ N(0, 1), shape [${shape.join(', ')}] (${(n * 4 / 2 ** 20).toFixed(1)} MiB), axes [${axes.join(', ')}]`);
  const x = { data: randn(n, 42), shape };
  const ex = explain('moments', { backend });
  console.log(`backend: ${ex.backend} (${ex.reason})`);

  // warm-up, then timed
  moments(x, axes, { backend });
  const t0 = process.hrtime.bigint();
  const { mean, variance } = moments(x, axes, { backend });
  const t1 = process.hrtime.bigint();
  const y = batchNormalization(x, mean, variance, 0, 1, 0.001, { backend });
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
  console.log(`NCCL: ${i.nccl.available ? `available (version ${i.nccl.version})` : `unavailable: ${i.nccl.reason}`}`);
}

export const COMMANDS: Record<string, Command> = {
  demo: {
    summary: 'the classic tf.nn.moments + tf.nn.batch_normalization example, checked',
    description: `Draws x ~ N(0, 1) (seeded), takes moments over every axis but the last,
normalizes with offset 0, scale 1, varianceEpsilon 0.001, and prints the first
statistics, the per-channel mean/std of the output, the largest difference against the
hand-written formula, the backend and the time.`,
    options: {
      backend: { type: 'string', arg: 'auto|cpu|cuda|cudnn', help: 'backend to run on (default auto)' },
      shape: { type: 'string', arg: 'D,D,...', help: 'shape of x, channels last (default 128,32,32,64)' },
    },
    run(v) {
      demo(backendValue('demo', v.backend), shapeValue('demo', v.shape, [128, 32, 32, 64]));
      return 0;
    },
  },
  info: {
    summary: 'version, backends (with the reason when unavailable), threads, CPU features, CUDA',
    description: 'Describes this installation: what the addon was built with and what it finds on this machine.',
    options: {},
    run() {
      printInfo();
      return 0;
    },
  },
};

/**
 * Commands that parse their own arguments (with util.parseArgs too) and live in their own
 * module, required only when run: `bench` loads its chart, peer and progress code.
 */
const SELF_PARSING: Record<string, { summary: string; help(): string; run(argv: string[]): Promise<number> }> = {
  bench: {
    summary: 'time the ops on this machine/GPU against measured bandwidth floors; table, --json, --svg',
    help: () => (require('./bench/index') as typeof import('./bench/index')).BENCH_HELP,
    run: (argv) => (require('./bench/index') as typeof import('./bench/index')).benchCommand(argv),
  },
};
const isSelfParsing = (name: string): boolean => Object.prototype.hasOwnProperty.call(SELF_PARSING, name);

function optionLines(options: Record<string, OptionSpec>): string[] {
  const all: [string, string][] = Object.entries(options).map(([name, o]) => [
    `${o.short ? `-${o.short}, ` : ''}--${name}${o.type === 'string' ? ` ${o.arg ?? 'VALUE'}` : ''}`, o.help,
  ]);
  all.push(['-h, --help', 'show this help']);
  const w = Math.max(...all.map(([f]) => f.length));
  return all.map(([f, h]) => `  ${f.padEnd(w)}  ${h}`);
}

function usage(): string {
  const w = Math.max(...Object.keys(COMMANDS).map((c) => c.length), ...Object.keys(SELF_PARSING).map((c) => c.length), 4);
  return [
    'usage: batchnorm <command> [options]',
    '',
    'commands:',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(w)}  ${c.summary}`),
    ...Object.entries(SELF_PARSING).map(([name, c]) => `  ${name.padEnd(w)}  ${c.summary}`),
    `  ${'help'.padEnd(w)}  help <command>: that command's options`,
    '',
    'options: -h, --help (this text), --version',
  ].join('\n');
}

function commandHelp(name: string): string {
  const c = COMMANDS[name];
  return [`usage: batchnorm ${name} [options]`, '', c.description, '', 'options:', ...optionLines(c.options)].join('\n');
}

function unknownCommand(name: string): UsageError {
  return new UsageError(`unknown command ${JSON.stringify(name)}${suggest(name, [...Object.keys(COMMANDS), ...Object.keys(SELF_PARSING), 'help'])}`);
}

/** Runs the CLI on argv (without node and the script); returns the exit status. */
export async function main(argv: string[]): Promise<number> {
  const [first, ...rest] = argv;
  try {
    if (first === undefined) {
      console.error(usage());
      return 2;
    }
    if (first === '--help' || first === '-h') {
      console.log(usage());
      return 0;
    }
    if (first === '--version') {
      console.log(version);
      return 0;
    }
    if (first === 'help') {
      if (rest.length === 0) {
        console.log(usage());
        return 0;
      }
      if (rest.length > 1) throw new UsageError(`help takes one command, got ${rest.length}`);
      if (isSelfParsing(rest[0])) {
        console.log(SELF_PARSING[rest[0]].help());
        return 0;
      }
      if (!Object.prototype.hasOwnProperty.call(COMMANDS, rest[0])) throw unknownCommand(rest[0]);
      console.log(commandHelp(rest[0]));
      return 0;
    }
    if (first.startsWith('-')) throw new UsageError(`unknown option ${first} (before the command)`);
    if (isSelfParsing(first)) return await SELF_PARSING[first].run(rest);
    if (!Object.prototype.hasOwnProperty.call(COMMANDS, first)) throw unknownCommand(first);
    const cmd = COMMANDS[first];
    let values: Values;
    try {
      const options: ParseArgsConfig['options'] = { help: { type: 'boolean', short: 'h' } };
      for (const [k, { help: _help, arg: _arg, ...o }] of Object.entries(cmd.options)) options[k] = o;
      ({ values } = parseArgs({ args: rest, options, strict: true, allowPositionals: false }));
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code?.startsWith('ERR_PARSE_ARGS')) throw new UsageError(`${first}: ${(e as Error).message.split('\n')[0]}`);
      throw e;
    }
    if (values.help) {
      console.log(commandHelp(first));
      return 0;
    }
    return await cmd.run(values);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`batchnorm: ${e.message}`);
      console.error(first && Object.prototype.hasOwnProperty.call(COMMANDS, first)
        ? `Run 'batchnorm help ${first}' for its options.` : "Run 'batchnorm --help' for the commands.");
      return 2;
    }
    console.error(`batchnorm${first ? ` ${first}` : ''}: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
    return 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then((status) => { process.exitCode = status; });
}
