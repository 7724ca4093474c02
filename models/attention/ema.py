"""EMA: Efficient Multi-scale Attention (Ouyang et al., ICASSP 2023), after YOLOonMe/EMA-attention-module.

`EMA(channels, c2=None, factor=32)`: `factor` channel groups are folded into the batch. Keys `gn`,
`conv1x1`, `conv3x3` as the official code. Fix: the official H/W pools are AdaptiveAvgPool2d((None, 1))
and ((1, None)), which break dynamic-shape ONNX export; here they are means (same values).
From a yaml without `factor`, factor is the largest divisor of the channels that is <= 32.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import Reference, register, same_channels

__all__ = ["EMA"]


def default_factor(channels: int, limit: int = 32) -> int:
    return max(g for g in range(1, min(limit, channels) + 1) if channels % g == 0)


def _softmax32(v: torch.Tensor) -> torch.Tensor:
    return torch.softmax(v.float(), dim=-1).to(v.dtype)


def _adapt(ctx, args, kwargs):
    if len(args) < 3 and "factor" not in kwargs:
        args.extend([None] * (2 - len(args)) + [default_factor(ctx.c1)])
    g = args[2] if len(args) > 2 else kwargs["factor"]
    if not isinstance(g, int) or g < 1 or ctx.c1 % g:
        raise ctx.error(f"EMA factor={g!r} must divide the {ctx.c1} input channels (largest valid <= 32: "
                        f"{default_factor(ctx.c1)})")


def _flops(m: "EMA", shape) -> int:
    b, c, h, w = shape
    cg = c // m.groups
    return b * (2 * c * cg * (h + w)  # shared 1x1 conv on the concatenated H and W descriptors
                + 18 * c * cg * h * w  # 3x3 conv
                + 4 * c * h * w)  # two (1 x cg) @ (cg x HW) cross-spatial matmuls per group


@register(build=same_channels(channel_params=2, adapt=_adapt), attention=True, flops=_flops,
          reference=Reference("Ouyang et al., Efficient Multi-Scale Attention Module, ICASSP 2023",
                              "YOLOonMe/EMA-attention-module",
                              "H/W pools are means (same values, dynamic ONNX); a yaml without factor gets the "
                              "largest divisor of C <= 32"))
class EMA(nn.Module):
    def __init__(self, channels, c2=None, factor=32):
        super().__init__()
        if factor < 1 or channels % factor:
            raise ValueError(f"EMA: factor {factor} must divide channels {channels}")
        self.groups = factor
        cg = channels // factor
        self.softmax = nn.Softmax(-1)  # parity with the official modules; forward uses an fp32 softmax
        self.gn = nn.GroupNorm(cg, cg)
        self.conv1x1 = nn.Conv2d(cg, cg, kernel_size=1, stride=1, padding=0)
        self.conv3x3 = nn.Conv2d(cg, cg, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        b, c, h, w = x.shape
        cg = self.conv1x1.in_channels
        gx = x.reshape(-1, cg, h, w)  # (B*G, C/G, H, W)
        x_h = gx.mean(3, keepdim=True)
        x_w = gx.mean(2, keepdim=True).transpose(2, 3)
        hw = self.conv1x1(torch.cat([x_h, x_w], dim=2))
        a_h, a_w = hw[:, :, :h], hw[:, :, h:].transpose(2, 3)
        x1 = self.gn(gx * a_h.sigmoid() * a_w.sigmoid())
        x2 = self.conv3x3(gx)
        # cross-spatial learning: each branch's softmaxed global descriptor weights the other branch's map
        q1 = _softmax32(x1.mean((2, 3))).unsqueeze(1)  # (B*G, 1, C/G)
        q2 = _softmax32(x2.mean((2, 3))).unsqueeze(1)
        weights = torch.matmul(q1, x2.flatten(2)) + torch.matmul(q2, x1.flatten(2))  # (B*G, 1, HW)
        return (gx * weights.reshape(-1, 1, h, w).sigmoid()).reshape(x.shape)
