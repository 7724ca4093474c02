"""HAT's channel attention block (Chen et al., CVPR 2023), after XPixelGroup/HAT `hat/archs/hat_arch.py`.

`CAB(num_feat, compress_ratio=3, squeeze_factor=30)`: 3x3 conv C -> C/3, GELU, 3x3 conv -> C, then an
RCAN-style `ChannelAttention(num_feat, squeeze_factor)` (global pool, 1x1 C -> C/s, ReLU, 1x1, sigmoid).
Keys `cab.0`, `cab.2`, `cab.3.attention.1`, `cab.3.attention.3` as the official code. In HAT the CAB
output is added (x0.01) to a window-attention branch; as a yaml block it replaces its input (no residual),
as the official module does. From a yaml without squeeze_factor: 30, or C when C < 30 (one hidden unit).
"""
from __future__ import annotations

import torch.nn as nn

from models.registry import Reference, chain, needs_units, register, same_channels

__all__ = ["CAB"]


class ChannelAttention(nn.Module):
    def __init__(self, num_feat, squeeze_factor=16):
        super().__init__()
        hidden = num_feat // squeeze_factor
        if hidden < 1:
            raise ValueError(f"HAT ChannelAttention: squeeze_factor {squeeze_factor} leaves no channels of {num_feat}")
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, hidden, 1, padding=0),
                                       nn.ReLU(inplace=True), nn.Conv2d(hidden, num_feat, 1, padding=0), nn.Sigmoid())

    def forward(self, x):
        return x * self.attention(x)


def _default_squeeze(ctx, args, kwargs):
    """squeeze_factor 30, or C when C < 30 (one hidden unit), when the yaml does not give it."""
    if len(args) < 3 and "squeeze_factor" not in kwargs:
        compress = args[1] if len(args) > 1 else kwargs.get("compress_ratio", 3)
        args[1:] = [compress, min(30, ctx.c1)]
        kwargs.pop("compress_ratio", None)


_adapt = chain(_default_squeeze, needs_units("CAB", "compress_ratio", 1, 3, "channels"),
               needs_units("CAB", "squeeze_factor", 2, 30, "channels"))


def _flops(m: "CAB", shape) -> int:
    b, c, h, w = shape
    mid = m.cab[0].out_channels
    hidden = m.cab[3].attention[1].out_channels
    return b * (2 * 2 * 9 * c * mid * h * w + 2 * 2 * c * hidden)


@register(build=same_channels(channel_params=1, adapt=_adapt), attention=True, flops=_flops,
          reference=Reference("Chen et al., Activating More Pixels in Image Super-Resolution Transformer (HAT), "
                              "CVPR 2023", "XPixelGroup/HAT hat/archs/hat_arch.py (CAB)",
                              "as a yaml block it replaces its input (in HAT it is added x0.01 to window attention); "
                              "a yaml without squeeze_factor gets min(30, C)"))
class CAB(nn.Module):
    def __init__(self, num_feat, compress_ratio=3, squeeze_factor=30):
        super().__init__()
        if num_feat // compress_ratio < 1:
            raise ValueError(f"CAB: compress_ratio {compress_ratio} leaves no channels of {num_feat}")
        mid = num_feat // compress_ratio
        self.cab = nn.Sequential(nn.Conv2d(num_feat, mid, 3, 1, 1), nn.GELU(), nn.Conv2d(mid, num_feat, 3, 1, 1),
                                 ChannelAttention(num_feat, squeeze_factor))

    def forward(self, x):
        return self.cab(x)
