// `node-gyp-build-test` runs this at install time (package.json "prebuild.test"): exit 0
// when the bundled prebuild (or an existing build) loads and runs here, so nothing is
// compiled; exit 1 to make the install script fall back to `cmake-js compile`.
// BATCHNORM_BUILD_FROM_SOURCE=1 (or npm's --build-from-source) forces the source build.
// Falling back is the normal path in a clone (no prebuilds/), so it says one plain line,
// not a stack trace.
'use strict';
const path = require('node:path');

const fallback = (why) => {
  console.error(`batchnorm: ${why}; building from source with cmake-js`);
  process.exit(1);
};

if (process.env.BATCHNORM_BUILD_FROM_SOURCE === '1' || process.env.npm_config_build_from_source === 'true') {
  fallback('source build requested (BATCHNORM_BUILD_FROM_SOURCE / --build-from-source)');
}
let binding;
try {
  binding = require('node-gyp-build')(path.join(__dirname, '..'));
} catch (e) {
  const first = String(e && e.message ? e.message : e).split('\n')[0];
  fallback(/No native build was found/.test(first)
    ? `no prebuilt binary for ${process.platform}-${process.arch} (Node ${process.version})`
    : `the prebuilt binary does not load here (${first})`);
}
const list = binding.backends();
if (!Array.isArray(list) || !list.some((b) => b.name === 'cpu' && b.available)) {
  fallback('the prebuilt binary loaded but its CPU backend is unavailable');
}
