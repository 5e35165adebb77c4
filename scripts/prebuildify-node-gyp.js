#!/usr/bin/env node
// prebuildify 6 drives node-gyp only; this stand-in takes its place (`--node-gyp`) and
// builds with cmake-js instead. prebuildify calls `<this> rebuild --target=… --release …`,
// then picks up build/Release/*.node, strips it and moves it to prebuilds/<platform>-<arch>/.
//
// The shipped binary must carry the CUDA kernels for every supported generation, so this
// refuses to build without nvcc (set BATCHNORM_PREBUILD_CPU_ONLY=1 to allow a CPU-only
// prebuild) and always passes the full architecture list, whatever an earlier build cached.
'use strict';
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const root = path.join(__dirname, '..');
const hasNvcc = spawnSync('nvcc', ['--version'], { stdio: 'ignore' }).status === 0;
if (!hasNvcc && process.env.BATCHNORM_PREBUILD_CPU_ONLY !== '1') {
  console.error('prebuildify: nvcc not found; the prebuilt binary must include the CUDA kernels ' +
    '(set BATCHNORM_PREBUILD_CPU_ONLY=1 to build a CPU-only prebuild anyway)');
  process.exit(1);
}
const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const args = [cmakeJs, 'rebuild', '--CDCMAKE_CUDA_ARCHITECTURES=75-real;80-real;86-real;89-real;90'];
const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
process.exit(r.status ?? 1);
