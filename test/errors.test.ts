// Every bad input: the right error class, a message naming function, parameter,
// expectation and what arrived, a stack through the caller, and no damage to inputs.
import * as assert from 'node:assert/strict';
import {
  BackendError, DeviceTensor, batchNormalization, batchNormalizationAsync, moments, momentsAsync, setBackend, setNumThreads, tensor,
} from '../lib/index';
import { native } from '../lib/binding';
import type { BatchNormalizationCall, MomentsCall } from '../binding';

const x = tensor(new Float32Array([1, 2, 3, 4, 5, 6, 7, 8]), [2, 2, 2]);
const c2 = new Float32Array([0, 0]);
const v2 = new Float32Array([1, 1]);

type Call = () => unknown;
const cases: [string, Call, ErrorConstructor | typeof BackendError, RegExp][] = [
  // x itself
  ['x not a tensor', () => moments(new Float32Array(4) as never, [0]), TypeError, /^moments: x must be a tensor \{data: Float32Array, shape: number\[\]\}, got a Float32Array; tensor\(data, shape\) wraps it$/],
  ['x.data a Float64Array', () => moments({ data: new Float64Array(4), shape: [4] } as never, [0]), TypeError, /^moments: x\.data must be a Float32Array, got a Float64Array; tensor\(data, shape\) converts it to float32$/],
  ['x.data a plain array', () => moments({ data: [1, 2], shape: [2] } as never, [0]), TypeError, /^moments: x\.data must be a Float32Array, got an Array; tensor\(data, shape\) converts it to float32$/],
  ['shape not an array', () => moments({ data: new Float32Array(4), shape: 4 } as never, [0]), TypeError, /^moments: x\.shape must be an array of non-negative integers, got 4$/],
  ['shape with a negative', () => moments({ data: new Float32Array(4), shape: [-4] }, [0]), TypeError, /^moments: x\.shape\[0\] must be a non-negative integer, got -4$/],
  ['shape with a fraction', () => moments({ data: new Float32Array(4), shape: [2, 1.5] }, [0]), TypeError, /^moments: x\.shape\[1\] must be a non-negative integer, got 1\.5$/],
  ['shape with a string', () => moments({ data: new Float32Array(4), shape: ['4'] } as never, [0]), TypeError, /^moments: x\.shape\[0\] must be a non-negative integer, got the string "4"$/],
  ['length ≠ product(shape)', () => moments({ data: new Float32Array(5), shape: [2, 2] }, [0]), RangeError, /^moments: x\.data has 5 elements but x\.shape \[2, 2\] needs 4$/],
  ['rank above 64', () => moments({ data: new Float32Array(1), shape: new Array(65).fill(1) }, [0]), RangeError, /^moments: x\.shape has rank 65; at most 64 dimensions are supported$/],
  ['strided ndarray view', () => moments({ data: new Float32Array(4), shape: [2, 2], stride: [1, 2], offset: 0 } as never, [0]), RangeError, /^moments: x has strides \[1, 2\], not row-major/],
  // axes
  ['axis out of range', () => moments(x, [0, 3]), RangeError, /^moments: axes\[1\] = 3 is out of range for a tensor of rank 3$/],
  ['negative axis out of range', () => moments(x, [-4]), RangeError, /^moments: axes\[0\] = -4 is out of range for a tensor of rank 3$/],
  ['duplicate axis', () => moments(x, [1, -2]), RangeError, /^moments: axes\[1\] = -2 repeats axis 1$/],
  ['non-integer axis', () => moments(x, [0.5]), TypeError, /^moments: axes\[0\] must be an integer, got 0\.5$/],
  ['axes a string', () => moments(x, '0' as never), TypeError, /^moments: axes must be an integer or an array of integers, got the string "0"$/],
  // options
  ['keepDims not boolean', () => moments(x, [0], { keepDims: 1 as never }), TypeError, /^moments: options\.keepDims must be a boolean, got 1$/],
  ['correction negative', () => moments(x, [0], { correction: -1 }), RangeError, /^moments: options\.correction must be a finite number >= 0, got -1$/],
  ['out wrong length', () => moments(x, [0], { out: { mean: new Float32Array(3), variance: new Float32Array(4) } }), RangeError, /^moments: options\.out\.mean has 3 elements but the result has 4$/],
  ['out wrong type', () => moments(x, [0], { out: { mean: new Float64Array(4), variance: new Float32Array(4) } as never }), TypeError, /^moments: options\.out\.mean must be a Float32Array, got a Float64Array$/],
  ['out overlapping x', () => moments(x, [0], { out: { mean: x.data.subarray(0, 4), variance: new Float32Array(4) } }), RangeError, /^moments: options\.out must not overlap x\.data$/],
  ['out mean = variance', () => { const a = new Float32Array(4); return moments(x, [0], { out: { mean: a, variance: a } }); }, RangeError, /^moments: options\.out\.mean and options\.out\.variance overlap$/],
  ['unknown backend', () => moments(x, [0], { backend: 'tpu' as never }), TypeError, /^moments: backend must be one of 'auto', 'cpu', 'cuda', 'cudnn', got the string "tpu"$/],
  // batchNormalization
  ['bn: mean a plain array', () => batchNormalization(x, [0, 0] as never, v2, null, null, 1e-3), TypeError, /^batchNormalization: mean must be a tensor, a Float32Array or a number, got an Array; tensor\(data, shape\) converts it to float32$/],
  ['bn: scale a string', () => batchNormalization(x, c2, v2, null, 'a' as never, 1e-3), TypeError, /^batchNormalization: scale must be a tensor, a Float32Array or a number, got the string "a"$/],
  ['bn: shapes do not broadcast', () => batchNormalization(x, new Float32Array(3), v2, null, null, 1e-3), RangeError, /^batchNormalization: shapes do not broadcast: mean has 3 where another operand has 2 \(x \[2, 2, 2\], mean \[3\], variance \[2\]\)$/],
  ['bn: ε negative', () => batchNormalization(x, c2, v2, null, null, -1e-3), RangeError, /^batchNormalization: varianceEpsilon must be a finite number >= 0, got -0\.001$/],
  ['bn: ε NaN', () => batchNormalization(x, c2, v2, null, null, NaN), RangeError, /^batchNormalization: varianceEpsilon must be a finite number >= 0, got NaN$/],
  ['bn: ε Infinity', () => batchNormalization(x, c2, v2, null, null, Infinity), RangeError, /^batchNormalization: varianceEpsilon must be a finite number >= 0, got Infinity$/],
  ['bn: ε a string', () => batchNormalization(x, c2, v2, null, null, '1' as never), TypeError, /^batchNormalization: varianceEpsilon must be a number, got the string "1"$/],
  ['bn: out wrong length', () => batchNormalization(x, c2, v2, null, null, 1e-3, { out: new Float32Array(7) }), RangeError, /^batchNormalization: options\.out has 7 elements but the result has 8$/],
  ['bn: out partially overlapping x', () => { const buf = new Float32Array(12); const xx = { data: buf.subarray(0, 8), shape: [2, 2, 2] }; return batchNormalization(xx, c2, v2, null, null, 1e-3, { out: buf.subarray(2, 10) }); }, RangeError, /^batchNormalization: options\.out overlaps x\.data; only exact in-place use/],
  ['bn: out aliasing a parameter', () => { const y = new Float32Array(8); return batchNormalization(x, y.subarray(0, 2), v2, null, null, 1e-3, { out: y }); }, RangeError, /^batchNormalization: options\.out must not overlap mean$/],
  ['bn: cuda unavailable', () => batchNormalization(x, c2, v2, null, null, 1e-3, { backend: 'cuda' }), BackendError, /^batchNormalization: backend 'cuda' is unavailable: /],
  // misc
  ['setBackend unknown', () => setBackend('gpu' as never), TypeError, /^setBackend: backend must be one of/],
  ['setNumThreads 0', () => setNumThreads(0), RangeError, /^setNumThreads: n must be an integer in \[1, 256\], got 0$/],
  ['setNumThreads a string', () => setNumThreads('4' as never), TypeError, /^setNumThreads: n must be an integer in \[1, 256\], got the string "4"$/],
];

