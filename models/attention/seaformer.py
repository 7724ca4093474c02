"""SeaFormer squeeze-enhanced axial attention (Wan et al., ICLR 2023), after fudan-zvg/SeaFormer
`seaformer-cls/seaformer.py`: `Sea_Attention(dim, key_dim, num_heads, attn_ratio=2, activation=None, norm_cfg=BN)`.

Row attention runs over the W-averaged sequence (H tokens), column attention over the H-averaged one
(W tokens), each with learnable axial position embeddings of length 16 linearly resized to the actual
length; a detail branch (depthwise 3x3 + pointwise on [q, k, v]) is gated by a hard sigmoid of the result.
Keys as the official code (`to_q.c`, `to_q.bn`, `proj.1.c`, `pos_emb_rowq.pos_embed`, ...).

Fixes: the official default `activation=None` crashes (it is called); here None means nn.ReLU6, the
activation SeaFormer's models pass. A string ('ReLU', 'GELU', ...) names a torch.nn activation for yamls.
mmcv's `build_norm_layer` is replaced by BatchNorm2d ('BN', 'BN2d', 'SyncBN' accepted).
From a yaml without them: key_dim 16, num_heads = min(8, C // 16) (C=64 gives the paper-style 64/16/4).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.attention.coordatt import h_sigmoid  # the same parameter-free hard sigmoid
from models.attention._op_flops import SDPA_CPU
from models.attention._sdpa import fused_sdpa, tracing
from models.registry import Reference, register, same_channels

__all__ = ["Sea_Attention"]

_NORMS = ("BN", "BN2d", "SyncBN")


def _norm(norm_cfg, channels):
    kind = (norm_cfg or {}).get("type", "BN")
    if kind not in _NORMS:
        raise ValueError(f"Sea_Attention: norm_cfg type {kind!r} is not supported (use one of {_NORMS})")
    return nn.BatchNorm2d(channels)


def _activation(activation):
    if activation is None:
        return nn.ReLU6
    if isinstance(activation, str):
        cls = getattr(nn, activation, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"Sea_Attention: activation {activation!r} is not a torch.nn module")
        return cls
    return activation


class Conv2d_BN(nn.Sequential):  # noqa: N801
    def __init__(self, a, b, ks=1, stride=1, pad=0, dilation=1, groups=1, bn_weight_init=1, bias=False,
                 norm_cfg=None):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, dilation, groups, bias=bias))
        bn = _norm(norm_cfg, b)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.constant_(bn.bias, 0)
        self.add_module("bn", bn)


class SqueezeAxialPositionalEmbedding(nn.Module):
    def __init__(self, dim, shape):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn([1, dim, shape]))

    def forward(self, x):  # x: (B, C, N)
        pos = F.interpolate(self.pos_embed.to(x.dtype), size=x.shape[-1], mode="linear", align_corners=False)
        return x + pos


def _adapt(ctx, args, kwargs):
    if len(args) < 2 and "key_dim" not in kwargs:
        args.append(16)
    if len(args) < 3 and "num_heads" not in kwargs:
        args.append(max(1, min(8, ctx.c1 // 16)))
    for i, name in ((1, "key_dim"), (2, "num_heads")):
        v = args[i] if len(args) > i else kwargs[name]
        if not isinstance(v, int) or v < 1:
            raise ctx.error(f"Sea_Attention {name} must be a positive integer, got {v!r}")


def _flops(m: "Sea_Attention", shape) -> int:
    b, c, h, w = shape
    nh, dh = m.nh_kd, m.dh
    mid = 2 * nh + dh
    per_pixel = 2 * c * mid + 2 * 9 * mid + 2 * mid * c + 2 * dh * c  # to_q/k/v, dwconv, pwconv, proj
    axial = sum(2 * n * n * (nh + dh) + 2 * n * dh * dh for n in (h, w))  # attention + proj_encode per axis
    return b * (h * w * per_pixel + axial)


@register(build=same_channels(channel_params=1, adapt=_adapt), attention=True, flops=_flops, op_flops=SDPA_CPU,
          reference=Reference("Wan et al., SeaFormer: Squeeze-enhanced Axial Transformer, ICLR 2023",
                              "fudan-zvg/SeaFormer seaformer-cls/seaformer.py (Sea_Attention)",
                              "activation=None means ReLU6 (official: crashes); mmcv norm replaced by BatchNorm2d"))
class Sea_Attention(nn.Module):  # noqa: N801
    """Axial attention by scaled_dot_product_attention where it has a fused kernel (models/attention/_sdpa.py:
    CUDA, or key_dim = head width on CPU); elsewhere, with `explicit_attention = True` on an instance and while
    tracing for export, the official matmul/softmax/matmul."""

    explicit_attention = False

    def __init__(self, dim, key_dim, num_heads, attn_ratio=2, activation=None, norm_cfg=None):
        super().__init__()
        act = _activation(activation)
        norm_cfg = norm_cfg or dict(type="BN", requires_grad=True)
        self.num_heads, self.key_dim, self.attn_ratio = num_heads, key_dim, attn_ratio
        self.scale = key_dim ** -0.5
        self.nh_kd = nh_kd = key_dim * num_heads
        self.d = int(attn_ratio * key_dim)
        self.dh = dh = self.d * num_heads
        mid = 2 * nh_kd + dh
        self.to_q = Conv2d_BN(dim, nh_kd, 1, norm_cfg=norm_cfg)
        self.to_k = Conv2d_BN(dim, nh_kd, 1, norm_cfg=norm_cfg)
        self.to_v = Conv2d_BN(dim, dh, 1, norm_cfg=norm_cfg)
        self.proj = nn.Sequential(act(), Conv2d_BN(dh, dim, bn_weight_init=0, norm_cfg=norm_cfg))
        self.proj_encode_row = nn.Sequential(act(), Conv2d_BN(dh, dh, bn_weight_init=0, norm_cfg=norm_cfg))
        self.pos_emb_rowq = SqueezeAxialPositionalEmbedding(nh_kd, 16)
        self.pos_emb_rowk = SqueezeAxialPositionalEmbedding(nh_kd, 16)
        self.proj_encode_column = nn.Sequential(act(), Conv2d_BN(dh, dh, bn_weight_init=0, norm_cfg=norm_cfg))
        self.pos_emb_columnq = SqueezeAxialPositionalEmbedding(nh_kd, 16)
        self.pos_emb_columnk = SqueezeAxialPositionalEmbedding(nh_kd, 16)
        self.dwconv = Conv2d_BN(mid, mid, ks=3, stride=1, pad=1, dilation=1, groups=mid, norm_cfg=norm_cfg)
        self.act = act()
        self.pwconv = Conv2d_BN(mid, dim, ks=1, norm_cfg=norm_cfg)
        self.sigmoid = h_sigmoid()

    def _axial(self, q, k, v, pos_q, pos_k):
        """Attention along one axis; q, k: (B, nh_kd, N), v: (B, dh, N) -> (B, dh, N)."""
        b, n = q.shape[0], q.shape[-1]
        qs = pos_q(q).reshape(b, self.num_heads, -1, n).transpose(2, 3)  # (B, h, N, kd)
        ks = pos_k(k).reshape(b, self.num_heads, -1, n)  # (B, h, kd, N)
        vs = v.reshape(b, self.num_heads, -1, n).transpose(2, 3)  # (B, h, N, d)
        if self.explicit_attention or tracing() or not fused_sdpa(qs, vs):
            attn = torch.softmax((torch.matmul(qs, ks) * self.scale).float(), dim=-1).to(vs.dtype)
            out = torch.matmul(attn, vs)
        else:  # contiguous: the fused CPU kernel needs unit stride in the last axis
            qs, kt, vs = qs.contiguous(), ks.transpose(2, 3).contiguous(), vs.contiguous()
            out = F.scaled_dot_product_attention(qs, kt, vs, scale=self.scale)
        return out.transpose(2, 3).reshape(b, self.dh, n)

    def forward(self, x):
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        detail = self.pwconv(self.act(self.dwconv(torch.cat([q, k, v], dim=1))))
        row = self._axial(q.mean(-1), k.mean(-1), v.mean(-1), self.pos_emb_rowq, self.pos_emb_rowk)
        col = self._axial(q.mean(-2), k.mean(-2), v.mean(-2), self.pos_emb_columnq, self.pos_emb_columnk)
        xx = self.proj_encode_row(row.unsqueeze(-1)) + self.proj_encode_column(col.unsqueeze(-2))
        return self.sigmoid(self.proj(v + xx)) * detail
