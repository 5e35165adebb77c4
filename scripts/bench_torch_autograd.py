#!/usr/bin/env python3
"""PyTorch's batch normalization as a training job runs it: nn.BatchNorm{1,2}d under autograd.

For each workload W1-W6 (the shapes and layouts of `batchnorm bench`'s presets), on CUDA:
  forwardMs  module(x) in training mode (statistics, running update, y)
  backwardMs y.backward(dy) (autograd: dx, dgamma, dbeta), timed alone after a forward
  stepMs     forward + backward
  evalMs     module(x) in eval mode under torch.no_grad()
NHWC workloads run on a channels_last tensor (the same memory layout as ours, not a copy).
CUDA events around each call after warm-up; median of the repetitions.

  python3 scripts/bench_torch_autograd.py [--workloads W1,W5] [--reps 50] > torch-autograd.json
"""
import argparse
import json
import sys

import torch

WORKLOADS = {
    "W1": ([128, 32, 32, 64], "NHWC"),
    "W2": ([32, 256, 56, 56], "NCHW"),
    "W3": ([256, 64, 112, 112], "NCHW"),
    "W4": ([8192, 4096], "NC"),
    "W5": ([256, 7, 7, 2048], "NHWC"),
    "W6": ([64, 1024], "NC"),
}


def median(a):
    s = sorted(a)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def events(fn, warmup, reps, before=None):
    for _ in range(warmup):
        if before:
            before()
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(reps):
        if before:
            before()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ms.append(a.elapsed_time(b))
    return median(ms)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        json.dump({"torch": torch.__version__, "error": "CUDA unavailable", "results": [], "skipped": []}, sys.stdout)
        return 1
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    results, skipped = [], []
    for wid in args.workloads.split(","):
        if wid not in WORKLOADS:
            skipped.append({"workload": wid, "reason": "unknown workload"})
            continue
        shape, layout = WORKLOADS[wid]
        try:
            if layout == "NC":
                c = shape[1]
                bn = torch.nn.BatchNorm1d(c, eps=1e-3, momentum=0.1).to(dev)
                x = (torch.rand(*shape, device=dev) - 0.5)
                module = "BatchNorm1d"
            else:
                n, c = shape[0], (shape[3] if layout == "NHWC" else shape[1])
                h, w = (shape[1], shape[2]) if layout == "NHWC" else (shape[2], shape[3])
                bn = torch.nn.BatchNorm2d(c, eps=1e-3, momentum=0.1).to(dev)
                x = torch.rand(n, c, h, w, device=dev) - 0.5
                if layout == "NHWC":
                    x = x.contiguous(memory_format=torch.channels_last)
                    bn = bn.to(memory_format=torch.channels_last)
                module = "BatchNorm2d" + (" channels_last" if layout == "NHWC" else "")
            x.requires_grad_(True)
            dy = torch.rand_like(x)
            bn.train()
            fwd = events(lambda: bn(x), args.warmup, args.reps)
            state = {}

            def forward_only():
                x.grad = None
                bn.weight.grad = None
                bn.bias.grad = None
                state["y"] = bn(x)

            bwd = events(lambda: state["y"].backward(dy), args.warmup, args.reps, before=forward_only)

            def step():
                x.grad = None
                bn.weight.grad = None
                bn.bias.grad = None
                bn(x).backward(dy)

            stp = events(step, args.warmup, args.reps)
            bn.eval()
            with torch.no_grad():
                xe = x.detach()
                ev = events(lambda: bn(xe), args.warmup, args.reps)
            results.append({"workload": wid, "shape": shape, "layout": layout, "module": module,
                            "forwardMs": fwd, "backwardMs": bwd, "stepMs": stp, "evalMs": ev})
            del x, dy, bn, state
            torch.cuda.empty_cache()
        except Exception as e:  # reported per workload, never fatal
            skipped.append({"workload": wid, "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
    json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(0),
               "method": f"CUDA events around each call, {args.warmup} warm-up calls, median of {args.reps}",
               "results": results, "skipped": skipped}, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
