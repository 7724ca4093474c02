"""True FLOPs and the v6.1-style model summary.

FLOPs come from torch's dispatcher-level counter (`torch.utils.flop_counter.FlopCounterMode`) run at
the real input size, so every contraction is seen: conv, linear, mm/bmm/matmul, einsum (it lowers to
bmm) and scaled-dot-product attention, 2 FLOPs per multiply-add. Ops it has no formula for but that do
real work in attention blocks (grid_sample's bilinear taps) get rules in EXTRA_RULES. A model that
cannot run at the asked size is reported with the failing layer named, never silently dropped.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from utils.log import LOGGER

aten = torch.ops.aten


def _grid_sampler_flops(input_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    # Bilinear sampling: 4 taps, each a multiply-add, per output element (N*C*Ho*Wo).
    n, c = input_shape[:2]
    ho, wo = grid_shape[1:3]
    return 2 * 4 * n * c * ho * wo


def _deform_conv_flops(input_shape, weight_shape, offset_shape, *args, out_shape=None, **kwargs) -> int:
    # torchvision's deformable conv: the conv's multiply-adds plus 4 bilinear taps per sampled input value.
    n, cin = input_shape[:2]
    cout, cin_g, kh, kw = weight_shape
    ho, wo = out_shape[-2:]
    k = kh * kw
    return 2 * n * cout * cin_g * k * ho * wo + 2 * 4 * n * cin * k * ho * wo


EXTRA_RULES = {
    aten.grid_sampler_2d: _grid_sampler_flops,
}


def _rules(extra: dict | None) -> dict:
    rules = dict(EXTRA_RULES)
    try:  # only when torchvision's ops are loaded (else no deformable conv can run); the op packet, not .default
        rules[torch.ops.torchvision.deform_conv2d] = _deform_conv_flops
    except (AttributeError, RuntimeError):
        pass
    return {**rules, **(extra or {})}


def count_flops(model: nn.Module, inputs, extra_rules: dict | None = None) -> int:
    """Total FLOPs of `model(*inputs)` under FlopCounterMode (eval, no grad; the model is left as it was)."""
    inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_rules(extra_rules)) as fc:
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
    """(GFLOPs at imgsz for batch 1, reason when it could not be counted). `extra_rules` come from the model's
    side (e.g. models/gates.GATE_FLOP_RULES), so this module never needs to know the model code."""
    try:
        return count_flops(model, _probe_input(model, imgsz), extra_rules) / 1e9, ""
    except Exception as e:  # reported, not swallowed: the caller prints the reason
        return None, f"{type(e).__name__}: {e}"


def _gflops_text(model: nn.Module, imgsz, extra_rules: dict | None = None) -> str:
    gflops, why = model_gflops(model, imgsz, extra_rules)
    size = imgsz if isinstance(imgsz, int) else "x".join(str(s) for s in imgsz[:2])
    if gflops is None:
        return f", GFLOPs n/a at {size} ({why})"
    return f", {gflops:.1f} GFLOPs" + ("" if size in (640, "640x640") else f" at {size}")


def model_info(model: nn.Module, verbose: bool = False, imgsz=640, extra_rules: dict | None = None) -> str:
    """Print and return `Model Summary: L layers, P parameters, G gradients, F GFLOPs` (v6.1 format)."""
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
