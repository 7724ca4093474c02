"""Benchmark every registered attention block beside its official-style reference.

Usage:
    python benchmarks/attention.py [--repeats 5] [--sizes 128@80x80 256@40x40 512@20x20] [--blocks NAME ...]
                                   [--batch 1] [--device cpu] [--no-memory] [--no-reference]

Blocks come from the registry (`attention=True`), built from empty yaml args through their yaml rule, so
blocks added later appear automatically. Default sizes are P3/P4/P5 of a 640 input at the s scale.
The reference is `Ref<BlockName>` in benchmarks/reference/<family>.py (family = the block's module
file), built with the same constructor arguments and loaded with our state_dict (strict).

Columns:
* FLOPs counter: utils.flops.count_flops (FlopCounterMode + the block's registered op rules), the true count;
* FLOPs analytic: the block's registered formula (tests check it equals the counter);
* FLOPs hooks: what a module-hook counter such as thop sees, 2 x MACs of nn.Conv2d/nn.Linear only;
* fwd / fwd+bwd ms: median over --repeats after one warm-up (eval + no_grad / train + backward of sum);
* peak MB: extra memory of one train-mode fwd+bwd (input requires grad, as inside a network). CPU: a
  fresh subprocess per case builds model and input, resets the kernel's peak-RSS mark (/proc/self/clear_refs)
  and reports peak RSS during the step minus RSS before it (process-level: includes allocator and
  thread-pool overheads; falls back to the growth of ru_maxrss, a lower bound, where the reset is not
  allowed); CUDA: max_memory_allocated minus the allocation before the step.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import resource
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

from models.common import *  # noqa: E402,F401,F403  (registers every block)
from models.registry import REGISTRY, LayerContext, op_flop_rules  # noqa: E402
from utils.flops import count_flops  # noqa: E402

DEFAULT_SIZES = ["128@80x80", "256@40x40", "512@20x20"]


def parse_size(text: str) -> tuple[int, int, int]:
    """'128@80x80' -> (128, 80, 80)."""
    try:
        c, hw = text.split("@")
        h, w = hw.lower().split("x")
        return int(c), int(h), int(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not C@HxW (e.g. 256@40x40)") from None


# ----------------------------------------------------------------------------- building

def build_ours(name: str, c: int) -> tuple[nn.Module, dict]:
    """The block as a yaml `[-1, 1, name, []]` row builds it; also its full constructor arguments."""
    spec = REGISTRY[name]
    ctx = LayerContext(0, f"[-1, 1, {name}, []]", [c], [], 1, 1.0, 1.0, 80, None, "benchmark")
    built = spec.build(ctx)
    torch.manual_seed(0)
    module = spec.cls(*built.args, **built.kwargs)
    bound = inspect.signature(spec.cls).bind(*built.args, **built.kwargs)
    bound.apply_defaults()
    return module, dict(bound.arguments)


def build_reference(name: str, ours: nn.Module, arguments: dict) -> tuple[nn.Module | None, str]:
    """(Ref<name> loaded with our weights, '') or (None, why not)."""
    family = REGISTRY[name].cls.__module__.rsplit(".", 1)[-1]
    try:
        mod = importlib.import_module(f"benchmarks.reference.{family}")
    except ModuleNotFoundError:
        return None, f"no benchmarks/reference/{family}.py"
    cls = getattr(mod, f"Ref{name}", None)
    if cls is None:
        return None, f"no Ref{name} in benchmarks/reference/{family}.py"
    params = inspect.signature(cls).parameters
    try:
        ref = cls(**{k: v for k, v in arguments.items() if k in params})
        ref.load_state_dict(ours.state_dict(), strict=True)
    except Exception as e:  # reported in the table
        return None, f"reference not built: {type(e).__name__}: {e}"
    return ref, ""


def has_reference(name: str) -> bool:
    family = REGISTRY[name].cls.__module__.rsplit(".", 1)[-1]
    try:
        return hasattr(importlib.import_module(f"benchmarks.reference.{family}"), f"Ref{name}")
    except ModuleNotFoundError:
        return False


def first(y):
    """Official DAT returns (y, pos, reference)."""
    return y[0] if isinstance(y, (tuple, list)) else y


# ----------------------------------------------------------------------------- measuring

def hook_flops(module: nn.Module, x: torch.Tensor) -> int:
    """2 x MACs of Conv2d/Linear seen by forward hooks (what thop-style counters report)."""
    total = 0

    def conv_hook(m, inp, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m, inp, out):
        nonlocal total
        total += 2 * out.numel() * m.in_features

    handles = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
               for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(step, repeats: int, device: torch.device) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def latency(module: nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    def forward():
        with torch.no_grad():
            module(x)

    xg = x.detach().requires_grad_(True)  # as inside a network; parameter-free blocks need it to backprop

    def forward_backward():
        first(module(xg)).sum().backward()

    module.eval()
    fwd = median_ms(forward, repeats, x.device)
    module.train()
    both = median_ms(forward_backward, repeats, x.device)
    module.zero_grad(set_to_none=True)
    return fwd, both


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM (peak RSS) to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status_kb("VmHWM") is not None
    except OSError:
        return False


def peak_memory_here(module: nn.Module, x: torch.Tensor) -> float:
    """MB of extra memory one train-mode fwd+bwd needs (see module docstring)."""
    module.train()
    x = x.detach().requires_grad_(True)  # as inside a network; parameter-free blocks need it to backprop
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        first(module(x)).sum().backward()
        torch.cuda.synchronize(x.device)
        return (torch.cuda.max_memory_allocated(x.device) - base) / 2 ** 20
    if _reset_peak_rss():  # peak RSS during the step minus RSS before it
        base = _proc_status_kb("VmRSS")
        first(module(x)).sum().backward()
        return (_proc_status_kb("VmHWM") - base) / 1024
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # fallback: growth of the lifetime peak (lower bound)
    first(module(x)).sum().backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # KiB -> MiB on Linux


def peak_memory_subprocess(name: str, size: str, impl: str, batch: int, device: str) -> str:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-case", name, size, impl,
           "--batch", str(batch), "--device", device]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if res.returncode:
        return "failed"
    return f"{json.loads(res.stdout.strip().splitlines()[-1])['peak_mb']:.0f}"


def make_case(name: str, size: str, impl: str, batch: int, device: torch.device):
    c, h, w = parse_size(size)
    ours, arguments = build_ours(name, c)
    module = ours
    if impl == "ref":
        module, why = build_reference(name, ours, arguments)
        if module is None:
            raise RuntimeError(why)
    torch.manual_seed(1)
    return module.to(device), torch.randn(batch, c, h, w, device=device), ours


def memory_case_main(name: str, size: str, impl: str, batch: int, device: str) -> None:
    module, x, _ = make_case(name, size, impl, batch, torch.device(device))
    print(json.dumps({"peak_mb": peak_memory_here(module, x)}))


# ----------------------------------------------------------------------------- table

def measure(name, size, impl, module, ours, x, repeats, memory, batch, device) -> dict:
    """One table row; the analytic formula is evaluated on our module (same configuration as the reference)."""
    row = {"block": name, "impl": impl, "input": f"{batch}x{size}"}
    try:
        row["params"] = sum(p.numel() for p in module.parameters())
        row["flops"] = count_flops(module, x, op_flop_rules(ours))  # the block's op rules (grid_sample, ...)
        row["analytic"] = REGISTRY[name].flops(ours, tuple(x.shape)) if REGISTRY[name].flops else None
        row["hooks"] = hook_flops(module, x)
        row["fwd"], row["both"] = latency(module, x, repeats)
        row["peak"] = peak_memory_subprocess(name, size, impl, batch, device) if memory else "-"
    except Exception as e:  # e.g. the official fixed-resolution CGA at another size
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"
    return row


def fmt_row(r: dict) -> str:
    if "error" in r and "fwd" not in r:
        params = f"{r['params']:,}" if "params" in r else "-"
        return f"| {r['block']} | {r['impl']} | {r['input']} | {params} | n/a: {r['error']} |||||||"
    g = lambda v: "-" if v is None else f"{v / 1e6:.1f}"  # noqa: E731
    return (f"| {r['block']} | {r['impl']} | {r['input']} | {r['params']:,} | {g(r['flops'])} | {g(r['analytic'])} | "
            f"{g(r['hooks'])} | {r['fwd']:.1f} | {r['both']:.1f} | {r['peak']} |")


HEADER = ("| block | impl | input | params | MFLOPs counter | MFLOPs analytic | MFLOPs hooks (thop-like) | fwd ms | "
          "fwd+bwd ms | peak MB fwd+bwd |\n|---|---|---|---|---|---|---|---|---|---|")


def attention_blocks(wanted: list[str] | None) -> list[str]:
    names = sorted(n for n, s in REGISTRY.items() if s.attention)
    if wanted:
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(f"unknown attention block(s) {unknown}; registered: {names}")
        names = [n for n in names if n in wanted]
    return names


def run(opt) -> list[dict]:
    device = torch.device(opt.device)
    rows = []
    print(HEADER, flush=True)
    for name in attention_blocks(opt.blocks):
        for size in opt.sizes:
            impls = ["ours"] + ([] if opt.no_reference or not has_reference(name) else ["ref"])
            for impl in impls:
                try:
                    module, x, ours = make_case(name, size, impl, opt.batch, device)
                except Exception as e:
                    row = {"block": name, "impl": impl, "input": f"{opt.batch}x{size}", "error": str(e)[:120]}
                else:
                    row = measure(name, size, impl, module, ours, x, opt.repeats, not opt.no_memory, opt.batch,
                                  opt.device)
                rows.append(row)
                print(fmt_row(row), flush=True)
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median reported)")
    p.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="cases as C@HxW")
    p.add_argument("--blocks", nargs="+", default=None, help="registered block names (default: all attention blocks)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-memory", action="store_true", help="skip the per-case peak-memory subprocesses")
    p.add_argument("--no-reference", action="store_true", help="skip the official-style references")
    p.add_argument("--memory-case", nargs=3, metavar=("BLOCK", "SIZE", "IMPL"), help=argparse.SUPPRESS)
    opt = p.parse_args(argv)
    for s in opt.sizes:
        parse_size(s)
    return opt


def main(argv=None):
    opt = parse_args(argv)
    if opt.memory_case:
        memory_case_main(*opt.memory_case, opt.batch, opt.device)
        return None
    return run(opt)


if __name__ == "__main__":
    main()
