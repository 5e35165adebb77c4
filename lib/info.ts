import * as fs from 'node:fs';
import * as path from 'node:path';
import type { NativeCudaInfo } from '../binding';
import { native } from './binding';
import { backends, type BackendInfo } from './backend';
import { ncclStatus } from './sync/nccl';

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
