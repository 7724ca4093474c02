"""ECA: Efficient Channel Attention (Wang et al., CVPR 2020), official `eca_layer(channel, k_size=3)`.

From a yaml with no k_size the kernel follows the paper's adaptive rule,
k = nearest odd of |log2(C)/gamma + b/gamma| with gamma=2, b=1 (the official layer takes k explicitly).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from models.registry import Reference, register, same_channels

__all__ = ["eca_layer"]


def adaptive_kernel(channels: int, gamma: int = 2, b: int = 1) -> int:
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


def _adapt(ctx, args, kwargs):
    if len(args) < 2 and "k_size" not in kwargs:
        args.append(adaptive_kernel(ctx.c1))
    k = args[1] if len(args) > 1 else kwargs["k_size"]
    if not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise ctx.error(f"eca_layer k_size must be a positive odd integer, got {k!r}")


def _flops(m: "eca_layer", shape) -> int:
    b, c = shape[:2]
    return 2 * b * c * m.conv.kernel_size[0]  # the 1-D conv across channels


_REFERENCE = Reference("Wang et al., ECA-Net: Efficient Channel Attention, CVPR 2020",
                       "BangguWu/ECANet models/eca_module.py (eca_layer)",
                       "a yaml without k_size gets the paper's adaptive k from C; forward pools with a mean")


@register("ECA", build=same_channels(channel_params=1, adapt=_adapt), attention=True, flops=_flops,
          reference=_REFERENCE)
@register(build=same_channels(channel_params=1, adapt=_adapt), attention=True, flops=_flops, reference=_REFERENCE)
class eca_layer(nn.Module):  # noqa: N801 (official class name)
    def __init__(self, channel, k_size=3):
        super().__init__()
        if k_size % 2 == 0:
            raise ValueError(f"eca_layer: k_size must be odd, got {k_size}")
        self.avg_pool = nn.AdaptiveAvgPool2d(1)  # kept for module parity; forward uses a mean (same result)
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3)).unsqueeze(1)  # (B, 1, C): channels become the 1-D sequence
        y = self.sigmoid(self.conv(y)).transpose(1, 2).unsqueeze(-1)  # (B, C, 1, 1)
        return x * y
