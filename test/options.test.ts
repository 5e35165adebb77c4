// Strict options and errors that say how to fix the call: every options object is
// checked the same way (unknown keys, non-objects), with suggestions for near misses and
// for the TensorFlow / PyTorch spellings; arrays, TensorFlow.js tensors, moments without
// keepDims and misuse of the layer get messages that name the fix.
import * as assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import {
  BackendError, BatchNormalization, DeviceTensor, batchNormalization, batchNormalizationAsync, batchNormalizationGrad,
  explain, finalizeMoments, fusedBatchNorm, fusedBatchNormAsync, moments, momentsAsync, sufficientStatistics, tensor, type Tensor,
} from '../lib/index';
import { native } from '../lib/binding';
import { randn } from './helpers';

const x = tensor(randn(24, 3), [2, 4, 3]);
const stats = sufficientStatistics(x, [0, 1]);
const fused = fusedBatchNorm(x, 1, 0);
const saved = { mean: fused.savedMean, invStd: fused.savedInvStd };

type Call = (options: unknown) => unknown;
// Every public function that takes an options object, called with the given options.
const withOptions: [string, Call][] = [
  ['moments', (o) => moments(x, [0, 1], o as never)],
  ['momentsAsync', (o) => momentsAsync(x, [0, 1], o as never)],
  ['batchNormalization', (o) => batchNormalization(x, 0, 1, null, null, 1e-3, o as never)],
  ['batchNormalizationAsync', (o) => batchNormalizationAsync(x, 0, 1, null, null, 1e-3, o as never)],
  ['sufficientStatistics', (o) => sufficientStatistics(x, [0, 1], o as never)],
  ['finalizeMoments', (o) => finalizeMoments(stats, o as never)],
  ['fusedBatchNorm', (o) => fusedBatchNorm(x, 1, 0, o as never)],
  ['fusedBatchNormAsync', (o) => fusedBatchNormAsync(x, 1, 0, o as never)],
  ['batchNormalizationGrad', (o) => batchNormalizationGrad(x, x, 1, saved, o as never)],
  ['explain', (o) => explain('moments', o as never)],
  ['new BatchNormalization', (o) => new BatchNormalization(o as never)],
  ['BatchNormalization.forward', (o) => new BatchNormalization().forward(x, o as never)],
];

/** Runs a call that may be async; resolves to the error it raised (or fails). */
async function errorOf(f: () => unknown): Promise<Error> {
  try {
    await f();
  } catch (e) {
    return e as Error;
  }
  assert.fail('no error');
}

function expectError(e: Error, cls: ErrorConstructor | typeof BackendError, re: RegExp): void {
  assert.ok(e instanceof cls, `expected ${cls.name}, got ${e?.constructor?.name}: ${e?.message}`);
  assert.match(e.message, re);
}

