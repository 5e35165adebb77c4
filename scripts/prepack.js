// npm runs this before `npm pack` / `npm publish`. A tarball without a prebuilt binary
// installs only where a compiler is: say so loudly (the release command, npm run
// release, builds the prebuild and refuses to pack without one).
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const dir = path.join(__dirname, '..', 'prebuilds', `${process.platform}-${process.arch}`);
const has = fs.existsSync(dir) && fs.readdirSync(dir).some((f) => f.endsWith('.node'));
if (!has) {
  console.error(`batchnorm: WARNING: packing without a prebuilt binary (prebuilds/${process.platform}-${process.arch}/ is empty); ` +
    'installs from this tarball compile from source. `npm run release` builds the prebuild and packs.');
}
