"""D-LKA: deformable large-kernel attention (Azad et al., WACV 2024), after xmindflow/deformableLKA
`2D/deformable_LKA/deformable_LKA.py`: `deformable_LKA(dim)` and `deformable_LKA_Attention(d_model)`.

VAN's LKA (depthwise 5x5, depthwise 7x7 with dilation 3, 1x1, times the input) with both depthwise convs
deformable (`torchvision.ops.DeformConv2d`, no bias); each offset field comes from a full conv with the
same kernel. `deformable_LKA_Attention` adds 1x1 + GELU before, 1x1 after and the residual; it is the
yaml block 'DLKA'. Keys as the official code (`conv0.offset_net`, `conv0.deform_conv`, ...).

Low precision and export: torchvision's deform_conv2d has no bfloat16 kernel, so bf16 runs in fp32 and is
cast back. Under ONNX export the deformable conv is written as grid_sample (bilinear, zero padding: the
same sampling rule as torchvision) plus a depthwise tap sum, which needs opset >= 16 (the registrations'
min_opset) and runs in onnxruntime; ONNX's own DeformConv (opset 19) is not used.

FLOPs: torch's counter has no formula for torchvision::deform_conv2d; the registrations name the rule in
models/attention/_op_flops.py (the conv's multiply-adds plus 4 bilinear taps per sampled value, 2 FLOPs
each, the same convention as its grid_sample rule).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.attention._op_flops import DEFORM_CONV
from models.registry import Reference, register, same_channels

__all__ = ["deformable_LKA", "deformable_LKA_Attention"]


def deform_conv_by_grid_sample(x, offset, weight, padding, dilation):
    """Depthwise deformable conv (stride 1) from grid_sample; matches torchvision's bilinear zero-padded sampling."""
    b, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    k = kh * kw
    ys = torch.arange(h, device=x.device, dtype=torch.float32).view(1, 1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, 1, w)
    ti = torch.arange(kh, device=x.device, dtype=torch.float32).repeat_interleave(kw).view(1, k, 1, 1)
    tj = torch.arange(kw, device=x.device, dtype=torch.float32).repeat(kh).view(1, k, 1, 1)
    off = offset.float().reshape(b, k, 2, h, w)
    py = ys - padding[0] + ti * dilation[0] + off[:, :, 0]  # (B, K, H, W) sample rows in pixels
    px = xs - padding[1] + tj * dilation[1] + off[:, :, 1]
    # align_corners=False normalisation (valid at size 1): pixel p -> (2p + 1) / size - 1
    grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1).reshape(b, k * h, w, 2)
    sampled = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = torch.einsum("bckhw,ck->bchw", sampled.reshape(b, c, k, h, w), weight.float().reshape(c, k))
    return out.to(x.dtype)


class DeformConv(nn.Module):
    def __init__(self, in_channels, groups, kernel_size=(3, 3), padding=1, stride=1, dilation=1, bias=True):
        super().__init__()
        self.offset_net = nn.Conv2d(in_channels, 2 * kernel_size[0] * kernel_size[1], kernel_size=kernel_size,
                                    padding=padding, stride=stride, dilation=dilation, bias=True)
        from torchvision.ops import DeformConv2d  # imported on use: the package import is slow (utils/tv_ops.py)
        self.deform_conv = DeformConv2d(in_channels, in_channels, kernel_size=kernel_size, padding=padding,
                                        groups=groups, stride=stride, dilation=dilation, bias=False)

    def forward(self, x):
        offsets = self.offset_net(x)
        dc = self.deform_conv
        if torch.onnx.is_in_onnx_export():
            if dc.groups != dc.in_channels or dc.stride != (1, 1):
                raise RuntimeError("D-LKA export path supports depthwise, stride-1 deformable convs only")
            return deform_conv_by_grid_sample(x, offsets, dc.weight, dc.padding, dc.dilation)
        if x.dtype == torch.bfloat16 or offsets.dtype != x.dtype:
            # torchvision has no bf16 kernel, and under autocast the offsets come out bf16 while x is fp32:
            # run the deformable conv in fp32 outside autocast and cast back to the input's dtype.
            from torchvision.ops import deform_conv2d
            with torch.autocast(x.device.type, enabled=False):
                out = deform_conv2d(x.float(), offsets.float(), dc.weight.float(), None, dc.stride, dc.padding,
                                    dc.dilation)
            return out.to(x.dtype)
        return dc(x, offsets)


def _dlka_flops(c, h, w) -> int:
    # offset convs (full, 2K outputs), deformable depthwise convs (taps + bilinear sampling), the 1x1
    total = 0
    for k in (25, 49):
        total += 2 * c * 2 * k * k * h * w + 2 * c * k * h * w + 2 * 4 * c * k * h * w
    return total + 2 * c * c * h * w


def _flops_lka(m, shape) -> int:
    b, c, h, w = shape
    return b * _dlka_flops(c, h, w)


def _flops_attention(m, shape) -> int:
    b, c, h, w = shape
    return b * (_dlka_flops(c, h, w) + 2 * 2 * c * c * h * w)


_REFERENCE = Reference("Azad et al., Beyond Self-Attention: Deformable Large Kernel Attention, WACV 2024",
                       "xmindflow/deformableLKA 2D/deformable_LKA/deformable_LKA.py",
                       "bf16 runs the deformable convs in fp32; ONNX export writes them as grid_sample")
_FACTS = dict(attention=True, min_opset=16, op_flops=DEFORM_CONV, reference=_REFERENCE)  # GridSample on export


@register(build=same_channels(channel_params=1), flops=_flops_lka, **_FACTS)
class deformable_LKA(nn.Module):  # noqa: N801
    def __init__(self, dim):
        super().__init__()
        self.conv0 = DeformConv(dim, kernel_size=(5, 5), padding=2, groups=dim)
        self.conv_spatial = DeformConv(dim, kernel_size=(7, 7), stride=1, padding=9, groups=dim, dilation=3)
        self.conv1 = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        return x * self.conv1(self.conv_spatial(self.conv0(x)))


@register("DLKA", build=same_channels(channel_params=1), flops=_flops_attention, **_FACTS)
class deformable_LKA_Attention(nn.Module):  # noqa: N801
    def __init__(self, d_model):
        super().__init__()
        self.proj_1 = nn.Conv2d(d_model, d_model, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = deformable_LKA(d_model)
        self.proj_2 = nn.Conv2d(d_model, d_model, 1)

    def forward(self, x):
        return self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x)))) + x
