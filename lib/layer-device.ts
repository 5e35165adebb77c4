// The BatchNormalization layer's device side, kept apart from the layer so that its logic
// runs (and is tested) without a GPU: how each momentum convention maps onto the fused
// training op's exponentialAvgFactor, host vectors with a device twin that is copied only
// when the other side reads it, and the small vector updates the layer queues on the GPU.
// Every update here is an existing op; none needs a kernel of its own.
import { DeviceTensor } from './device';
import { batchNormalization } from './ops';
import type { Tensor } from './tensor';

/** The momentum fields of a layer's convention (ConventionSpec). */
export interface MomentumSpec {
  momentumKind: 'decay' | 'factor';
  momentum: number | null;
  runningVariance: 'biased' | 'unbiased';
  zeroDebias: boolean;
}

/**
 * The running update of training step `step` (1 for the first): `keep` is the share of
 * the old value in the host's `run·keep + batch·(1 − keep)`, `factor` the fused op's
 * exponentialAvgFactor f in `(1 − f)·run + f·batch`. Decay m keeps m (f = 1 − m); a
 * factor f is taken as it is; momentum null (a cumulative average, PyTorch's
 * momentum=None) is f = 1/step.
 */
export function momentumStep(spec: MomentumSpec, step: number): { keep: number; factor: number } {
  if (spec.momentumKind === 'decay') return { keep: spec.momentum!, factor: 1 - spec.momentum! };
  const factor = spec.momentum === null ? 1 / step : spec.momentum;
  return { keep: 1 - factor, factor };
}

/**
 * How a device layer's training step updates the running statistics:
 * - 'op': the fused op updates both from its own statistics (its running variance is the
 *   Bessel-corrected one, as the convention wants);
 * - 'op-ema': the fused op updates the mean; the biased running variance, which the op
 *   does not write, is an exponential average queued on the device (emaStep);
 * - 'host': the batch statistics are downloaded and the update runs in JS — TF's
 *   zero-debiased average keeps float64 accumulators and divides by 1 − m^t, which no
 *   device op expresses.
 */
export type RunningUpdate = 'op' | 'op-ema' | 'host';

export function runningUpdate(spec: MomentumSpec): RunningUpdate {
  if (spec.zeroDebias) return 'host';
  return spec.runningVariance === 'unbiased' ? 'op' : 'op-ema';
}

/**
 * `run·keep + batch·(1 − keep)` written as `batch + (run − batch)·keep`, which is
 * batchNormalization's `(x − mean)·scale/sqrt(variance + ε) + offset` with x = run,
 * mean = offset = batch, no scale, variance = zero and ε = 1/keep²: one existing op, on
 * the device for DeviceTensors, in float64. keep goes in through ε, a float64, because a
 * float32 scale would round it (0.99 by 1e-8), which moves a long average by several ulp.
 * keep = 0, or so small that 1/keep² overflows (then (run − batch)·keep is below float32's
 * smallest value): the result is `batch` itself.
 */
export function emaStep(run: DeviceTensor, batch: DeviceTensor, zero: DeviceTensor, keep: number): DeviceTensor;
export function emaStep(run: Tensor, batch: Tensor, zero: Tensor, keep: number): Tensor;
export function emaStep(run: Tensor | DeviceTensor, batch: Tensor | DeviceTensor, zero: Tensor | DeviceTensor, keep: number): Tensor | DeviceTensor {
  const eps = 1 / (keep * keep);
  if (!Number.isFinite(eps)) return batch;
  return (batchNormalization as (...a: unknown[]) => Tensor | DeviceTensor)(run, batch, zero, batch, null, eps);
}

/** a + b as batchNormalization(a, zero, one, offset b, no scale, ε 0): the sum rounded once to float32. */
export function addVectors(a: DeviceTensor, b: DeviceTensor, zero: DeviceTensor, one: DeviceTensor): DeviceTensor;
export function addVectors(a: Tensor, b: Tensor, zero: Tensor, one: Tensor): Tensor;
export function addVectors(a: Tensor | DeviceTensor, b: Tensor | DeviceTensor, zero: Tensor | DeviceTensor, one: Tensor | DeviceTensor): Tensor | DeviceTensor {
  return (batchNormalization as (...a: unknown[]) => Tensor | DeviceTensor)(a, zero, one, b, null, 0);
}

/** Moves vectors between host and device; tests give fakes that count the copies. */
export interface VectorIO<D> {
  upload(host: Float32Array): D;
  /** Copies d into `into` (the host waits for the work that produces d). */
  download(d: D, into: Float32Array): void;
  dispose(d: D): void;
}

