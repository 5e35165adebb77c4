// `node-gyp-build-test` runs this at install time (package.json "prebuild.test"): exit 0
// when the bundled prebuild (or an existing build) loads and runs here, so nothing is
// compiled; throw to make the install script fall back to `cmake-js compile`.
// BATCHNORM_BUILD_FROM_SOURCE=1 (or npm's --build-from-source) forces the source build.
'use strict';
const path = require('node:path');

if (process.env.BATCHNORM_BUILD_FROM_SOURCE === '1' || process.env.npm_config_build_from_source === 'true') {
  console.error('batchnorm: building from source (BATCHNORM_BUILD_FROM_SOURCE / --build-from-source)');
  process.exit(1);
}
const binding = require('node-gyp-build')(path.join(__dirname, '..'));
const list = binding.backends();
if (!Array.isArray(list) || !list.some((b) => b.name === 'cpu' && b.available)) {
  throw new Error('batchnorm: the prebuilt addon loaded but its CPU backend is unavailable');
}
