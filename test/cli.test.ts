import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const CLI = path.join(__dirname, '..', 'lib', 'cli.js');
const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

describe('CLI', () => {
  it('demo runs the classic example and checks its output', () => {
    const r = run('demo', '--shape', '16,8,8,32');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /backend: (cpu|cuda|cudnn)/);
    assert.match(r.stdout, /normalized mean\[0\.\.4\] = (-?0\.0000\d\d, ){4}-?0\.0000\d\d/);
    const diff = Number(/max \|y − \(x − mean\)\/sqrt\(var \+ 0\.001\)\| = (\S+)/.exec(r.stdout)![1]);
    assert.ok(diff < 1e-5, `max diff ${diff}`);
  });
  it('info lists the backends', () => {
    const r = run('info');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /cpu\s+available/);
    assert.match(r.stdout, /cuda\s+(available|unavailable: .+)/);
  });
  it('an unknown command exits 2 with usage', () => {
    const r = run('frobnicate');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /unknown command "frobnicate"/);
  });
});
