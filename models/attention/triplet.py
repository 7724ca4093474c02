"""Triplet Attention (Misra et al., WACV 2021): three rotated Z-pool -> 7x7 conv -> BN -> sigmoid gates.

Structure and key names follow the official `MODELS/triplet_attention.py` (ChannelGateH, ChannelGateW,
SpatialGate, each `.spatial.{conv,bn}`), with its BN eps 1e-5 / momentum 0.01 and its operation order
(permute + contiguous, in-place sigmoid, `1/3 * (hw + cw + hc)`), so outputs are bit-identical to the
official module. State dicts of the refactored root variant (`cw/hc/hw.conv.*`) load too: they are
renamed on load (cw -> ChannelGateH, hc -> ChannelGateW, hw -> SpatialGate; see spec section 3).

The constructor's gate_channels, reduction_ratio and pool_types are accepted and ignored, as in the
official code: the block has 300 parameters whatever the channel count. Any H, W >= 1, fp16/bf16 and
ONNX (opset 11+) work.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import Reference, register, same_channels

__all__ = ["TripletAttention"]

# refactored (root triplet_attention.py) prefix -> official MODELS prefix
_NEW_TO_OLD = {"cw.conv.": "ChannelGateH.spatial.", "hc.conv.": "ChannelGateW.spatial.",
               "hw.conv.": "SpatialGate.spatial."}


class _ConvBN(nn.Module):
    """7x7 conv 2 -> 1 (no bias) then BatchNorm2d(1) with the official eps 1e-5 and momentum 0.01."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=True)

    def forward(self, x):
        return self.bn(self.conv(x))


class _Gate(nn.Module):
    """x * sigmoid(BN(conv([max_1(x), mean_1(x)]))): attention over dims 2, 3 from a pool over dim 1."""

    def __init__(self):
        super().__init__()
        self.spatial = _ConvBN()

    def forward(self, x):
        z = torch.cat((x.amax(1, keepdim=True), x.mean(1, keepdim=True)), 1)
        return x * self.spatial(z).sigmoid_()


def triplet_flops(m: "TripletAttention", shape) -> int:
    """The three 7x7 convs: 2 * 98 * B * (C*W + H*C + H*W) (spec section 3; elementwise work not counted)."""
    b, c, h, w = shape
    planes = c * w + h * c + (0 if m.no_spatial else h * w)
    return 2 * 98 * b * planes


@register(build=same_channels(channel_params=1), attention=True, flops=triplet_flops,
          reference=Reference("Misra et al., Rotate to Attend: Convolutional Triplet Attention Module, WACV 2021",
                              "landskape-ai/triplet-attention MODELS/triplet_attention.py",
                              "nothing (bit-identical); the refactored root variant's keys load too"))
class TripletAttention(nn.Module):
    def __init__(self, gate_channels=None, reduction_ratio=16, pool_types=("avg", "max"), no_spatial=False):
        super().__init__()
        self.no_spatial = no_spatial
        self.ChannelGateH = _Gate()  # pools over H: attention on (C, W)
        self.ChannelGateW = _Gate()  # pools over W: attention on (H, C)
        if not no_spatial:
            self.SpatialGate = _Gate()  # pools over C: attention on (H, W)
        self.register_load_state_dict_pre_hook(_rename_refactored_keys)

    def forward(self, x):
        cw = self.ChannelGateH(x.permute(0, 2, 1, 3).contiguous()).permute(0, 2, 1, 3).contiguous()
        hc = self.ChannelGateW(x.permute(0, 3, 2, 1).contiguous()).permute(0, 3, 2, 1).contiguous()
        if self.no_spatial:
            return 1 / 2 * (cw + hc)
        return 1 / 3 * (self.SpatialGate(x) + cw + hc)


def _rename_refactored_keys(module, state_dict, prefix, *unused):
    """Map `cw/hc/hw.conv.*` (refactored official variant) onto our `ChannelGateH/W, SpatialGate.spatial.*`."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        for new, old in _NEW_TO_OLD.items():
            if rest.startswith(new):
                state_dict[prefix + old + rest[len(new):]] = state_dict.pop(key)
                break
