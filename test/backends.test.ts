import * as assert from 'node:assert/strict';
import { BackendError, backends, explain, getBackend, info, moments, setBackend, tensor } from '../lib/index';

describe('backends', () => {
  afterEach(() => setBackend('auto'));

  it('lists cpu, cuda and cudnn with availability and a reason when unavailable', () => {
    const list = backends();
    assert.deepEqual(list.map((b) => b.name), ['cpu', 'cuda', 'cudnn']);
    assert.equal(list[0].available, true);
    assert.equal(list[0].reason, null);
    for (const b of list.slice(1)) {
      if (!b.available) assert.ok(typeof b.reason === 'string' && b.reason.length > 10, `${b.name}: ${b.reason}`);
    }
  });

  it('explain says which backend auto picks and why', () => {
    const e = explain('moments');
    assert.ok(['cpu', 'cuda', 'cudnn'].includes(e.backend));
    assert.match(e.reason, /^auto: /);
    assert.deepEqual(explain('batchNormalization', { backend: 'cpu' }), { backend: 'cpu', reason: "requested 'cpu'" });
  });

  it('setBackend changes the default; a per-call backend overrides it', () => {
    setBackend('cpu');
    assert.equal(getBackend(), 'cpu');
    const r = moments(tensor([1, 2, 3]), [0], { backend: 'auto' });
    assert.equal(r.mean.data[0], 2);
  });

  it('an unavailable backend, set globally, fails every call with ERR_BACKEND_UNAVAILABLE and its reason', function () {
    const cuda = backends().find((b) => b.name === 'cuda')!;
    if (cuda.available) this.skip();
    setBackend('cuda');
    assert.throws(() => moments(tensor([1, 2, 3]), [0]), (e: unknown) =>
      e instanceof BackendError && e.code === 'ERR_BACKEND_UNAVAILABLE' && e.message.includes(cuda.reason!));
    assert.throws(() => explain('moments'), BackendError);
  });

  it('info reports version, threads, CPU features and CUDA state', () => {
    const i = info();
    assert.match(i.version, /^\d+\.\d+\.\d+/);
    assert.ok(i.threads >= 1);
    assert.ok(i.cpuFeatures.length > 0);
    assert.equal(typeof i.cuda.compiled, 'boolean');
    if (!i.cuda.available) assert.ok(i.cuda.reason);
  });
});
