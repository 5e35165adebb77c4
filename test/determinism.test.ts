// Bit-identical results run after run and for any thread count: the kernels fix their
// chunking and merge order, the pool only decides who computes which chunk.
import { batchNormalization, batchNormalizationGrad, getNumThreads, moments, setNumThreads } from '../lib/index';
import { forEachBackend, product, randn, sameBits } from './helpers';

forEachBackend('determinism', (backend) => {
  const cases: [number[], number[]][] = [
    [[64, 16, 16, 64], [0, 1, 2]], // NHWC: few outputs, pieces in parallel
    [[16, 64, 28, 28], [0, 2, 3]], // NCHW: one output per task
    [[1 << 21], [0]],              // one long reduction
    [[2048, 700], [0]],            // wide columns, tiles
    [[3, 5, 7, 11, 13], [1, 3]],   // general pattern
  ];
  let saved = 1;
  before(() => { saved = getNumThreads(); });
  after(() => setNumThreads(saved));

  for (const [shape, axes] of cases) {
    it(`moments [${shape}] axes [${axes}]: same bits for 1, 2, 3, 8 threads and on repeat`, () => {
      const x = { data: randn(product(shape), 31, 5, 3), shape };
      setNumThreads(1);
      const ref = moments(x, axes, { backend });
      for (const t of [2, 3, 8, 2]) {
        setNumThreads(t);
        const r = moments(x, axes, { backend });
        sameBits(r.mean.data, ref.mean.data, `mean with ${t} threads`);
        sameBits(r.variance.data, ref.variance.data, `variance with ${t} threads`);
      }
    });
  }

  it('batchNormalization: same bits for 1 and 8 threads', () => {
    const shape = [32, 33, 34, 35];
    const x = { data: randn(product(shape), 2), shape };
    const m = randn(35, 3);
    const v = randn(35, 4).map((a) => a * a);
    setNumThreads(1);
    const a = batchNormalization(x, m, v, m, v, 1e-3, { backend });
    setNumThreads(8);
    const b = batchNormalization(x, m, v, m, v, 1e-3, { backend });
    sameBits(a.data, b.data, 'y');
  });
});

describe('determinism of the backward pass (cpu)', () => {
  let saved = 1;
  before(() => { saved = getNumThreads(); });
  after(() => setNumThreads(saved));
  // Shapes where the batch is cut into the most blocks that keep partial sums, channels-last
  // with several channel tiles, channels-first with runs, and a small one.
  const cases: [number[], 'NHWC' | 'NCHW'][] = [
    [[65536, 16], 'NHWC'], [[300, 2500], 'NHWC'], [[64, 8, 32, 33], 'NCHW'], [[5, 3, 7], 'NCHW'],
  ];
  for (const [shape, dataFormat] of cases) {
    it(`batchNormalizationGrad [${shape}] ${dataFormat}: same bits for 1, 2, 3, 8 threads`, () => {
      const C = dataFormat === 'NHWC' ? shape[shape.length - 1] : shape[1];
      const x = { data: randn(product(shape), 41), shape };
      const dy = { data: randn(product(shape), 42), shape };
      const st = { mean: randn(C, 43), invStd: randn(C, 44).map((v) => 1 + v * v) };
      setNumThreads(1);
      const ref = batchNormalizationGrad(dy, x, 1.5, st, { dataFormat });
      for (const t of [2, 3, 8]) {
        setNumThreads(t);
        const r = batchNormalizationGrad(dy, x, 1.5, st, { dataFormat });
        sameBits(r.dx.data, ref.dx.data, `dx with ${t} threads`);
        sameBits(r.dscale.data, ref.dscale.data, `dscale with ${t} threads`);
        sameBits(r.doffset.data, ref.doffset.data, `doffset with ${t} threads`);
      }
    });
  }
});
