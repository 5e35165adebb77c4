// One rank of scripts/nccl-check.sh: joins the NCCL group, runs synchronized batch norm
// forward + backward on its shard of a batch every rank generates identically (host
// Float32Arrays, then DeviceTensors, where the ops exchange on the device), compares
// with the whole batch computed in this process without a communicator, checks the
// device collectives, and times the exchange for the channel counts of W1–W6.
// Usage: node scripts/nccl-rank.js <rank> <size> <dir>   (rank 0 writes <dir>/id)
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const bn = require('../dist/lib/index.js');

const [rank, size] = process.argv.slice(2, 4).map(Number);
const dir = process.argv[4];

function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
function randn(n, seed, mean = 0, std = 1) {
  const u = rng(seed);
  return Float32Array.from({ length: n }, () => mean + std * Math.sqrt(-2 * Math.log(u() + 1e-12)) * Math.cos(2 * Math.PI * u()));
}
function maxRel(a, b) {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]) / Math.max(1, Math.abs(b[i])));
  return m;
}
async function readId() {
  const file = path.join(dir, 'id');
  if (rank === 0) {
    const id = bn.NcclCommunicator.uniqueId();
    fs.writeFileSync(file + '.tmp', id);
    fs.renameSync(file + '.tmp', file);
    return id;
  }
  for (let k = 0; k < 600; k++) {
    if (fs.existsSync(file)) return new Uint8Array(fs.readFileSync(file));
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('no id from rank 0 after 60 s');
}

(async () => {
  const out = { rank, size, checks: {}, exchange: [] };
  const comm = await bn.NcclCommunicator.create(await readId(), size, rank, { timeoutMs: 60000 });
  // Uneven shards: rank r gets 2 + 3r samples of [8, 8, C] NHWC and the NCHW transpose.
  const C = 32;
  const per = 8 * 8 * C;
  const batches = Array.from({ length: size }, (_, r) => 2 + 3 * r);
  const total = batches.reduce((a, b) => a + b, 0);
  const start = batches.slice(0, rank).reduce((a, b) => a + b, 0) * per;
  const n = batches[rank] * per;
  const xAll = randn(total * per, 1, 100, 3);
  const dyAll = randn(total * per, 2);
  const scale = randn(C, 3, 1, 0.1);
  const offset = randn(C, 4);
  const whole = { data: xAll, shape: [total, 8, 8, C] };
  const f = bn.fusedBatchNorm(whole, scale, offset, { epsilon: 1e-5 });
  const g = bn.batchNormalizationGrad({ data: dyAll, shape: whole.shape }, whole, scale, { mean: f.savedMean, invStd: f.savedInvStd });
  const x = { data: xAll.slice(start, start + n), shape: [batches[rank], 8, 8, C] };
  const r = await bn.fusedBatchNormAsync(x, scale, offset, { epsilon: 1e-5, sync: comm });
  const gr = await bn.fusedBatchNormGradAsync({ data: dyAll.slice(start, start + n), shape: x.shape }, x, scale,
    { mean: r.savedMean, invStd: r.savedInvStd }, { sync: comm });
  out.checks.batchMean = maxRel(r.batchMean.data, f.batchMean.data);
  out.checks.batchVariance = maxRel(r.batchVariance.data, f.batchVariance.data);
  out.checks.y = maxRel(r.y.data, f.y.data.subarray(start, start + n));
  out.checks.dx = maxRel(gr.dx.data, g.dx.data.subarray(start, start + n));
  // The same on DeviceTensors: one native op each, the statistics exchanged on the device.
  const xd = bn.DeviceTensor.upload(x);
  const dyd = bn.DeviceTensor.upload({ data: dyAll.slice(start, start + n), shape: x.shape });
  const rd = await bn.fusedBatchNormAsync(xd, scale, offset, { epsilon: 1e-5, sync: comm });
  const gd = await bn.fusedBatchNormGradAsync(dyd, xd, scale, { mean: rd.savedMean, invStd: rd.savedInvStd }, { sync: comm });
  out.checks.batchMeanDevice = maxRel(rd.batchMean.download(), f.batchMean.data);
  out.checks.batchVarianceDevice = maxRel(rd.batchVariance.download(), f.batchVariance.data);
  out.checks.yDevice = maxRel(rd.y.download(), f.y.data.subarray(start, start + n));
  out.checks.dxDevice = maxRel(gd.dx.download(), g.dx.data.subarray(start, start + n));
  for (const t of [xd, dyd, ...Object.values(rd), ...Object.values(gd)]) t.dispose();
  // Device collectives (float32, stay on the GPU).
  const d = bn.DeviceTensor.upload(Float32Array.from({ length: 4 }, (_, i) => rank + i));
  const ds = await comm.allReduceDevice(d, 'sum');
  const dg = await comm.allGatherDevice(d);
  const want = Float32Array.from({ length: 4 }, (_, i) => (size * (size - 1)) / 2 + size * i);
  out.checks.allReduceDevice = maxRel(ds.download(), want);
  out.checks.allGatherDevice = maxRel(dg.download(), Float32Array.from({ length: 4 * size }, (_, k) => Math.floor(k / 4) + (k % 4)));
  for (const t of [d, ds, dg]) t.dispose();
  // The exchange of one training step: allGather of 2C + 1 (forward), allReduce of 2C + 1 (backward).
  for (const [name, ch] of [['W1', 64], ['W2', 256], ['W3', 64], ['W4', 4096], ['W5', 2048], ['W6', 1024]]) {
    const buf = new Float64Array(2 * ch + 1).fill(rank);
    for (let k = 0; k < 5; k++) { await comm.allGather(buf); await comm.allReduce(buf, 'sum'); }
    const times = { allGather: [], allReduce: [] };
    for (let k = 0; k < 50; k++) {
      let t0 = process.hrtime.bigint();
      await comm.allGather(buf);
      times.allGather.push(Number(process.hrtime.bigint() - t0) / 1e3);
      t0 = process.hrtime.bigint();
      await comm.allReduce(buf, 'sum');
      times.allReduce.push(Number(process.hrtime.bigint() - t0) / 1e3);
    }
    const med = (a) => a.sort((p, q) => p - q)[a.length >> 1];
    out.exchange.push({ name, C: ch, allGatherUs: med(times.allGather), allReduceUs: med(times.allReduce), forwardBytesPerRank: (2 * ch + 1) * 8 * size, backwardBytes: (2 * ch + 1) * 8 });
  }
  await comm.destroy();
  out.ok = Object.values(out.checks).every((v) => v <= 1e-5);
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exitCode = out.ok ? 0 : 1;
})().catch((e) => {
  process.stdout.write(JSON.stringify({ rank, size, error: `${e.name}: ${e.message}` }) + '\n');
  process.exitCode = 1;
});
