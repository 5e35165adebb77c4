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
    throw new Error(loadErrorMessage(root, reason, override));
  }
}

/** The prebuilt binary's floor: what the build machine's toolchain links against. */
const PREBUILT_NEEDS = 'glibc >= 2.34 and libstdc++ from GCC >= 12 (GLIBCXX_3.4.30)';

/** An actionable message (what was tried, this platform, why, what to do), like sharp's. */
function loadErrorMessage(root: string, reason: string, override: string | undefined): string {
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  const glibc = report?.header?.glibcVersionRuntime;
  const tried = override
    ? `${path.resolve(override)} (BATCHNORM_ADDON_PATH)`
    : `${path.join(root, 'build', 'Release', 'batchnorm.node')} and ${path.join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'batchnorm.node')}`;
  const hints: string[] = [];
  if (/GLIBC_\d|GLIBCXX_\d|CXXABI_\d/.test(reason)) {
    hints.push(`This system's C/C++ runtime is too old for the prebuilt binary, which needs ${PREBUILT_NEEDS}` +
      `${glibc ? ` (this system has glibc ${glibc})` : ''}. Build from source instead (below).`);
  }
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    hints.push(`Prebuilt binaries exist for linux-x64 only; on ${process.platform}-${process.arch} build from source.`);
  }
  if (!glibc && process.platform === 'linux') {
    hints.push('This looks like a musl libc system (e.g. Alpine); the prebuilt binary needs glibc. Build from source.');
  }
  return [
    `batchnorm: could not load the native addon for ${process.platform}-${process.arch}, ` +
      `Node ${process.version} (N-API ${process.versions.napi})${glibc ? `, glibc ${glibc}` : ''}.`,
    `Tried: ${tried}`,
    `Reason: ${reason}`,
    ...hints,
    'Possible solutions:',
    '- Build from source: BATCHNORM_BUILD_FROM_SOURCE=1 npm rebuild batchnorm (needs cmake >= 3.18 and a C++17 compiler; nvcc optional for the CUDA backend).',
    '- In a clone of the repository: npm install (compiles with cmake-js).',
    `- Supported: Linux x64, Node >= 20; the prebuilt binary needs ${PREBUILT_NEEDS}.`,
  ].join('\n');
}

export const native: Binding = load();
