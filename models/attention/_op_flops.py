"""FLOP rules for ops torch's FlopCounterMode has no formula for, in its convention (2 FLOPs per multiply-add).

A block names the rules its forward needs in its registration (`op_flops=GRID_SAMPLE`); Model.info and the
tests gather them from the blocks in a model (models.registry.op_flop_rules) and pass them to
utils.flops.count_flops. Each rule gets the shapes of the op's arguments and `out_shape`.
"""
from __future__ import annotations

import torch

from utils.tv_ops import load_torchvision_ops

load_torchvision_ops()  # registers torch.ops.torchvision.* without `import torchvision` (~1.5 s: it loads torch._dynamo)


def grid_sampler_flops(input_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    """Bilinear sampling: 4 taps, each a multiply-add, per output element (N*C*Ho*Wo)."""
    n, c = input_shape[:2]
    ho, wo = grid_shape[1:3]
    return 2 * 4 * n * c * ho * wo


def deform_conv_flops(input_shape, weight_shape, offset_shape, *args, out_shape=None, **kwargs) -> int:
    """torchvision's deformable conv: the conv's multiply-adds plus 4 bilinear taps per sampled input value."""
    n, cin = input_shape[:2]
    cout, cin_g, kh, kw = weight_shape
    ho, wo = out_shape[-2:]
    k = kh * kw
    return 2 * n * cout * cin_g * k * ho * wo + 2 * 4 * n * cin * k * ho * wo


GRID_SAMPLE = {torch.ops.aten.grid_sampler_2d: grid_sampler_flops}
DEFORM_CONV = {torch.ops.torchvision.deform_conv2d: deform_conv_flops}  # the op packet, not .default


def sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """q k^T and attn v of scaled_dot_product_attention: 2 * batch * L * S * (E + Ev); (..., L, E) layout."""
    *batch, length, e = query_shape
    source, ev = key_shape[-2], value_shape[-1]
    n = 1
    for b in batch:
        n *= b
    return 2 * n * length * source * (e + ev)


# the CPU flash kernel SDPA picks (float masks included); torch's counter has formulas for the CUDA ones only
SDPA_CPU = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flops}
