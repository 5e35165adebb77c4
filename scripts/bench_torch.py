#!/usr/bin/env python3
"""PyTorch peer of `batchnorm bench --compare torch`.

Reads a JSON request on stdin ({device, threads, warmup, reps, ops, workloads: [{id, shape,
axes, channelAxis}]}) and writes a JSON report on stdout. Same shapes, layouts and timing
method as the bench: on CUDA, CUDA events around each call after warm-up; on the CPU, wall
clock around each call with torch.set_num_threads(threads). Median, min and max of the
repetitions. Channels-last workloads are run on a channels-last view (x.permute) so PyTorch
sees the same memory layout, not a copy.

  moments            -> torch.var_mean(x, dim=axes, correction=0)
  batchNormalization -> F.batch_norm(training=False) with given statistics
  fusedBatchNorm     -> F.batch_norm(training=True, momentum=0.1): statistics, running update, y
  fusedBatchNormGrad -> torch.ops.aten.native_batch_norm_backward from the saved statistics
"""
import json
import sys
import time

import torch
import torch.nn.functional as F

BUDGET_MS = 3000.0


def per_channel_view(x, shape, channel_axis):
    """x as (N, C, ...) for F.batch_norm, without copying; None when not per-channel."""
    rank = len(shape)
    if channel_axis is None:
        return None
    if channel_axis == 1:
        return x
    if channel_axis == rank - 1 and rank >= 3:
        return x.permute(0, rank - 1, *range(1, rank - 1))
    return None


def timed(fn, device, warmup, reps):
    first = 0.0
    for _ in range(max(1, warmup)):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        first = (time.perf_counter() - t0) * 1e3
    n = max(min(5, reps), min(reps, int(BUDGET_MS / max(first, 1e-3))))
    ms = []
    for _ in range(n):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ms.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - t0) * 1e3)
    s = sorted(ms)
    mid = len(s) // 2
    med = s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
    return {"ms": med, "minMs": s[0], "maxMs": s[-1], "reps": len(s)}


def main():
    req = json.load(sys.stdin)
    device = req["device"]
    if device == "cuda" and not torch.cuda.is_available():
        device = "cpu"
    if device == "cpu":
        torch.set_num_threads(int(req["threads"]))
    dev = torch.device(device)
    warmup, reps = int(req["warmup"]), int(req["reps"])
    method = ("CUDA events around each call" if device == "cuda" else "wall clock (time.perf_counter) around each call") + \
        f", {warmup} warm-up calls, median"
    results, skipped = [], []
    g = torch.Generator(device="cpu").manual_seed(7)
    for w in req["workloads"]:
        shape, axes, ca = w["shape"], w["axes"], w["channelAxis"]
        x = (torch.rand(*shape, generator=g) - 0.5).to(dev)
        xb = per_channel_view(x, shape, ca)
        for op in req["ops"]:
            def skip(reason):
                skipped.append({"op": op, "workload": w["id"], "reason": reason})
            try:
                if op == "moments":
                    what = "torch.var_mean(x, dim=axes, correction=0)"
                    fn = lambda: torch.var_mean(x, dim=axes, correction=0)
                else:
                    if xb is None:
                        skip("F.batch_norm needs one channel axis at 1 or last")
                        continue
                    c = shape[ca]
                    rm, rv = torch.zeros(c, device=dev), torch.ones(c, device=dev)
                    wgt, bias = torch.ones(c, device=dev), torch.zeros(c, device=dev)
                    if op == "batchNormalization":
                        what = "F.batch_norm(training=False)"
                        fn = lambda: F.batch_norm(xb, rm, rv, wgt, bias, training=False, eps=1e-3)
                    elif op == "fusedBatchNorm":
                        what = "F.batch_norm(training=True, momentum=0.1)"
                        fn = lambda: F.batch_norm(xb, rm, rv, wgt, bias, training=True, momentum=0.1, eps=1e-3)
                    else:
                        what = "torch.ops.aten.native_batch_norm_backward"
                        _, sm, si = torch.ops.aten.native_batch_norm(xb, wgt, bias, None, None, True, 0.1, 1e-3)
                        dy = torch.rand_like(x)
                        dyb = per_channel_view(dy, shape, ca)
                        fn = lambda: torch.ops.aten.native_batch_norm_backward(
                            dyb, xb, wgt, None, None, sm, si, True, 1e-3, [True, True, True])
                r = timed(fn, device, warmup, reps)
                results.append({"op": op, "workload": w["id"], "device": device, "what": what, "method": method, **r})
            except Exception as e:  # a peer failure is reported, never fatal
                skip(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        del x, xb
        if device == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    json.dump({"torch": torch.__version__, "device": name, "results": results, "skipped": skipped}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