describe('strict options', () => {
  for (const [fn, call] of withOptions) {
    const esc = fn.replace('.', '\\.');
    it(`${fn}: an unknown key, null, a number and an array are TypeErrors naming it`, async () => {
      expectError(await errorOf(() => call({ bogus: 1 })), TypeError, new RegExp(`^${esc}: unknown option options\\.bogus \\(options: `));
      for (const bad of [null, 3, 'x', [1]]) {
        expectError(await errorOf(() => call(bad)), TypeError, new RegExp(`^${esc}: options must be an object`));
      }
      await call(undefined); // still optional
    });
  }

  const suggestions: [string, () => unknown, RegExp][] = [
    ['keep_dims', () => moments(x, [0], { keep_dims: true } as never), /^moments: unknown option options\.keep_dims; did you mean 'keepDims'\?/],
    ['keepdims', () => sufficientStatistics(x, [0], { keepdims: true } as never), /did you mean 'keepDims'\?/],
    ['keepDim (near miss)', () => moments(x, [0], { keepDim: true } as never), /did you mean 'keepDims'\?/],
    ['corection (near miss)', () => moments(x, [0], { corection: 1 } as never), /did you mean 'correction'\?/],
    ['unbiased', () => finalizeMoments(stats, { unbiased: true } as never), /did you mean 'correction'\? \(unbiased: true is correction: 1\)/],
    ['is_training (fused)', () => fusedBatchNorm(x, 1, 0, { is_training: false } as never), /^fusedBatchNorm: unknown option options\.is_training; did you mean 'isTraining'\?/],
    ['training (fused)', () => fusedBatchNorm(x, 1, 0, { training: false } as never), /did you mean 'isTraining'\?/],
    ['is_training (layer)', () => new BatchNormalization().forward(x, { is_training: true } as never), /^BatchNormalization\.forward: unknown option options\.is_training; did you mean 'training'\?/],
    ['isTraining (layer)', () => new BatchNormalization().forward(x, { isTraining: true } as never), /did you mean 'training'\?/],
    ['trainng (layer)', () => new BatchNormalization().forward(x, { trainng: true } as never), /did you mean 'training'\?/],
    ['variance_epsilon (fused)', () => fusedBatchNorm(x, 1, 0, { variance_epsilon: 1e-3 } as never), /did you mean 'epsilon'\?/],
    ['variance_epsilon (batchNormalization)', () => batchNormalization(x, 0, 1, null, null, 1e-3, { variance_epsilon: 1e-3 } as never), /unknown option options\.variance_epsilon \(batchNormalization takes it as its 6th argument, varianceEpsilon\)/],
    ['data_format', () => fusedBatchNorm(x, 1, 0, { data_format: 'NCHW' } as never), /did you mean 'dataFormat'\?/],
    ['data_format (layer)', () => new BatchNormalization({ data_format: 'NCHW' } as never), /did you mean 'axis'\?/],
    ['exponential_avg_factor (fused)', () => fusedBatchNorm(x, 1, 0, { exponential_avg_factor: 0.1 } as never), /did you mean 'exponentialAvgFactor'\?/],
    ['exponential_avg_factor (layer)', () => new BatchNormalization({ exponential_avg_factor: 0.1 } as never), /did you mean 'momentum'\? \(in BatchNormalization it is momentum with momentumKind 'factor'\)/],
    ['momentum (fused: it is a factor there)', () => fusedBatchNorm(x, 1, 0, { momentum: 0.1 } as never), /did you mean 'exponentialAvgFactor'\? \(PyTorch's momentum is a factor/],
    ['decay (layer)', () => new BatchNormalization({ decay: 0.9 } as never), /did you mean 'momentum'\? \(TF's decay is momentum with momentumKind 'decay'\)/],
    ['zero_debias (layer)', () => new BatchNormalization({ zero_debias: true } as never), /did you mean 'zeroDebias'\?/],
    ['on_device (explain)', () => explain('moments', { on_device: true } as never), /^explain: unknown option options\.on_device; did you mean 'onDevice'\?/],
  ];
  for (const [name, call, re] of suggestions) {
    it(`suggests the name for ${name}`, () => assert.throws(call, (e: Error) => (expectError(e, TypeError, re), true)));
  }

  it('a wrong kind is a TypeError everywhere, a bad value a RangeError everywhere', async () => {
    for (const call of [() => moments(x, [0], { correction: '1' } as never), () => finalizeMoments(stats, { correction: '1' } as never)]) {
      expectError(await errorOf(call), TypeError, /options\.correction must be a finite number >= 0, got the string "1"$/);
    }
    for (const call of [() => moments(x, [0], { correction: -1 }), () => finalizeMoments(stats, { correction: -1 })]) {
      expectError(await errorOf(call), RangeError, /options\.correction must be a finite number >= 0, got -1$/);
    }
    for (const call of [() => moments(x, [0], { keepDims: 'yes' } as never), () => sufficientStatistics(x, [0], { keepDims: 'yes' } as never)]) {
      expectError(await errorOf(call), TypeError, /options\.keepDims must be a boolean, got the string "yes"$/);
    }
    expectError(await errorOf(() => fusedBatchNorm(x, 1, 0, { exponentialAvgFactor: '0.1' } as never)), TypeError, /exponentialAvgFactor must be a finite number in \[0, 1\]/);
    expectError(await errorOf(() => fusedBatchNorm(x, 1, 0, { exponentialAvgFactor: 2 })), RangeError, /exponentialAvgFactor must be a finite number in \[0, 1\], got 2$/);
    expectError(await errorOf(() => new BatchNormalization({ momentum: '0.9' } as never)), TypeError, /^new BatchNormalization: options\.momentum must be/);
    expectError(await errorOf(() => new BatchNormalization({ momentum: 2 })), RangeError, /^new BatchNormalization: options\.momentum must be a finite number in \[0, 1\], got 2$/);
    expectError(await errorOf(() => new BatchNormalization({ channels: 2.5 })), TypeError, /options\.channels must be an integer >= 1, got 2\.5$/);
    expectError(await errorOf(() => new BatchNormalization({ convention: 'toString' } as never)), TypeError, /options\.convention must be one of 'keras', 'tf-fused', 'pytorch', 'tf-moments-ema'/);
    expectError(await errorOf(() => sufficientStatistics(x, undefined, null as never)), TypeError, /^sufficientStatistics: options must be an object/);
  });
});

describe('errors that say how to fix the call', () => {
  it('forward(x, true) points at forward(x, {training: true})', () => {
    assert.throws(() => new BatchNormalization().forward(x, true as never),
      (e: Error) => (expectError(e, TypeError, /^BatchNormalization\.forward: options must be an object, got true; write forward\(x, \{training: true\}\)$/), true));
  });

  it('moments without keepDims, broadcast against NCHW x: mentions keepDims: true', () => {
    const nchw = tensor(randn(2 * 3 * 4 * 5, 5), [2, 3, 4, 5]);
    const m = moments(nchw, [0, 2, 3]); // shape [3]: broadcasts against the last axis (5), not the channels
    assert.throws(() => batchNormalization(nchw, m.mean, m.variance, null, null, 1e-3),
      (e: Error) => (expectError(e, RangeError, /^batchNormalization: shapes do not broadcast: mean has 3 .*; if mean comes from moments\(x, axes\), pass \{keepDims: true\}/), true));
    const k = moments(nchw, [0, 2, 3], { keepDims: true });
    assert.deepEqual(batchNormalization(nchw, k.mean, k.variance, null, null, 1e-3).shape, [2, 3, 4, 5]);
    // a parameter that is not x's shape with axes dropped gets no such hint
    assert.throws(() => batchNormalization(nchw, new Float32Array(7), 1, null, null, 1e-3), (e: Error) => !/keepDims/.test(e.message));
  });

  it('new DeviceTensor(...) is a TypeError that names upload / empty', () => {
    const Ctor = DeviceTensor as unknown as new (...a: unknown[]) => unknown;
    assert.throws(() => new Ctor(), (e: Error) => (expectError(e, TypeError, /^new DeviceTensor: DeviceTensors are made by DeviceTensor\.upload\(tensor\) or DeviceTensor\.empty\(shape\)/), true));
    assert.throws(() => new Ctor({}, [2]), TypeError);
  });

  it("explain('moments', {onDevice: true}) without CUDA is a BackendError with the reason", function () {
    if (native.backends().find((b) => b.name === 'cuda')?.available) this.skip();
    assert.throws(() => explain('moments', { onDevice: true }), (e: Error) => {
      expectError(e, BackendError, /^explain: inputs are DeviceTensors but backend 'cuda' is unavailable: /);
      assert.equal((e as BackendError).code, 'ERR_BACKEND_UNAVAILABLE');
      return true;
    });
    assert.throws(() => explain('momentz' as never), (e: Error) => (expectError(e, TypeError, /^explain: op must be one of 'moments'/), true));
    assert.throws(() => explain('moments', { axis: 1 }), (e: Error) => (expectError(e, TypeError, /^explain: options\.axis describes a call shape; give options\.shape with it$/), true));
  });

  it('errors inside the layer name the layer method', () => {
    const layer = new BatchNormalization();
    assert.throws(() => layer.forward([1, 2, 3] as never, { training: true }),
      (e: Error) => (expectError(e, TypeError, /^BatchNormalization\.forward: x must be a tensor .*got an Array; tensor\(data, shape\) converts it/), true));
    layer.forward(x, { training: true });
    assert.throws(() => layer.backward({ data: new Float32Array(12), shape: [4, 3] }),
      (e: Error) => (expectError(e, RangeError, /^BatchNormalization\.backward: dy has shape \[4, 3\] but x has \[2, 4, 3\]$/), true));
    assert.throws(() => layer.backward({ data: new Float64Array(24), shape: [2, 4, 3] } as never),
      (e: Error) => (expectError(e, TypeError, /^BatchNormalization\.backward: dy\.data must be a Float32Array, got a Float64Array; tensor\(data, shape\)/), true));
    assert.throws(() => layer.forward(x, { training: 1 } as never),
      (e: Error) => (expectError(e, TypeError, /^BatchNormalization\.forward: options\.training must be a boolean, got 1$/), true));
  });
});

describe('TensorFlow.js tensors', () => {
  before(async () => {
    const warn = console.warn;
    console.warn = () => undefined; // tfjs suggests tfjs-node on first use
    await tf.setBackend('cpu');
    await tf.ready();
    console.warn = warn;
  });

  it('float32 tfjs tensors are accepted directly and results are plain tensors', () => {
    const t = tf.tensor(Array.from(x.data), x.shape as number[], 'float32');
    const a = moments(t as unknown as Tensor, [0, 1]);
    const b = moments(x, [0, 1]);
    assert.ok(a.mean.data instanceof Float32Array && !('dataSync' in a.mean));
    assert.deepEqual(a.mean, b.mean);
    assert.deepEqual(a.variance, b.variance);
    const y = batchNormalization(t as unknown as Tensor, tf.tensor1d(Array.from(b.mean.data)) as never, b.variance, null, null, 1e-3);
    assert.deepEqual(y, batchNormalization(x, b.mean, b.variance, null, null, 1e-3));
    const layer = new BatchNormalization();
    assert.deepEqual(layer.forward(t as unknown as Tensor, { training: true }).shape, [2, 4, 3]);
    t.dispose();
  });

  it('anything with dataSync(), shape and dtype is read once with dataSync()', () => {
    let reads = 0;
    const duck = { shape: [2, 4, 3], dtype: 'float32', dataSync: () => { reads++; return x.data; } };
    assert.deepEqual(moments(duck as never, [0]).mean, moments(x, [0]).mean);
    assert.equal(reads, 1);
  });

  it('other dtypes and disposed tensors are TypeErrors that say what to do', () => {
    const i = tf.tensor([1, 2, 3, 4], [2, 2], 'int32');
    assert.throws(() => moments(i as never, [0]),
      (e: Error) => (expectError(e, TypeError, /^moments: x is a TensorFlow\.js tensor of dtype 'int32'; only float32 is accepted: pass tf\.cast\(x, 'float32'\)$/), true));
    i.dispose();
    const d = tf.tensor([1, 2], [2], 'float32');
    d.dispose();
    assert.throws(() => moments(d as never, [0]), (e: Error) => (expectError(e, TypeError, /^moments: x is a disposed TensorFlow\.js tensor$/), true));
    const wrong = { shape: [3], dtype: 'float32', dataSync: () => new Float32Array(2) };
    assert.throws(() => moments(wrong as never, [0]), (e: Error) => (expectError(e, RangeError, /^moments: x\.dataSync\(\) has 2 elements but x\.shape \[3\] needs 3$/), true));
  });
});