describe('errors', () => {
  for (const [name, call, cls, re] of cases) {
    it(`${name}: ${cls.name}`, function () {
      if (name === 'bn: cuda unavailable' && native.backends().find((b) => b.name === 'cuda')?.available) this.skip();
      const before = x.data.slice();
      assert.throws(call, (e: unknown) => {
        assert.ok(e instanceof cls, `expected ${cls.name}, got ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
        assert.match((e as Error).message, re);
        // the stack runs through this test file (the caller)
        assert.match((e as Error).stack ?? '', /errors\.test\.js/);
        return true;
      });
      assert.deepEqual(x.data, before, 'input modified');
    });
  }

  it('BackendError carries a code and is an Error', () => {
    const cuda = native.backends().find((b) => b.name === 'cuda')!;
    if (cuda.available) return;
    try {
      moments(x, [0], { backend: 'cuda' });
      assert.fail('no error');
    } catch (e) {
      assert.ok(e instanceof BackendError && e instanceof Error);
      assert.equal((e as BackendError).code, 'ERR_BACKEND_UNAVAILABLE');
      assert.equal((e as BackendError).name, 'BackendError');
      assert.match((e as Error).message, /^moments: backend 'cuda' is unavailable: /);
    }
  });

  it('async variants reject (not throw) with the same classes and the caller in the stack', async () => {
    await assert.rejects(momentsAsync(x, [7]), (e: Error) => e instanceof RangeError && /^momentsAsync: axes\[0\] = 7 is out of range/.test(e.message) && /errors\.test\.js/.test(e.stack!));
    await assert.rejects(batchNormalizationAsync(x, c2, v2, null, null, -1), (e: Error) => e instanceof RangeError && /^batchNormalizationAsync: varianceEpsilon/.test(e.message));
  });

  describe('the binding re-checks what the kernels rely on (callers that bypass lib/)', () => {
    const f = new Float32Array(4);
    const m = (o: Partial<MomentsCall> & Record<string, unknown> = {}) =>
      () => native.moments({ x: f, shape: [4], axes: [0], correction: 0, backend: 0, mean: new Float32Array(1), variance: new Float32Array(1), ...o } as MomentsCall);
    const t = (data: Float32Array, shape = [data.length]) => ({ data, shape });
    const bn = (o: Partial<BatchNormalizationCall> & Record<string, unknown> = {}) =>
      () => native.batchNormalization({ x: t(f), mean: t(f), variance: t(f), offset: null, scale: null, epsilon: 0, backend: 0, y: t(new Float32Array(4)), ...o } as BatchNormalizationCall);
    const raw: [string, Call, RegExp][] = [
      ['x not a Float32Array', m({ x: new Float64Array(4) as never }), /moments: options\.x must be a Float32Array/],
      ['length mismatch', m({ shape: [5] }), /moments: options\.x has 4 elements but needs 5/],
      ['axis out of range', m({ axes: [1] }), /moments: options\.axes\[0\] must be a distinct axis in \[0, 1\)/],
      ['duplicate axis', m({ shape: [2, 2], axes: [0, 0] }), /moments: options\.axes\[1\] must be a distinct axis/],
      ['output too short', m({ axes: [], mean: new Float32Array(1), variance: f }), /moments: options\.mean has 1 elements but needs 4/],
      ['rank too high', m({ shape: new Array(65).fill(1).concat([4]) }), /rank/],
      ['bn operand does not broadcast', bn({ mean: t(f.subarray(0, 3)) }), /batchNormalization: options\.mean does not broadcast/],
      ['bn operand length and shape disagree', bn({ scale: t(f, [3]) }), /batchNormalization: options\.scale has 4 elements but its shape needs 3/],
      ['bn out too short', bn({ y: t(new Float32Array(3), [4]) }), /batchNormalization: options\.y has 3 elements but its shape needs 4/],
      ['bn negative epsilon', bn({ epsilon: -1 }), /batchNormalization: options\.epsilon must be >= 0/],
      ['bad backend code', m({ backend: 7 as never }), /moments: options\.backend must be -1/],
    ];
    for (const [name, call, re] of raw) {
      it(name, () => assert.throws(call, (e: Error) => (e instanceof TypeError || e instanceof RangeError) && re.test(e.message)));
    }
  });

  describe('moments and batchNormalization take one named options object (raw binding)', () => {
    const momentsCall = (): Record<string, unknown> => ({
      x: new Float32Array([1, 2, 3, 4, 5, 6]), shape: [2, 3], axes: [0], correction: 0, backend: 0,
      mean: new Float32Array(3), variance: new Float32Array(3),
    });
    const operand = (data: Float32Array, shape = [data.length]) => ({ data, shape });
    const bnCall = (): Record<string, unknown> => ({
      x: operand(new Float32Array([1, 2, 3, 4]), [2, 2]), mean: operand(new Float32Array([1, 2])),
      variance: operand(new Float32Array([4, 4])), offset: operand(new Float32Array([10]), []), scale: null,
      epsilon: 0, backend: 0, y: operand(new Float32Array(4), [2, 2]),
    });
    const edited = (base: () => Record<string, unknown>, edit: (o: Record<string, unknown>) => void) => {
      const o = base();
      edit(o);
      return o;
    };
    const throwsType = (call: () => unknown, re: RegExp, what: string) =>
      assert.throws(call, (e: Error) => e instanceof TypeError && re.test(e.message), what);

    it('runs with every key given and reports the backend', () => {
      const o = { ...momentsCall(), mean64: new Float64Array(3), m2: new Float64Array(3) } as unknown as MomentsCall;
      assert.equal(native.moments(o), 'cpu');
      assert.deepEqual(Array.from(o.mean as Float32Array), [2.5, 3.5, 4.5]);
      assert.deepEqual(Array.from(o.variance as Float32Array), [2.25, 2.25, 2.25]);
      assert.deepEqual(Array.from(o.m2!), [4.5, 4.5, 4.5]);
      const b = bnCall() as unknown as BatchNormalizationCall;
      assert.equal(native.batchNormalization(b), 'cpu');
      assert.deepEqual(Array.from(b.y.data as Float32Array), [10, 10, 11, 11]);
      // Only own keys count: an enumerable key inherited from a prototype is no option.
      assert.equal(native.moments(Object.assign(Object.create({ inherited: 1 }), momentsCall())), 'cpu');
    });

    it('moments: a missing key, a key of the wrong kind, an unknown key', () => {
      for (const key of ['x', 'shape', 'axes', 'correction', 'backend', 'mean', 'variance']) {
        throwsType(() => native.moments(edited(momentsCall, (o) => { delete o[key]; }) as never), new RegExp(`^moments: options\\.${key}\\b`), `missing ${key}`);
      }
      const cases: [string, unknown, RegExp][] = [
        ['x', [1, 2, 3, 4, 5, 6], /^moments: options\.x must be a Float32Array/],
        ['shape', '2,3', /^moments: options\.shape must be an array of integers/],
        ['axes', 0, /^moments: options\.axes must be an array of integers/],
        ['correction', '1', /^moments: options\.correction must be a number/],
        ['backend', 'cpu', /^moments: options\.backend must be -1/],
        ['variance', new Float64Array(3), /^moments: options\.variance must be a Float32Array/],
        ['mean64', new Float32Array(3), /^moments: options\.mean64 must be a Float64Array/],
        ['keepDims', true, /^moments: options\.keepDims is not a known key/],
      ];
      for (const [key, value, re] of cases) throwsType(() => native.moments({ ...momentsCall(), [key]: value } as never), re, key);
      throwsType(() => native.moments({ ...momentsCall(), mean64: new Float64Array(3) } as never), /^moments: options\.m2 must be a Float64Array/, 'mean64 alone');
      throwsType(() => native.moments({ ...momentsCall(), m2: new Float64Array(3) } as never), /^moments: options\.m2 needs options\.mean64/, 'm2 alone');
      assert.throws(() => native.moments({ ...momentsCall(), mean64: new Float64Array(2), m2: new Float64Array(3) } as never),
        { name: 'RangeError', message: /^moments: options\.mean64 must have 3 elements/ });
      throwsType(() => (native.moments as unknown as (...a: unknown[]) => unknown)(new Float32Array(4), [4], [0]), /^moments: expected one options object/, 'positional');
      throwsType(() => native.momentsAsync(edited(momentsCall, (o) => { delete o.axes; }) as never), /^moments: options\.axes/, 'async throws before queuing');
    });

    it('batchNormalization: a missing key, a key of the wrong kind, an unknown key', () => {
      for (const key of ['x', 'mean', 'variance', 'epsilon', 'backend', 'y']) {
        throwsType(() => native.batchNormalization(edited(bnCall, (o) => { delete o[key]; }) as never),
          new RegExp(`^batchNormalization: options\\.${key}\\b`), `missing ${key}`);
      }
      const f = new Float32Array(2);
      const cases: [string, unknown, RegExp][] = [
        ['mean', f, /^batchNormalization: options\.mean must be an object \{data, shape\}/],
        ['variance', { data: f }, /^batchNormalization: options\.variance\.shape must be an array of integers/],
        ['scale', { shape: [2] }, /^batchNormalization: options\.scale\.data must be a Float32Array/],
        ['x', { data: [1, 2, 3, 4], shape: [2, 2] }, /^batchNormalization: options\.x\.data must be a Float32Array/],
        ['epsilon', '0', /^batchNormalization: options\.epsilon must be a number/],
        ['varianceEpsilon', 1e-3, /^batchNormalization: options\.varianceEpsilon is not a known key/],
        ['ofset', null, /^batchNormalization: options\.ofset is not a known key/],
      ];
      for (const [key, value, re] of cases) throwsType(() => native.batchNormalization({ ...bnCall(), [key]: value } as never), re, key);
      throwsType(() => (native.batchNormalization as unknown as (...a: unknown[]) => unknown)(bnCall(), 1), /^batchNormalization: expected one options object/, 'two arguments');
      throwsType(() => native.batchNormalizationAsync({ ...bnCall(), scale: 1 } as never), /^batchNormalization: options\.scale must be an object/, 'async throws before queuing');
    });

    it('device data: y lives where x does; mean64 and m2 need host data', () => {
      // DeviceTensors of 0 elements exist without a GPU.
      const empty = DeviceTensor.upload({ data: new Float32Array(0), shape: [0, 0] });
      const h = empty.handle('test');
      try {
        throwsType(() => native.batchNormalization({ ...bnCall(), x: { data: h, shape: [0, 2] }, y: operand(new Float32Array(0), [0, 2]) } as never),
          /^batchNormalization: options\.y\.data must be a DeviceTensor handle exactly when options\.x\.data is one/, 'host y');
        throwsType(() => native.moments({ ...momentsCall(), x: h, shape: [0, 0], mean: new Float32Array(0), variance: new Float32Array(0) } as never),
          /^moments: options\.mean must be a DeviceTensor handle, as x is/, 'host mean');
        throwsType(() => native.moments({
          ...momentsCall(), x: h, shape: [0, 0], mean: h, variance: h, mean64: new Float64Array(0), m2: new Float64Array(0),
        } as never), /^moments: options\.mean64 and options\.m2 need host x/, 'mean64 with device x');
      } finally {
        empty.dispose();
      }
    });
  });
});
