// Loading the addon: actionable errors, and the install-time prebuild check.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.join(__dirname, '..', '..');
const run = (env: Record<string, string>, code: string) =>
  spawnSync(process.execPath, ['-e', code], { encoding: 'utf8', env: { ...process.env, ...env }, cwd: ROOT });

describe('loading', () => {
  it('a missing binary gives an actionable error: what was tried, the platform, possible solutions', () => {
    const r = run({ BATCHNORM_ADDON_PATH: '/nonexistent/batchnorm.node' }, "require('./dist/lib/index.js')");
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /batchnorm: could not load the native addon for linux-x64, Node v\d+/);
    assert.match(r.stderr, /Tried: \/nonexistent\/batchnorm\.node \(BATCHNORM_ADDON_PATH\)/);
    assert.match(r.stderr, /Possible solutions:/);
    assert.match(r.stderr, /BATCHNORM_BUILD_FROM_SOURCE=1 npm rebuild batchnorm/);
  });

  it('a file that is not a shared library says so and how to rebuild', () => {
    const bad = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'bn-')), 'batchnorm.node');
    fs.writeFileSync(bad, 'not an ELF file');
    const r = run({ BATCHNORM_ADDON_PATH: bad }, "require('./dist/lib/index.js')");
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /Reason: .*(invalid ELF header|file too short)/);
    assert.match(r.stderr, /Build from source/);
  });

  it('the install-time check accepts a loadable addon and honours BATCHNORM_BUILD_FROM_SOURCE', () => {
    const script = path.join(ROOT, 'scripts', 'prebuild-test.js');
    const ok = spawnSync(process.execPath, [script], { encoding: 'utf8', cwd: ROOT });
    assert.equal(ok.status, 0, ok.stderr);
    const forced = spawnSync(process.execPath, [script], { encoding: 'utf8', cwd: ROOT, env: { ...process.env, BATCHNORM_BUILD_FROM_SOURCE: '1' } });
    assert.equal(forced.status, 1);
    assert.match(forced.stderr, /building from source/);
  });
});
