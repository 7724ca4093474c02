"""True FLOPs and the v6.1-style model summary.

FLOPs come from torch's dispatcher-level counter (`torch.utils.flop_counter.FlopCounterMode`) run at
the real input size, so every contraction is seen: conv, linear, mm/bmm/matmul, einsum (it lowers to
bmm) and scaled-dot-product attention, 2 FLOPs per multiply-add. Ops it has no formula for but that do
real work in attention blocks (grid_sample's bilinear taps, deformable convs) are counted by the rules the
caller passes as `extra_rules` ({op: rule}); each block declares the ones it needs in its registration, and
the models side gathers them (this package cannot look at the registry). A model that cannot run at the
asked size is reported with the failing layer named, never silently dropped.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from utils.log import LOGGER


def count_flops(model: nn.Module, inputs, extra_rules: dict | None = None) -> int:
    """Total FLOPs of `model(*inputs)` under FlopCounterMode (eval, no grad; the model is left as it was).

    `extra_rules` {op packet: rule(*arg_shapes, out_shape=...)} adds formulas for ops the counter lacks."""
    inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=dict(extra_rules or {})) as fc:
            model(*inputs)
    finally:
        model.train(was_training)
    return fc.get_total_flops()


def _probe_input(model: nn.Module, imgsz) -> torch.Tensor:
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)[:2]
    p = next(model.parameters())
    ch = getattr(model, "yaml", {}).get("ch", 3)
    return torch.zeros(1, ch, h, w, device=p.device, dtype=p.dtype)


def model_gflops(model: nn.Module, imgsz=640, extra_rules: dict | None = None) -> tuple[float | None, str]:
    """(GFLOPs at imgsz for batch 1, reason when it could not be counted)."""
    try:
        return count_flops(model, _probe_input(model, imgsz), extra_rules) / 1e9, ""
    except Exception as e:  # reported, not swallowed: the caller prints the reason
        return None, f"{type(e).__name__}: {e}"


def _gflops_text(model: nn.Module, imgsz, extra_rules: dict | None) -> str:
    gflops, why = model_gflops(model, imgsz, extra_rules)
    size = imgsz if isinstance(imgsz, int) else "x".join(str(s) for s in imgsz[:2])
    if gflops is None:
        return f", GFLOPs n/a at {size} ({why})"
    return f", {gflops:.1f} GFLOPs" + ("" if size in (640, "640x640") else f" at {size}")


def model_info(model: nn.Module, verbose: bool = False, imgsz=640, extra_rules: dict | None = None) -> str:
    """Print and return `Model Summary: L layers, P parameters, G gradients, F GFLOPs` (v6.1 format);
    `extra_rules` as in count_flops (Model.info passes its blocks' rules)."""
    n_p = sum(p.numel() for p in model.parameters())
    n_g = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_layers = len(list(model.modules()))
    if verbose:
        LOGGER.info(f"{'layer':>5} {'name':>40} {'gradient':>9} {'parameters':>12} {'shape':>20}")
        for i, (name, p) in enumerate(model.named_parameters()):
            LOGGER.info(f"{i:5g} {name:>40} {str(p.requires_grad):>9} {p.numel():12g} {str(list(p.shape)):>20}")
    fl = "" if imgsz is None else _gflops_text(model, imgsz, extra_rules)  # imgsz=None: parameters only, no FLOP count
    line = f"Model Summary: {n_layers} layers, {n_p} parameters, {n_g} gradients{fl}"
    LOGGER.info(line)
    return line
