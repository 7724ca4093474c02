"""Old (explicit) vs new (SDPA / chunked) attention formulation of the same block, same weights, one process.

Usage:
    python benchmarks/attention_sdpa.py [--repeats 5] [--sizes 128@80x80 256@40x40 512@20x20]
                                        [--blocks NAME ...] [--batch 1] [--threads N] [--no-memory]

Blocks whose attention has two formulations carry a class attribute `explicit_attention` (False: the
SDPA / chunked path, the default; True: the whole attention matrix by explicit ops, as the official
modules, which the export path also traces). "old" sets it on every such submodule of the block, "new"
leaves the default. The block is built as a yaml row builds it (benchmarks/attention.py), at the P3/P4/P5
sizes of yolov5s at 640 by default.

Columns: fwd / fwd+bwd ms are medians over --repeats, old and new timed alternately in the same loop
(so a shared machine's load hits both alike), same thread count (--threads, default torch's; the load
average is printed before and after: on cores shared with other work, two OpenMP threads stall at every
parallel region, which costs the many short ops of the blocked paths more); ratio = old / new. Peak MB: peak RSS
growth of a fresh subprocess over one train-mode forward+backward (benchmarks/attention.py's method).
"max rel diff": max |new - old| / max |old| of the eval output (fp32, parameters moved off their init).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.attention import build_ours, parse_size, peak_memory_here  # noqa: E402

BLOCKS = ["CascadedGroupAttention", "LocalWindowAttention", "DAttentionBaseline", "MSDA", "Sea_Attention"]
SIZES = ["128@80x80", "256@40x40", "512@20x20"]


def set_formulation(module: nn.Module, impl: str) -> nn.Module:
    """impl 'old': explicit attention in every submodule that has both formulations; 'new': the default."""
    found = False
    for m in module.modules():
        if hasattr(type(m), "explicit_attention"):
            m.explicit_attention = impl == "old"
            found = True
    if not found:
        raise SystemExit(f"{type(module).__name__} has no `explicit_attention` switch (nothing to compare)")
    return module


def make_case(name: str, size: str, batch: int):
    c, h, w = parse_size(size)
    module, _ = build_ours(name, c)
    torch.manual_seed(1)
    return module, torch.randn(batch, c, h, w)


def timed(step) -> float:
    t = time.perf_counter()
    step()
    return (time.perf_counter() - t) * 1e3


def alternate(module: nn.Module, x: torch.Tensor, repeats: int) -> dict:
    """Median ms of eval forward and train forward+backward, old and new interleaved."""
    xg = x.detach().requires_grad_(True)

    def forward():
        with torch.no_grad():
            module(x)

    def forward_backward():
        module(xg).sum().backward()

    times = {(impl, kind): [] for impl in ("old", "new") for kind in ("fwd", "both")}
    for kind, mode, step in (("fwd", False, forward), ("both", True, forward_backward)):
        module.train(mode)
        for impl in ("old", "new"):  # warm-up
            set_formulation(module, impl)
            step()
        for _ in range(repeats):
            for impl in ("old", "new"):
                set_formulation(module, impl)
                times[impl, kind].append(timed(step))
        module.zero_grad(set_to_none=True)
    return {key: statistics.median(v) for key, v in times.items()}


def output_difference(module: nn.Module, x: torch.Tensor) -> float:
    """On a copy with every parameter moved off its init (zero-initialised BN weights would zero the output)."""
    module = copy.deepcopy(module).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        old = set_formulation(module, "old")(x)
        new = set_formulation(module, "new")(x)
    return ((new - old).abs().max() / old.abs().max()).item()


def peak_mb(name: str, size: str, impl: str, batch: int) -> float | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-case", name, size, impl, "--batch", str(batch),
           "--threads", str(torch.get_num_threads())]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if res.returncode:
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"]


def ratio(a, b) -> str:
    return "-" if a is None or b is None or b <= 0 else f"{a / b:.2f}x"


def mb(v) -> str:
    return "failed" if v is None else f"{v:.0f}"


HEADER = ("| block | input | fwd ms old | fwd ms new | fwd old/new | fwd+bwd ms old | fwd+bwd ms new | "
          "fwd+bwd old/new | peak MB old | peak MB new | peak new/old | max rel diff |\n" + "|---" * 12 + "|")


def row(name: str, size: str, opt) -> str:
    module, x = make_case(name, size, opt.batch)
    t = alternate(module, x, opt.repeats)
    diff = output_difference(module, x)
    peak = "- | - | -"
    if not opt.no_memory:
        old_mb, new_mb = (peak_mb(name, size, impl, opt.batch) for impl in ("old", "new"))
        peak = f"{mb(old_mb)} | {mb(new_mb)} | {ratio(new_mb, old_mb)}"
    return (f"| {name} | {opt.batch}x{size} | {t['old', 'fwd']:.1f} | {t['new', 'fwd']:.1f} | "
            f"{ratio(t['old', 'fwd'], t['new', 'fwd'])} | {t['old', 'both']:.1f} | {t['new', 'both']:.1f} | "
            f"{ratio(t['old', 'both'], t['new', 'both'])} | {peak} | {diff:.1e} |")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per formulation (median reported)")
    p.add_argument("--sizes", nargs="+", default=SIZES, help="cases as C@HxW")
    p.add_argument("--blocks", nargs="+", default=BLOCKS, help="registered block names with both formulations")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-case peak-memory subprocesses")
    p.add_argument("--memory-case", nargs=3, metavar=("BLOCK", "SIZE", "IMPL"), help=argparse.SUPPRESS)
    opt = p.parse_args(argv)
    for s in opt.sizes:
        parse_size(s)
    return opt


def main(argv=None):
    opt = parse_args(argv)
    if opt.threads:
        torch.set_num_threads(opt.threads)
    if opt.memory_case:
        name, size, impl = opt.memory_case
        module, x = make_case(name, size, opt.batch)
        print(json.dumps({"peak_mb": peak_memory_here(set_formulation(module, impl), x)}))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {opt.batch}, "
          f"{opt.repeats} repeats alternating old/new, load average {os.getloadavg()[0]:.1f}", flush=True)
    print(HEADER, flush=True)
    for name in opt.blocks:
        for size in opt.sizes:
            print(row(name, size, opt), flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
