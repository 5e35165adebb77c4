import * as fs from 'node:fs';
import * as path from 'node:path';
import type { NativeCudaInfo } from '../binding';
import { native } from './binding';
import { backends, type BackendInfo } from './backend';
import { ncclStatus } from './sync/nccl';
import { describe } from './tensor';

export const version: string = (
  JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }
).version;

export interface Info {
  version: string;
  backends: BackendInfo[];
  threads: number;
  /** Instruction-set level the CPU kernels were dispatched to on this machine. */
  cpuFeatures: string;
  cuda: NativeCudaInfo;
  /** The NCCL communicator (optional component, loaded at first use): can it run here, and why not. */
  nccl: { available: boolean; version: number; reason: string | null };
  node: string;
  napi: string | undefined;
}

/** Version, backends with availability/reasons, CPU threads and features, CUDA device details. */
export function info(): Info {
  return {
    version,
    backends: backends(),
    threads: native.numThreads(),
    cpuFeatures: native.cpuFeatures(),
    cuda: native.cudaInfo(),
    nccl: ncclStatus(),
    node: process.version,
    napi: process.versions.napi,
  };
}

/** Outcome of the cuDNN loader run afresh: diagnostics only (needs no GPU). */
export interface CudnnProbe {
  loaded: boolean;
  /** cudnnGetVersion(), e.g. 90100 for 9.1.0; 0 when not reached. */
  version: number;
  /** What was opened: a path or a soname. */
  path: string;
  /** Why cuDNN cannot be used; null when it loaded. */
  reason: string | null;
}

/**
 * Runs the cuDNN loader (dlopen, dlsym of every symbol, version check) on `path` — a
 * library file or a directory — or, without one, on BATCHNORM_CUDNN_PATH / the default
 * sonames. Does not change which cuDNN the process uses (backends() reports that one).
 */
export function cudnnProbe(path?: string): CudnnProbe {
  if (path !== undefined && typeof path !== 'string') throw new TypeError(`cudnnProbe: path must be a string, got ${describe(path)}`);
  return native.cudnnProbe(path);
}
