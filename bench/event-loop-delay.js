// The event loop's worst delay while Async ops run on large tensors: fresh outputs
// (allocated by the library, dropped by the caller) and caller-provided `out`.
// Usage: node --expose-gc bench/event-loop-delay.js [rounds]   (after npm run build)
'use strict';
const { monitorEventLoopDelay } = require('node:perf_hooks');
const bn = require('../dist/lib/index.js');

const rounds = Number(process.argv[2] ?? 10);
const shape = [64, 64, 112, 112];
const n = shape.reduce((a, b) => a * b, 1);
const x = { data: new Float32Array(n).map((_, i) => (i % 251) / 25), shape };
const mean = new Float32Array(112).fill(5);
const variance = new Float32Array(112).fill(2);

async function measure(label, body) {
  const h = monitorEventLoopDelay({ resolution: 1 });
  // A timer keeps ticking so that a blocked loop shows up as delay.
  const tick = setInterval(() => {}, 1);
  h.enable();
  const t0 = process.hrtime.bigint();
  for (let r = 0; r < rounds; r++) await body(r);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  h.disable();
  clearInterval(tick);
  const f = (v) => (v / 1e6).toFixed(1);
  console.log(`${label}: ${rounds} calls in ${ms.toFixed(0)} ms; event-loop delay max ${f(h.max)} ms, p99 ${f(h.percentile(99))} ms, mean ${f(h.mean)} ms`);
}

(async () => {
  console.log(`shape [${shape}] (${(n * 4 / 1e6).toFixed(0)} MB per tensor), node ${process.version}`);
  await bn.batchNormalizationAsync(x, mean, variance, null, null, 1e-3); // warm-up
  await measure('batchNormalizationAsync, fresh output', () => bn.batchNormalizationAsync(x, mean, variance, null, null, 1e-3));
  const out = new Float32Array(n);
  await measure('batchNormalizationAsync, options.out ', () => bn.batchNormalizationAsync(x, mean, variance, null, null, 1e-3, { out }));
  await measure('momentsAsync over axes [0, 1, 2]     ', () => bn.momentsAsync(x, [0, 1, 2]));
  await measure('batchNormalizationGradAsync, fresh dx ', () =>
    bn.batchNormalizationGradAsync(x, x, 1, { mean, invStd: variance }));
})();
