#!/usr/bin/env python3
"""PyTorch on the same shapes as bench/gpu.js, timed the same way (CUDA events, median
of >= 20 runs after warm-up): torch.var_mean (moments) and
torch.nn.functional.batch_norm with training=True (statistics + normalize) and
training=False (normalize with given statistics). Writes torch.json into $BATCHNORM_OUT.
NHWC workloads use channels_last tensors so PyTorch sees the same memory layout."""
import json, os, sys

import torch
import torch.nn.functional as F

OUT = os.environ.get("BATCHNORM_OUT", os.path.join(os.getcwd(), "gpu-report"))
REPS = int(os.environ.get("BATCHNORM_BENCH_REPS", "30"))
WARMUP = 5
WORKLOADS = [
    ("W1", [128, 32, 32, 64], [0, 1, 2]),
    ("W2", [32, 256, 56, 56], [0, 2, 3]),
    ("W3", [256, 64, 112, 112], [0, 2, 3]),
    ("W4", [8192, 4096], [0]),
]


def timed(fn):
    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(REPS):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ms.append(a.elapsed_time(b))
    ms.sort()
    return ms[len(ms) // 2]


def main():
    os.makedirs(OUT, exist_ok=True)
    dev = torch.device("cuda")
    res = []
    for name, shape, axes in WORKLOADS:
        x = torch.randn(*shape, device=dev)
        if name == "W1":
            # NHWC [N,H,W,C] -> logical NCHW view over channels_last memory.
            xb = x.permute(0, 3, 1, 2)
            c = shape[3]
        elif len(shape) == 2:
            xb = x
            c = shape[1]
        else:
            xb = x
            c = shape[1]
        rm, rv = torch.zeros(c, device=dev), torch.ones(c, device=dev)
        var_mean = timed(lambda: torch.var_mean(x, dim=axes, unbiased=False))
        train = timed(lambda: F.batch_norm(xb, rm, rv, None, None, training=True, momentum=0.1, eps=1e-3))
        infer = timed(lambda: F.batch_norm(xb, rm, rv, None, None, training=False, eps=1e-3))
        res.append({"workload": name, "var_mean_ms": var_mean, "batch_norm_train_ms": train, "batch_norm_eval_ms": infer})
        print(f"{name} torch: var_mean {var_mean:.3f} ms, batch_norm train {train:.3f} ms, eval {infer:.3f} ms")
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0), "results": res}
    with open(os.path.join(OUT, "torch.json"), "w") as f:
        json.dump(info, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
