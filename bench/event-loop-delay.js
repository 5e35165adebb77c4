// The event loop's worst delay while Async ops run on large tensors, per op and per output
// mode (fresh outputs the library allocates and the caller drops; a caller-provided `out`).
//
// Usage (after npm run build):
//   node bench/event-loop-delay.js [--rounds N] [--ops a,b] [--modes fresh,out]
//        [--shape 64,64,112,112] [--stalls MS] [--verbose] [--check MS] [--json]
// ops: idle (a control without library calls), moments, batchNormalization, fusedBatchNorm,
//   grad (default all); modes: fresh, out.
// --stalls MS counts gaps of the main thread above MS (default 5) and splits them into the
//   time the main thread ran, waited for a CPU and was blocked (from /proc schedstat);
//   --verbose lists each with the phase of the call it fell in and the overlapping GCs.
// --check MS exits with status 1 when any op's worst delay is above MS (npm run check:event-loop),
//   2 (inconclusive) when the idle control alone is above MS/2: the machine is too busy.
//
// What is measured: perf_hooks.monitorEventLoopDelay at 1 ms resolution (max, p99, mean),
// plus a 1 ms interval timer of our own that timestamps every gap, so that a stall can be
// matched against the calls' phases (start → promise returned → settled) and the `gc`
// performance entries. Timings depend on the machine and its load: check `uptime` first.
'use strict';
const { monitorEventLoopDelay, PerformanceObserver, performance } = require('node:perf_hooks');
const bn = require('../dist/lib/index.js');

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}
const rounds = Number(arg('rounds', 6));
const ops = arg('ops', 'idle,moments,batchNormalization,fusedBatchNorm,grad').split(',');
const modes = arg('modes', 'fresh,out').split(',');
const shape = arg('shape', '64,64,112,112').split(',').map(Number);
const stallMs = Number(arg('stalls', 5));
const checkMs = arg('check', null) === null ? null : Number(arg('check'));
const asJson = process.argv.includes('--json');
const verbose = process.argv.includes('--verbose');
const sum = (r, k) => r.stalls.reduce((a, s) => a + s.main[k], 0).toFixed(0);

const n = shape.reduce((a, b) => a * b, 1);
const C = shape[shape.length - 1];
const x = { data: new Float32Array(n), shape };
for (let i = 0; i < n; i++) x.data[i] = (i % 251) / 25;
const dy = { data: new Float32Array(n), shape };
for (let i = 0; i < n; i++) dy.data[i] = ((i * 7) % 13) / 13 - 0.5;
const mean = new Float32Array(C).fill(5);
const variance = new Float32Array(C).fill(2);
const scale = new Float32Array(C).fill(1.5);
const offset = new Float32Array(C).fill(0.25);
const invStd = new Float32Array(C).fill(0.7);

// One async call per op and mode; `out` arrays are allocated once, as a training loop would.
const outs = {};
const outFor = (key, len) => (outs[key] ??= new Float32Array(len));
const calls = {
  // Control: no library call, a 100 ms timer. Its delays are the machine's own (other
  // processes, timer slack): no op can do better than this line.
  idle: {
    fresh: () => new Promise((r) => setTimeout(r, 100)),
    out: () => new Promise((r) => setTimeout(r, 100)),
  },
  moments: {
    fresh: () => bn.momentsAsync(x, [0, 1, 2]),
    out: () => bn.momentsAsync(x, [0, 1, 2], { out: { mean: outFor('mm', C), variance: outFor('mv', C) } }),
  },
  batchNormalization: {
    fresh: () => bn.batchNormalizationAsync(x, mean, variance, offset, scale, 1e-3),
    out: () => bn.batchNormalizationAsync(x, mean, variance, offset, scale, 1e-3, { out: outFor('y', n) }),
  },
  fusedBatchNorm: {
    fresh: () => bn.fusedBatchNormAsync(x, scale, offset),
    out: () => bn.fusedBatchNormAsync(x, scale, offset, { out: outFor('y', n) }),
  },
  grad: {
    fresh: () => bn.batchNormalizationGradAsync(dy, x, scale, { mean, invStd }),
    out: () => bn.batchNormalizationGradAsync(dy, x, scale, { mean, invStd }, { out: outFor('dx', n) }),
  },
};

