// A mocha root-hook plugin for the GPU check: every test starts with setBackend('cuda'), so
// host (Float32Array) inputs run on our CUDA kernels wherever a test does not name a backend
// itself. Tests that pass backend: 'cpu' or call setBackend still get what they ask for, and
// tests that assert the default backend ('auto') are expected to fail under it.
//   node node_modules/mocha/bin/mocha.js --require scripts/force-cuda.js
'use strict';
const path = require('node:path');
const { setBackend } = require(path.join(__dirname, '..', 'dist', 'lib', 'index.js'));

setBackend('cuda');  // fails here, before any test, when the cuda backend is unavailable
exports.mochaHooks = {
  beforeEach() {
    setBackend('cuda');
  },
};
