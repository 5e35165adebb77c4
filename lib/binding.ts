// The one place that loads the native addon, with an actionable error when it cannot.
import * as path from 'node:path';
import type { Binding } from '../binding';
import { BackendError } from './errors';

function load(): Binding {
  const root = path.join(__dirname, '..', '..');
  // BATCHNORM_ADDON_PATH loads a specific build (the sanitizer build in CI, say).
  const override = process.env.BATCHNORM_ADDON_PATH;
  try {
    // node-gyp-build picks prebuilds/<platform>-<arch>/ or build/Release/.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const b = (override ? require(path.resolve(override)) : require('node-gyp-build')(root)) as Binding;
    b.setBackendErrorClass(BackendError);
    return b;
  } catch (e) {
    const reason = e instanceof Error ? e.message : String(e);
    throw new Error(
      `batchnorm: could not load the native addon${override ? ` ${override} (BATCHNORM_ADDON_PATH)` : ''} for ${process.platform}-${process.arch} ` +
        `(Node ${process.version}, N-API ${process.versions.napi}).\n${reason}\n` +
        'Possible solutions:\n' +
        '- Build it from source: run `npm rebuild batchnorm` (needs cmake and a C++17 compiler; nvcc optional for CUDA).\n' +
        '- In a clone of the repository: run `npm install`, which compiles with cmake-js.\n' +
        '- Supported platform: Linux x64 with glibc, Node >= 20.',
    );
  }
}

export const native: Binding = load();
