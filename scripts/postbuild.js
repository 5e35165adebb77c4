// After tsc: the CLI must be executable (npm does not always fix the root package's bin
// mode), and dist/lib/*.d.ts import '../binding' — ship binding.d.ts beside them.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
fs.chmodSync(path.join(root, 'dist', 'lib', 'cli.js'), 0o755);
fs.copyFileSync(path.join(root, 'binding.d.ts'), path.join(root, 'dist', 'binding.d.ts'));
