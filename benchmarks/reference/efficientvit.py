"""Official-style EfficientViT CGA / LocalWindowAttention, written from the spec attention.md, section 5.

A plain reference for equality tests and the benchmark. It keeps the official behaviour on purpose:
* the bias table and its (N, N) index are built for one fixed `resolution`; other sizes fail;
* the `ab` cache: train(False) stores attention_biases[:, idxs] as a plain attribute, train(True)
  deletes it (or creates it when absent), forward uses it when not training, and train() returns None;
* LocalWindowAttention is the downstream (detection) variant: no size assert, inner resolution =
  window, zero padding on the bottom/right that takes part in attention unmasked.
Same state_dict keys as models/attention/efficientvit.py.
"""
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F


class RefConv2d_BN(nn.Sequential):
    def __init__(self, a, b, ks=1, stride=1, pad=0, dilation=1, groups=1, bn_weight_init=1, resolution=-10000):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, dilation, groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.constant_(self.bn.bias, 0)


class RefCascadedGroupAttention(nn.Module):
    def __init__(self, dim, key_dim, num_heads=8, attn_ratio=4, resolution=14, kernels=(5, 5, 5, 5)):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        self.key_dim = key_dim
        self.d = int(attn_ratio * key_dim)
        self.attn_ratio = attn_ratio
        self.qkvs = nn.ModuleList([RefConv2d_BN(dim // num_heads, self.key_dim * 2 + self.d) for _ in range(num_heads)])
        self.dws = nn.ModuleList([RefConv2d_BN(self.key_dim, self.key_dim, kernels[i], 1, kernels[i] // 2,
                                               groups=self.key_dim) for i in range(num_heads)])
        self.proj = nn.Sequential(nn.ReLU(), RefConv2d_BN(self.d * num_heads, dim, bn_weight_init=0))
        # Offsets numbered in order of first appearance over all point pairs (row-major).
        points = list(itertools.product(range(resolution), range(resolution)))
        offsets, idxs = {}, []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                if off not in offsets:
                    offsets[off] = len(offsets)
                idxs.append(offsets[off])
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.LongTensor(idxs).view(len(points), len(points)))

    @torch.no_grad()
    def train(self, mode=True):  # official quirk: returns None, caches `ab` in eval
        super().train(mode)
        if mode and hasattr(self, "ab"):
            del self.ab
        else:
            self.ab = self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, x):
        B, C, H, W = x.shape
        trainingab = self.attention_biases[:, self.attention_bias_idxs]
        feats_in = x.chunk(len(self.qkvs), dim=1)
        feats_out = []
        feat = feats_in[0]
        for i, qkv in enumerate(self.qkvs):
            if i > 0:
                feat = feat + feats_in[i]
            feat = qkv(feat)
            q, k, v = feat.view(B, -1, H, W).split([self.key_dim, self.key_dim, self.d], dim=1)
            q = self.dws[i](q)
            q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)
            attn = (q.transpose(-2, -1) @ k) * self.scale + (trainingab[i] if self.training else self.ab[i])
            attn = attn.softmax(dim=-1)
            feat = (v @ attn.transpose(-2, -1)).view(B, self.d, H, W)
            feats_out.append(feat)
        return self.proj(torch.cat(feats_out, 1))


class RefLocalWindowAttention(nn.Module):
    def __init__(self, dim, key_dim, num_heads=8, attn_ratio=4, resolution=14, window_resolution=7,
                 kernels=(5, 5, 5, 5)):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.resolution = resolution
        self.window_resolution = window_resolution
        self.attn = RefCascadedGroupAttention(dim, key_dim, num_heads, attn_ratio=attn_ratio,
                                              resolution=window_resolution, kernels=kernels)

    def forward(self, x):
        B, C, H, W = x.shape
        wr = self.window_resolution
        if H <= wr and W <= wr:
            return self.attn(x)
        x = x.permute(0, 2, 3, 1)
        pad_b = (wr - H % wr) % wr
        pad_r = (wr - W % wr) % wr
        padding = pad_b > 0 or pad_r > 0
        if padding:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        pH, pW = H + pad_b, W + pad_r
        nH, nW = pH // wr, pW // wr
        x = x.view(B, nH, wr, nW, wr, C).transpose(2, 3).reshape(B * nH * nW, wr, wr, C).permute(0, 3, 1, 2)
        x = self.attn(x)
        x = x.permute(0, 2, 3, 1).view(B, nH, nW, wr, wr, C).transpose(2, 3).reshape(B, pH, pW, C)
        if padding:
            x = x[:, :H, :W].contiguous()
        return x.permute(0, 3, 1, 2)