export const deviceIO: VectorIO<DeviceTensor> = {
  upload: (host) => DeviceTensor.upload({ data: host, shape: [host.length] }),
  download: (d, into) => { d.download(into); },
  dispose: (d) => d.dispose(),
};

/**
 * A host vector with an optional device twin, and which of them is current. The host
 * array is the same object for the vector's life (state(), getters and optimizers read
 * it); it is brought up to date — one download — only when read after the device copy
 * moved on. The device copy is uploaded only when an op needs it and it is missing.
 */
export class MirroredVector<D> {
  private dev: D | null = null;
  private hostStale = false;

  constructor(readonly host: Float32Array, private readonly io: VectorIO<D>) {}

  /** The host values, current. */
  read(): Float32Array {
    if (this.hostStale) {
      this.io.download(this.dev!, this.host);
      this.hostStale = false;
    }
    return this.host;
  }

  /** The device values, current (uploaded when there is no device copy). */
  device(): D {
    if (this.dev === null) this.dev = this.io.upload(this.host);
    return this.dev;
  }

  /** A device op produced newer values: they replace the device copy; the host copy is stale. */
  setDevice(d: D): void {
    if (this.dev !== null && this.dev !== d) this.io.dispose(this.dev);
    this.dev = d;
    this.hostStale = true;
  }

  /** The host values were written (a host update, a loaded state): the device copy is dropped. */
  hostWritten(): void {
    if (this.hostStale) throw new Error('MirroredVector.hostWritten: the host copy is stale; read() it before writing');
    this.dropDevice();
  }

  /** Brings the host copy up to date and frees the device copy. */
  release(): void {
    this.read();
    this.dropDevice();
  }

  /** Frees the device copy without reading it (the vector is being replaced). */
  discard(): void {
    this.hostStale = false;
    this.dropDevice();
  }

  /** Where the current values are: 'host', 'device' (host stale) or 'both'. */
  get current(): 'host' | 'device' | 'both' {
    if (this.dev === null) return 'host';
    return this.hostStale ? 'device' : 'both';
  }

  private dropDevice(): void {
    if (this.dev !== null) this.io.dispose(this.dev);
    this.dev = null;
  }
}

/**
 * A host vector's device copy for operands that JS code changes in place (gamma and beta,
 * which optimizers update): uploaded again only when the values differ, bit for bit,
 * from the last upload — an inference loop uploads nothing; a training step uploads C
 * floats once.
 */
export class UploadCache<D> {
  private dev: D | null = null;
  private bits: Uint32Array | null = null;

  constructor(private readonly io: VectorIO<D>) {}

  get(host: Float32Array): D {
    const now = new Uint32Array(host.buffer, host.byteOffset, host.length);
    if (this.dev !== null && this.bits !== null && this.bits.length === now.length && this.bits.every((b, i) => b === now[i])) {
      return this.dev;
    }
    const d = this.io.upload(host);
    this.release();
    this.dev = d;
    this.bits = now.slice();
    return d;
  }

  release(): void {
    if (this.dev !== null) this.io.dispose(this.dev);
    this.dev = null;
    this.bits = null;
  }
}

/**
 * A gradient sum over backward passes: the host array (what gradients() returns) plus a
 * device sum of the passes since it was last read. A pass's device vector is taken as it
 * is, or added to the pending sum with one queued op; read() downloads the pending sum
 * once and adds it into the host array. Memory stays one vector however many passes run
 * between reads.
 */
export class DeviceSum<D> {
  private pending: D | null = null;

  constructor(readonly host: Float32Array, private readonly io: VectorIO<D>, private readonly add: (a: D, b: D) => D) {}

  /** Adds one pass's vector; the sum owns (and frees) it. */
  push(d: D): void {
    if (this.pending === null) {
      this.pending = d;
      return;
    }
    let sum: D;
    try {
      sum = this.add(this.pending, d);
    } finally {
      this.io.dispose(d);
    }
    this.io.dispose(this.pending);
    this.pending = sum;
  }

  /** The host array with every pending pass added in. */
  read(): Float32Array {
    if (this.pending !== null) {
      const add = new Float32Array(this.host.length);
      this.io.download(this.pending, add);
      for (let i = 0; i < add.length; i++) this.host[i] += add[i];
      this.io.dispose(this.pending);
      this.pending = null;
    }
    return this.host;
  }

  zero(): void {
    this.discard();
    this.host.fill(0);
  }

  /** Frees the pending sum without reading it; the host array is left as it is (the sum is being replaced). */
  discard(): void {
    if (this.pending !== null) this.io.dispose(this.pending);
    this.pending = null;
  }

  get hasPending(): boolean {
    return this.pending !== null;
  }
}
