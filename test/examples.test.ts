import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

describe('examples', () => {
  it('examples/tf-moments-ema.js trains the classic layer and shows train vs inference output', () => {
    const file = path.join(__dirname, '..', '..', 'examples', 'tf-moments-ema.js');
    const r = spawnSync(process.execPath, [file], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const m = /loss (\S+) → (\S+)/.exec(r.stdout);
    assert.ok(m && Number(m[2]) < Number(m[1]) / 10, r.stdout);
    assert.match(r.stdout, /inference-mode y/);
  });
});