// Garbage collections, timestamped on performance.now()'s clock.
const { constants: K } = require('node:perf_hooks');
const GC_KIND = {
  [K.NODE_PERFORMANCE_GC_MINOR]: 'scavenge', [K.NODE_PERFORMANCE_GC_MAJOR]: 'mark-compact',
  [K.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental marking', [K.NODE_PERFORMANCE_GC_WEAKCB]: 'weak callbacks',
};
const gcs = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    gcs.push({ start: e.startTime, end: e.startTime + e.duration, kind: GC_KIND[e.detail?.kind ?? e.kind] ?? 'gc' });
  }
}).observe({ entryTypes: ['gc'] });

// The main thread's CPU time and run-queue wait (ns) from /proc: over a stall, running =
// JavaScript, GC or syscalls on the main thread; waiting = runnable but no CPU free (other
// threads hold the cores); the rest = blocked in the kernel (a lock, a futex, a page fault's I/O).
const fs = require('node:fs');
const schedPath = `/proc/self/task/${process.pid}/schedstat`;
const hasSched = fs.existsSync(schedPath);
function sched() {
  if (!hasSched) return null;
  const [cpu, wait] = fs.readFileSync(schedPath, 'latin1').split(' ').map(Number);
  return { cpu, wait };
}
function splitGap(s) {
  if (!s.s0) return null;
  const run = (s.s1.cpu - s.s0.cpu) / 1e6, wait = (s.s1.wait - s.s0.wait) / 1e6;
  return { runMs: run, waitMs: wait, blockedMs: Math.max(0, s.end - s.start - run - wait) };
}

// performance.now() on CLOCK_MONOTONIC's scale (ms), to match stalls with outside traces.
const monoOffsetMs = Number(process.hrtime.bigint()) / 1e6 - performance.now();

async function measure(op, mode) {
  const body = calls[op][mode];
  await body(); // warm-up: pages, pool threads, scratch
  await new Promise((r) => setTimeout(r, 50));
  gcs.length = 0;
  const h = monitorEventLoopDelay({ resolution: 1 });
  const stalls = [];
  let last = performance.now();
  let lastSched = sched();
  // A 1 ms timer keeps the loop ticking so that a blocked loop shows up as delay.
  const tick = setInterval(() => {
    const now = performance.now();
    const s = sched();
    if (now - last - 1 > stallMs) stalls.push({ start: last, end: now, s0: lastSched, s1: s });
    last = now;
    lastSched = s;
  }, 1);
  const phases = [];
  h.enable();
  const t0 = performance.now();
  for (let r = 0; r < rounds; r++) {
    const start = performance.now();
    const p = body();
    const returned = performance.now();
    await p;
    phases.push({ r, start, returned, settled: performance.now() });
  }
  const t1 = performance.now();
  h.disable();
  clearInterval(tick);
  await new Promise((r) => setImmediate(r)); // let the gc observer deliver its entries
  const where = (s) => {
    const mid = (s.start + s.end) / 2;
    const p = phases.find((q) => mid >= q.start && mid <= q.settled);
    if (!p) return 'between calls';
    if (mid <= p.returned) return `call ${p.r}: synchronous part (${(p.returned - p.start).toFixed(1)} ms)`;
    return `call ${p.r}: ${(s.start - p.returned).toFixed(1)} ms after it returned, ${(p.settled - s.end).toFixed(1)} ms before it settled`;
  };
  return {
    op, mode, rounds,
    totalMs: t1 - t0,
    maxMs: h.max / 1e6, p99Ms: h.percentile(99) / 1e6, meanMs: h.mean / 1e6,
    syncPartMaxMs: Math.max(...phases.map((p) => p.returned - p.start)),
    stalls: stalls.map((s) => ({
      atMs: s.start - t0, monoMs: s.start + monoOffsetMs, gapMs: s.end - s.start - 1, where: where(s), main: splitGap(s),
      gcs: gcs.filter((g) => g.start < s.end && g.end > s.start).map((g) => `${g.kind} ${(g.end - g.start).toFixed(1)} ms`),
    })),
    gcs: gcs.filter((g) => g.start >= t0 && g.start <= t1).length,
    gcMaxMs: Math.max(0, ...gcs.filter((g) => g.start >= t0 && g.start <= t1).map((g) => g.end - g.start)),
  };
}

