// One rank of scripts/nccl-check.sh: joins the NCCL group, runs synchronized batch norm
// forward + backward on its shard of a batch every rank generates identically — host
// tensors (the exchange in JS through the communicator's host collectives) and
// DeviceTensors (the collectives inside the native ops, on the GPU's stream), NHWC and
// NCHW — compares with the whole batch computed in this process without a communicator,
// checks the device collectives, and times the exchange for the channel counts of W1–W6.
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

// Synchronized forward + backward of this rank's shard against the whole batch computed
// in this process without a communicator (host data, default backend). device: the shard
// as DeviceTensors, so the op runs the NCCL collectives between its kernels.
async function syncCheck(out, comm, { device, format }) {
  const C = 32;
  const per = 8 * 8 * C;
  const batches = Array.from({ length: size }, (_, r) => 2 + 3 * r);  // uneven shards
  const total = batches.reduce((a, b) => a + b, 0);
  const start = batches.slice(0, rank).reduce((a, b) => a + b, 0) * per;
  const n = batches[rank] * per;
  const dims = (b) => (format === 'NCHW' ? [b, C, 8, 8] : [b, 8, 8, C]);
  const xAll = randn(total * per, 1, 100, 3);
  const dyAll = randn(total * per, 2);
  const scale = randn(C, 3, 1, 0.1);
  const offset = randn(C, 4);
  const opts = { epsilon: 1e-5, dataFormat: format };
  const whole = { data: xAll, shape: dims(total) };
  const f = bn.fusedBatchNorm(whole, scale, offset, opts);
  const g = bn.batchNormalizationGrad({ data: dyAll, shape: whole.shape }, whole, scale,
    { mean: f.savedMean, invStd: f.savedInvStd }, { dataFormat: format });
  const x = { data: xAll.slice(start, start + n), shape: dims(batches[rank]) };
  const dy = { data: dyAll.slice(start, start + n), shape: x.shape };
  const tag = `${device ? 'device' : 'host'} ${format}`;
  let r, gr;
  if (device) {
    const xd = bn.DeviceTensor.upload(x);
    const dyd = bn.DeviceTensor.upload(dy);
    const fr = await bn.fusedBatchNormAsync(xd, scale, offset, { ...opts, sync: comm });
    const gd = await bn.batchNormalizationGradAsync(dyd, xd, scale, { mean: fr.savedMean, invStd: fr.savedInvStd },
      { dataFormat: format, sync: comm });
    r = { y: fr.y.download(), batchMean: fr.batchMean.download(), batchVariance: fr.batchVariance.download() };
    gr = { dx: gd.dx.download(), dscale: gd.dscale.download(), doffset: gd.doffset.download() };
    for (const t of [xd, dyd, ...Object.values(fr), ...Object.values(gd)]) t.dispose();
  } else {
    const fr = await bn.fusedBatchNormAsync(x, scale, offset, { ...opts, sync: comm });
    const gh = await bn.batchNormalizationGradAsync(dy, x, scale, { mean: fr.savedMean, invStd: fr.savedInvStd },
      { dataFormat: format, sync: comm });
    r = { y: fr.y.data, batchMean: fr.batchMean.data, batchVariance: fr.batchVariance.data };
    gr = { dx: gh.dx.data, dscale: gh.dscale.data, doffset: gh.doffset.data };
  }
  out.checks[`${tag} batchMean`] = maxRel(r.batchMean, f.batchMean.data);
  out.checks[`${tag} batchVariance`] = maxRel(r.batchVariance, f.batchVariance.data);
  out.checks[`${tag} y`] = maxRel(r.y, f.y.data.subarray(start, start + n));
  out.checks[`${tag} dx`] = maxRel(gr.dx, g.dx.data.subarray(start, start + n));
  // dscale/doffset are the shard's own (summed over ranks by data-parallel training):
  // the all-reduced sum of them is the whole batch's.
  const ds = await comm.allReduce(Float64Array.from(gr.dscale), 'sum');
  const dof = await comm.allReduce(Float64Array.from(gr.doffset), 'sum');
  out.checks[`${tag} sum of dscale`] = maxRel(ds, g.dscale.data);
  out.checks[`${tag} sum of doffset`] = maxRel(dof, g.doffset.data);
}

