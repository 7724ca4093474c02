"""ACmix forward+backward: our implementation vs the official-style unfold formulation (CPU).

Usage: python benchmarks/acmix_vs_unfold.py [--batch 2] [--size 80] [--channels 64] [--iters 7] [--threads 1]

Each variant runs in a fresh subprocess. Peak memory = the process's peak RSS (ru_maxrss) during the
first forward+backward minus its RSS just before it (module, input and output gradient already
allocated), so it counts every tensor the pass allocates, autograd's saved tensors included.
Latency = median of `iters` timed forward+backward passes after that first one. The default of one
thread keeps timings meaningful on a shared machine (two busy OpenMP threads on two shared cores can
stall by orders of magnitude).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def run_variant(variant: str, batch: int, size: int, channels: int, iters: int, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from benchmarks.reference.acmix import RefACmix
    from models.attention.acmix import ACmix

    torch.manual_seed(0)
    cls = RefACmix if variant == "unfold" else ACmix
    m = cls(channels, channels).train()
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    grad = torch.randn(batch, channels, size, size)

    def step():
        m.zero_grad(set_to_none=True)
        x.grad = None
        m(x).backward(grad)

    before = _rss_kib()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"variant": variant, "median_ms": 1e3 * statistics.median(times), "peak_mib": (peak - before) / 1024,
            "threads": torch.get_num_threads()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=80)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--iters", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variant", choices=["ours", "unfold"], help="internal: run one variant in this process")
    opt = p.parse_args(argv)
    if opt.variant:
        print(json.dumps(run_variant(opt.variant, opt.batch, opt.size, opt.channels, opt.iters, opt.threads)))
        return
    results = {}
    for variant in ("unfold", "ours"):
        cmd = [sys.executable, __file__, "--variant", variant, "--batch", str(opt.batch), "--size", str(opt.size),
               "--channels", str(opt.channels), "--iters", str(opt.iters),
               "--threads", str(opt.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    for r in results.values():
        print(f"{r['variant']:>7}: median {r['median_ms']:8.1f} ms  peak +{r['peak_mib']:7.1f} MiB  "
              f"({opt.batch}x{opt.channels}x{opt.size}x{opt.size}, fwd+bwd, {r['threads']} threads)")
    u, o = results["unfold"], results["ours"]
    print(f"speed-up {u['median_ms'] / o['median_ms']:.2f}x, memory ratio {o['peak_mib'] / u['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