(async () => {
  const os = require('node:os');
  const header = {
    shape, mb: (n * 4) / 1e6, node: process.version, cpus: os.cpus().length, load: os.loadavg().map((l) => +l.toFixed(2)),
    threads: bn.info().threads ?? process.env.BATCHNORM_NUM_THREADS,
  };
  if (!asJson) {
    console.log(`shape [${shape}] (${header.mb.toFixed(0)} MB per tensor), node ${header.node}, ${header.cpus} CPUs, ` +
      `load ${header.load.join(' ')}, ${rounds} calls per line`);
  }
  const results = [];
  for (const op of ops) {
    for (const mode of op === 'idle' ? ['fresh'] : modes) {
      const r = await measure(op, mode);
      results.push(r);
      if (asJson) continue;
      console.log(`${op === 'idle' ? 'idle (control, no calls)' : `${op}Async ${mode}`.padEnd(30)} ${(r.totalMs / rounds).toFixed(0).padStart(5)} ms/call; ` +
        `delay max ${r.maxMs.toFixed(1)} ms, p99 ${r.p99Ms.toFixed(1)}, mean ${r.meanMs.toFixed(2)}; ` +
        `sync part max ${r.syncPartMaxMs.toFixed(1)} ms; ${r.gcs} GCs (max ${r.gcMaxMs.toFixed(1)} ms)` +
        (hasSched ? `; stalls>${stallMs}ms: ${r.stalls.length}, main thread in them ran ${sum(r, 'runMs')}, waited for a CPU ${sum(r, 'waitMs')}, blocked ${sum(r, 'blockedMs')} ms` : ''));
      if (!verbose) continue;
      for (const s of r.stalls) {
        const m = s.main ? ` [main thread: ran ${s.main.runMs.toFixed(1)}, waited for a CPU ${s.main.waitMs.toFixed(1)}, blocked ${s.main.blockedMs.toFixed(1)} ms]` : '';
        console.log(`    stall ${s.gapMs.toFixed(1)} ms at +${s.atMs.toFixed(0)} ms, ${s.where}${m}${s.gcs.length ? `; GC: ${s.gcs.join(', ')}` : ''}`);
      }
    }
  }
  const worst = Math.max(...results.filter((r) => r.op !== 'idle').map((r) => r.maxMs));
  if (asJson) console.log(JSON.stringify({ ...header, results }, null, 1));
  else console.log(`worst delay ${worst.toFixed(1)} ms`);
  const control = results.find((r) => r.op === 'idle');
  if (checkMs !== null && worst > checkMs && control && control.maxMs > checkMs / 2) {
    // The loop stalls without any call: other processes (or the hypervisor) hold the CPUs.
    console.error(`event-loop check INCONCLUSIVE: worst delay ${worst.toFixed(1)} ms > ${checkMs} ms, but the idle ` +
      `control alone reached ${control.maxMs.toFixed(1)} ms: the machine is too busy to judge (check uptime)`);
    process.exitCode = 2;
  } else if (checkMs !== null && worst > checkMs) {
    console.error(`event-loop check FAILED: worst delay ${worst.toFixed(1)} ms > ${checkMs} ms`);
    process.exitCode = 1;
  } else if (checkMs !== null) {
    console.log(`event-loop check passed: worst delay ${worst.toFixed(1)} ms <= ${checkMs} ms`);
  }
})();