// One device training step (forward + backward) with and without the communicator, on a
// [64, C] shard: small enough that the difference is the exchange (two collectives and
// the pack/merge kernels). Waits for the GPU once per `reps` steps (a download of C floats).
async function timeDeviceStep(comm, C, reps) {
  const x = bn.DeviceTensor.upload({ data: randn(64 * C, 5 + rank), shape: [64, C] });
  const dy = bn.DeviceTensor.upload({ data: randn(64 * C, 6 + rank), shape: [64, C] });
  const scale = randn(C, 7, 1, 0.1);
  const step = async (sync) => {
    const fr = await bn.fusedBatchNormAsync(x, scale, null, sync ? { sync } : {});
    const gd = await bn.batchNormalizationGradAsync(dy, x, scale, { mean: fr.savedMean, invStd: fr.savedInvStd }, sync ? { sync } : {});
    const keep = gd.doffset;
    for (const t of [...Object.values(fr), gd.dx, gd.dscale]) t.dispose();
    return keep;
  };
  const run = async (sync) => {
    (await step(sync)).dispose();  // warm-up
    let last = null;
    const t0 = process.hrtime.bigint();
    for (let k = 0; k < reps; k++) {
      last?.dispose();
      last = await step(sync);
    }
    await last.downloadAsync();
    last.dispose();
    return Number(process.hrtime.bigint() - t0) / 1e3 / reps;
  };
  const local = await run(null);
  const synced = await run(comm);
  for (const t of [x, dy]) t.dispose();
  return { localStepUs: local, syncStepUs: synced, exchangeUs: synced - local };
}

(async () => {
  const out = { rank, size, checks: {}, exchange: [] };
  const comm = await bn.NcclCommunicator.create(await readId(), size, rank, { timeoutMs: 60000 });
  for (const format of ['NHWC', 'NCHW']) {
    await syncCheck(out, comm, { device: false, format });
    await syncCheck(out, comm, { device: true, format });
  }
  // Device collectives (float32, stay on the GPU).
  const d = bn.DeviceTensor.upload(Float32Array.from({ length: 4 }, (_, i) => rank + i));
  const ds = await comm.allReduceDevice(d, 'sum');
  const dg = await comm.allGatherDevice(d);
  const want = Float32Array.from({ length: 4 }, (_, i) => (size * (size - 1)) / 2 + size * i);
  out.checks.allReduceDevice = maxRel(ds.download(), want);
  out.checks.allGatherDevice = maxRel(dg.download(), Float32Array.from({ length: 4 * size }, (_, k) => Math.floor(k / 4) + (k % 4)));
  for (const t of [d, ds, dg]) t.dispose();
  // The exchange of one training step for the channel counts of W1–W6: the host
  // collectives (allGather of 2C + 1 float64 for the forward, allReduce of 2C + 1 for the
  // backward, each staged through the device and waited for), and a whole device step
  // with and without the communicator.
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
    out.exchange.push({
      name, C: ch, hostAllGatherUs: med(times.allGather), hostAllReduceUs: med(times.allReduce),
      device: await timeDeviceStep(comm, ch, 50),
      forwardBytesReceivedPerRank: (2 * ch + 1) * 8 * size, backwardBytes: (2 * ch + 1) * 8,
    });
  }
  await comm.destroy();
  out.ok = Object.values(out.checks).every((v) => v <= 1e-5);
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exitCode = out.ok ? 0 : 1;
})().catch((e) => {
  process.stdout.write(JSON.stringify({ rank, size, error: `${e.name}: ${e.message}` }) + '\n');
  process.exitCode = 1;
});
