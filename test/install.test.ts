// Installing and releasing without surprises: the install-time prebuild check says one
// plain line when it falls back to the source build (the normal path in a clone), and the
// release command refuses to pack without a prebuilt binary unless told to.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const root = path.join(__dirname, '..', '..');

/** A scratch package with some of the repository's files (no build/, no prebuilds/). */
function scratch(files: string[], pkg: object): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'batchnorm-install-'));
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify(pkg));
  for (const f of files) {
    fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    fs.copyFileSync(path.join(root, f), path.join(dir, f));
  }
  return dir;
}

describe('install and release', () => {
  const dirs: string[] = [];
  after(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

  it('with no prebuilt binary, the install check says one plain line (no stack trace) and exits 1', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as object;
    const dir = scratch(['scripts/prebuild-test.js'], pkg);
    dirs.push(dir);
    fs.symlinkSync(path.join(root, 'node_modules'), path.join(dir, 'node_modules'));
    // what the install script's first half runs: node-gyp-build-test in the package root
    const r = spawnSync(process.execPath, [path.join(root, 'node_modules', 'node-gyp-build', 'build-test.js')],
      { cwd: dir, encoding: 'utf8', env: { ...process.env, BATCHNORM_BUILD_FROM_SOURCE: '' } });
    assert.equal(r.status, 1, r.stderr);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^batchnorm: no prebuilt binary for linux-x64 \(Node v[\d.]+\); building from source with cmake-js\n$/);
  });

  it('a forced source build says so in one line too', () => {
    const r = spawnSync(process.execPath, [path.join(root, 'scripts', 'prebuild-test.js')],
      { encoding: 'utf8', env: { ...process.env, BATCHNORM_BUILD_FROM_SOURCE: '1' } });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^batchnorm: source build requested \(BATCHNORM_BUILD_FROM_SOURCE \/ --build-from-source\); building from source with cmake-js\n$/);
  });

  it('the release command refuses to pack without a prebuild unless --allow-no-prebuild', function () {
    this.timeout(120000);
    const dir = scratch(['scripts/release.sh', 'scripts/prepack.js'],
      { name: 'release-check', version: '1.0.0', scripts: { prepack: 'node scripts/prepack.js' }, files: ['scripts/'] });
    dirs.push(dir);
    const out = path.join(dir, 'out');
    fs.mkdirSync(out);
    const refused = spawnSync('bash', [path.join(dir, 'scripts', 'release.sh'), '--no-build', '--pack-destination', out], { encoding: 'utf8' });
    assert.equal(refused.status, 1, refused.stdout + refused.stderr);
    assert.match(refused.stderr, /no prebuilt binary in prebuilds\/linux-x64\/: refusing to pack/);
    assert.match(refused.stderr, /--allow-no-prebuild/);
    assert.deepEqual(fs.readdirSync(out), [], 'nothing packed');

    const allowed = spawnSync('bash', [path.join(dir, 'scripts', 'release.sh'), '--no-build', '--allow-no-prebuild', '--pack-destination', out],
      { encoding: 'utf8', env: { ...process.env, npm_config_cache: path.join(dir, 'npm-cache') } });
    assert.equal(allowed.status, 0, allowed.stdout + allowed.stderr);
    assert.match(allowed.stderr, /WARNING: no prebuilt binary/);
    assert.match(allowed.stderr, /batchnorm: WARNING: packing without a prebuilt binary/); // prepack says it too
    assert.deepEqual(fs.readdirSync(out), ['release-check-1.0.0.tgz']);
    assert.match(allowed.stdout, /tarball: .*release-check-1\.0\.0\.tgz/);

    const bad = spawnSync('bash', [path.join(dir, 'scripts', 'release.sh'), '--frobnicate'], { encoding: 'utf8' });
    assert.equal(bad.status, 2);
  });
});
