"""C3TR: YOLOv5's own attention block, a C3 whose Bottlenecks are a small ViT encoder (v6.1 common.py).

TransformerLayer is a ViT layer without LayerNorms: q/k/v Linears (no bias) feed nn.MultiheadAttention
(which has its own input projection), then fc2(fc1(x)) with no activation; both are residual. The
sequence is the H*W positions, sequence-first (HW, B, C) as nn.MultiheadAttention's default. TransformerBlock
adds a learned "position embedding" Linear (p + linear(p)). Module names, their order and the
MultiheadAttention call (weights returned and averaged, as the default need_weights=True does) are v6.1's,
so official transformer checkpoints load strict and give the same numbers.

Yaml: `[-1, 3, C3TR, [1024]]` as the official yolov5s-transformer (c2 width-scaled, the yaml n is the number
of TransformerLayers, 4 heads); `[-1, 1, C3TR, []]` keeps the input's channels, like the other attention
blocks. The hidden width int(c2 * e) must divide by the 4 heads.
"""
from __future__ import annotations

import torch.nn as nn

from models.common import C3, Conv
from models.attention._op_flops import SDPA_CPU
from models.registry import Built, LayerContext, Reference, out_channels, register

__all__ = ["TransformerLayer", "TransformerBlock", "C3TR"]

NUM_HEADS = 4  # fixed in v6.1's C3TR


class TransformerLayer(nn.Module):
    """x + MHA(q(x), k(x), v(x)); then x + fc2(fc1(x)). Input (L, B, c)."""

    def __init__(self, c, num_heads):
        super().__init__()
        self.q = nn.Linear(c, c, bias=False)
        self.k = nn.Linear(c, c, bias=False)
        self.v = nn.Linear(c, c, bias=False)
        self.ma = nn.MultiheadAttention(embed_dim=c, num_heads=num_heads)
        self.fc1 = nn.Linear(c, c, bias=False)
        self.fc2 = nn.Linear(c, c, bias=False)

    def forward(self, x):
        # need_weights=False: the attention weights are not used, and without them torch runs
        # scaled_dot_product_attention (no (heads, L, L) matrix kept); same outputs and keys
        x = self.ma(self.q(x), self.k(x), self.v(x), need_weights=False)[0] + x
        return self.fc2(self.fc1(x)) + x


class TransformerBlock(nn.Module):
    """(B, c1, H, W) -> optional Conv to c2 -> sequence (HW, B, c2) + position Linear -> layers -> (B, c2, H, W)."""

    def __init__(self, c1, c2, num_heads, num_layers):
        super().__init__()
        self.conv = Conv(c1, c2) if c1 != c2 else None  # never inside C3TR (c1 == c2 there)
        self.linear = nn.Linear(c2, c2)
        self.tr = nn.Sequential(*(TransformerLayer(c2, num_heads) for _ in range(num_layers)))
        self.c2 = c2

    def forward(self, x):
        if self.conv is not None:
            x = self.conv(x)
        b, _, h, w = x.shape
        p = x.flatten(2).permute(2, 0, 1)
        return self.tr(p + self.linear(p)).permute(1, 2, 0).reshape(b, self.c2, h, w)


def _build(ctx: LayerContext) -> Built:
    """Official rule (c2 width-scaled, n inside); empty args or a None c2 keep the input's channels."""
    if not ctx.args or ctx.args[0] is None:
        built = Built([ctx.c1, ctx.c1, ctx.n, *ctx.args[1:]], ctx.c1, n=1)
    else:
        built = out_channels(repeats=True)(ctx)
    e = built.args[5] if len(built.args) > 5 else 0.5
    hidden = int(built.c2 * e)
    if hidden < NUM_HEADS or hidden % NUM_HEADS:
        raise ctx.error(f"C3TR's hidden width int({built.c2} * {e}) = {hidden} must be a positive multiple of its "
                        f"{NUM_HEADS} attention heads; choose output channels divisible by {2 * NUM_HEADS}")
    return built


def c3tr_flops(m: "C3TR", shape) -> int:
    """2 FLOPs per multiply-add. Convs: cv1, cv2 (c1 -> c_) and cv3 (2c_ -> c2), all 1x1 over L = H*W positions.
    Transformer (width c, L positions): the position Linear 2BLc^2; per layer q, k, v, the three in-projections,
    the out-projection and fc1, fc2 are nine c x c Linears (18BLc^2), and the two attention products
    QK^T and AV are 2BL^2c each (summed over the heads)."""
    b, c1, h, w = shape
    L = h * w
    c_, c2 = m.cv1.conv.out_channels, m.cv3.conv.out_channels
    block, c = m.m, m.m.c2
    convs = 2 * b * L * (2 * c1 * c_ + 2 * c_ * c2)
    if block.conv is not None:
        convs += 2 * b * L * c_ * c
    layers = len(block.tr) * (18 * b * L * c * c + 4 * b * L * L * c)
    return convs + 2 * b * L * c * c + layers


@register(build=_build, attention=True, yolo_init=True, flops=c3tr_flops, op_flops=SDPA_CPU,
          reference=Reference("Ultralytics YOLOv5 v6.1: C3 with a TransformerBlock(c_, c_, 4 heads, n layers) "
                              "(ViT-style encoder layers, Dosovitskiy et al., ICLR 2021)",
                              "ultralytics/yolov5 v6.1 models/common.py (C3TR, TransformerBlock, TransformerLayer)",
                              "nothing: official keys and numerics (tests/data/c3tr_v61_reference.pt)"))
class C3TR(C3):
    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__(c1, c2, n, shortcut, g, e)  # v6.1's draw order: the Bottlenecks are built, then replaced
        c_ = int(c2 * e)
        self.m = TransformerBlock(c_, c_, NUM_HEADS, n)
