// TensorFlow.js as an independent implementation of the same semantics, on random inputs.
// tf.batchNorm only broadcasts its parameters along the last axis, so batchNormalization
// is compared with the composition of tfjs elementwise ops (which broadcast like numpy).
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { batchNormalization, moments } from '../lib/index';
import { assertClose, forEachBackend, product, randn, randomShape, rng } from './helpers';

before(async () => {
  const warn = console.warn;
  console.warn = () => undefined; // tfjs suggests tfjs-node on first use
  await tf.setBackend('cpu');
  await tf.ready();
  console.warn = warn;
});

forEachBackend('TensorFlow.js oracle', (backend) => {
  it('moments on random shapes and axes (keepDims both ways)', () => {
    const u = rng(77);
    for (let k = 0; k < 40; k++) {
      const rank = 1 + Math.floor(u() * 5);
      const shape = randomShape(u, rank, rank > 3 ? 8 : 30);
      let axes = shape.map((_, i) => i).filter(() => u() < 0.5);
      if (axes.length === 0) axes = [rank - 1];
      const keepDims = u() < 0.5;
      const data = randn(product(shape), k, u() * 4 - 2, 0.5 + u());
      const ours = moments({ data, shape }, axes, { keepDims, backend });
      const theirs = tf.tidy(() => {
        const m = tf.moments(tf.tensor(data, shape), axes, keepDims);
        return { mean: m.mean.dataSync().slice(), variance: m.variance.dataSync().slice(), shape: m.mean.shape };
      });
      if (JSON.stringify(ours.mean.shape) !== JSON.stringify(theirs.shape)) {
        throw new Error(`case ${k}: shape ${JSON.stringify(ours.mean.shape)} vs tfjs ${JSON.stringify(theirs.shape)}`);
      }
      // tfjs accumulates in float32: compare at float32-accumulation tolerance
      assertClose(ours.mean.data, theirs.mean, (_i, r) => 1e-5 * (Math.abs(r) + 1), `case ${k} mean`);
      assertClose(ours.variance.data, theirs.variance, (_i, r) => 1e-4 * Math.abs(r) + 1e-6, `case ${k} variance`);
    }
  });

  it('batchNormalization with numpy-broadcast parameters (NHWC, NCHW, mixed)', () => {
    const u = rng(78);
    for (let k = 0; k < 30; k++) {
      const rank = 2 + Math.floor(u() * 3);
      const shape = randomShape(u, rank, 9);
      const pshape = () => shape.map((d) => (u() < 0.5 ? 1 : d));
      const [ms, vs, os, ss] = [pshape(), pshape(), pshape(), pshape()];
      const x = randn(product(shape), k, 3, 2);
      const m = randn(product(ms), k + 1, 3);
      const v = randn(product(vs), k + 2).map((a) => a * a + 0.05);
      const o = randn(product(os), k + 3);
      const s = randn(product(ss), k + 4);
      const eps = 1e-3;
      const ours = batchNormalization({ data: x, shape }, { data: m, shape: ms }, { data: v, shape: vs },
        { data: o, shape: os }, { data: s, shape: ss }, eps, { backend });
      const theirs = tf.tidy(() => {
        const inv = tf.div(tf.tensor(s, ss), tf.sqrt(tf.add(tf.tensor(v, vs), eps)));
        return tf.add(tf.mul(tf.sub(tf.tensor(x, shape), tf.tensor(m, ms)), inv), tf.tensor(o, os)).dataSync().slice();
      });
      assertClose(ours.data, theirs, (_i, r) => 1e-5 * (Math.abs(r) + 1), `case ${k} [${shape}]`);
    }
  });
});
