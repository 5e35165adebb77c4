import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
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
  it('an unknown command exits 2 and suggests near misses', () => {
    const r = run('frobnicate');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /unknown command "frobnicate"/);
    assert.match(r.stderr, /Run 'batchnorm --help' for the commands/);
    const d = run('dmeo');
    assert.equal(d.status, 2);
    assert.match(d.stderr, /unknown command "dmeo"; did you mean 'demo'\?/);
  });
  it('--help and -h print the commands and exit 0; no arguments prints them to stderr and exits 2', () => {
    for (const flag of ['--help', '-h']) {
      const r = run(flag);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /^usage: batchnorm <command> \[options\]/);
      assert.match(r.stdout, /^ {2}demo {2}/m);
      assert.match(r.stdout, /^ {2}info {2}/m);
      assert.equal(r.stderr, '');
    }
    const none = run();
    assert.equal(none.status, 2);
    assert.match(none.stderr, /^usage: batchnorm/);
  });
  it('--version prints the package version', () => {
    const r = run('--version');
    assert.equal(r.status, 0);
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string };
    assert.equal(r.stdout.trim(), pkg.version);
  });
  it('help <command> and <command> --help / -h describe the command and exit 0', () => {
    for (const args of [['help', 'demo'], ['demo', '--help'], ['demo', '-h']]) {
      const r = run(...args);
      assert.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stdout, /^usage: batchnorm demo \[options\]/);
      assert.match(r.stdout, /--shape D,D,\.\.\. +shape of x/);
      assert.match(r.stdout, /--backend auto\|cpu\|cuda\|cudnn/);
    }
    const i = run('help', 'info');
    assert.equal(i.status, 0);
    assert.match(i.stdout, /^usage: batchnorm info/);
    const bad = run('help', 'nope');
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /unknown command "nope"/);
  });
  const rejected: [string[], RegExp][] = [
    [['demo', '--shape', 'abc'], /demo: --shape must be comma-separated integers like 128,32,32,64, got "abc"/],
    [['demo', '--shape', '16,0,8'], /demo: --shape needs at least 2 dimensions, each >= 1/],
    [['demo', '--shape', '16'], /demo: --shape needs at least 2 dimensions/],
    [['demo', '--shape'], /demo: Option '--shape <value>' argument missing/],
    [['demo', '--backend', 'tpu'], /demo: --backend must be one of auto, cpu, cuda, cudnn, got "tpu"/],
    [['demo', '--bogus'], /demo: Unknown option '--bogus'/],
    [['demo', 'extra'], /demo: Unexpected argument 'extra'/],
    [['info', '--shape', '1,2'], /info: Unknown option '--shape'/],
    [['--bogus'], /unknown option --bogus/],
  ];
  for (const [args, re] of rejected) {
    it(`rejects ${args.join(' ')} with exit 2 before doing anything`, () => {
      const r = run(...args);
      assert.equal(r.status, 2, r.stdout + r.stderr);
      assert.match(r.stderr, re);
      assert.equal(r.stdout, '', 'nothing ran');
    });
  }
});
