"""Official-style DAT++ DAttentionBaseline, written from the spec attention.md, section 6.

A plain reference for equality tests and the benchmark. It keeps the official behaviour on purpose:
the half-cell reference points (i + 0.5)/(Hk - 1)*2 - 1, the offset range built with torch.tensor in the
default float32 dtype (so .half() fails), in-place grid helpers on views, 1/(Hk - 1) as a Python
division (H or W <= 2 with stride 2 fails), in-place Dropout, and the (y, pos, reference) tuple return.
No einops: its rearranges are written as reshapes. Same state_dict keys as models/attention/dat.py.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RefLayerNormProxy(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class RefDAttentionBaseline(nn.Module):
    def __init__(self, q_size, kv_size, n_heads, n_head_channels, n_groups, attn_drop, proj_drop, stride,
                 offset_range_factor, use_pe, dwc_pe, no_off, fixed_pe, ksize, log_cpb):
        super().__init__()
        self.dwc_pe = dwc_pe
        self.n_head_channels = n_head_channels
        self.scale = n_head_channels ** -0.5
        self.n_heads = n_heads
        self.q_h, self.q_w = q_size
        self.kv_h, self.kv_w = self.q_h // stride, self.q_w // stride
        self.nc = n_head_channels * n_heads
        self.n_groups = n_groups
        self.n_group_channels = self.nc // self.n_groups
        self.n_group_heads = self.n_heads // self.n_groups
        self.use_pe = use_pe
        self.fixed_pe = fixed_pe
        self.no_off = no_off
        self.offset_range_factor = offset_range_factor
        self.ksize = ksize
        self.log_cpb = log_cpb
        self.stride = stride
        pad_size = ksize // 2 if ksize != stride else 0
        cg = self.n_group_channels
        self.conv_offset = nn.Sequential(
            nn.Conv2d(cg, cg, ksize, stride, pad_size, groups=cg),
            RefLayerNormProxy(cg),
            nn.GELU(),
            nn.Conv2d(cg, 2, 1, 1, 0, bias=False))
        if self.no_off:
            for p in self.conv_offset.parameters():
                p.requires_grad_(False)
        self.proj_q = nn.Conv2d(self.nc, self.nc, 1, 1, 0)
        self.proj_k = nn.Conv2d(self.nc, self.nc, 1, 1, 0)
        self.proj_v = nn.Conv2d(self.nc, self.nc, 1, 1, 0)
        self.proj_out = nn.Conv2d(self.nc, self.nc, 1, 1, 0)
        self.proj_drop = nn.Dropout(proj_drop, inplace=True)
        self.attn_drop = nn.Dropout(attn_drop, inplace=True)
        if self.use_pe and not self.no_off:
            if self.dwc_pe:
                self.rpe_table = nn.Conv2d(self.nc, self.nc, 3, 1, 1, groups=self.nc)
            elif self.fixed_pe:
                self.rpe_table = nn.Parameter(torch.zeros(self.n_heads, self.q_h * self.q_w, self.kv_h * self.kv_w))
                nn.init.trunc_normal_(self.rpe_table, std=0.01)
            elif self.log_cpb:
                self.rpe_table = nn.Sequential(nn.Linear(2, 32, bias=True), nn.ReLU(inplace=True),
                                               nn.Linear(32, self.n_group_heads, bias=False))
            else:
                self.rpe_table = nn.Parameter(torch.zeros(self.n_heads, self.q_h * 2 - 1, self.q_w * 2 - 1))
                nn.init.trunc_normal_(self.rpe_table, std=0.01)
        else:
            self.rpe_table = None

    @torch.no_grad()
    def _get_ref_points(self, H_key, W_key, B, dtype, device):
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, H_key - 0.5, H_key, dtype=dtype, device=device),
            torch.linspace(0.5, W_key - 0.5, W_key, dtype=dtype, device=device), indexing="ij")
        ref = torch.stack((ref_y, ref_x), -1)
        ref[..., 1].div_(W_key - 1.0).mul_(2.0).sub_(1.0)
        ref[..., 0].div_(H_key - 1.0).mul_(2.0).sub_(1.0)
        return ref[None, ...].expand(B * self.n_groups, -1, -1, -1)

    @torch.no_grad()
    def _get_q_grid(self, H, W, B, dtype, device):
        ref_y, ref_x = torch.meshgrid(torch.arange(0, H, dtype=dtype, device=device),
                                      torch.arange(0, W, dtype=dtype, device=device), indexing="ij")
        ref = torch.stack((ref_y, ref_x), -1)
        ref[..., 1].div_(W - 1.0).mul_(2.0).sub_(1.0)
        ref[..., 0].div_(H - 1.0).mul_(2.0).sub_(1.0)
        return ref[None, ...].expand(B * self.n_groups, -1, -1, -1)

    def forward(self, x):
        B, C, H, W = x.size()
        dtype, device = x.dtype, x.device
        g, cg, hg = self.n_groups, self.n_group_channels, self.n_group_heads
        q = self.proj_q(x)
        q_off = q.reshape(B * g, cg, H, W)
        offset = self.conv_offset(q_off).contiguous()
        Hk, Wk = offset.size(2), offset.size(3)
        n_sample = Hk * Wk
        if self.offset_range_factor >= 0 and not self.no_off:
            offset_range = torch.tensor([1.0 / (Hk - 1.0), 1.0 / (Wk - 1.0)], device=device).reshape(1, 2, 1, 1)
            offset = offset.tanh().mul(offset_range).mul(self.offset_range_factor)
        offset = offset.permute(0, 2, 3, 1)
        reference = self._get_ref_points(Hk, Wk, B, dtype, device)
        if self.no_off:
            offset = offset.fill_(0.0)
        if self.offset_range_factor >= 0:
            pos = offset + reference
        else:
            pos = (offset + reference).clamp(-1.0, +1.0)
        if self.no_off:
            x_sampled = F.avg_pool2d(x, kernel_size=self.stride, stride=self.stride)
            assert x_sampled.size(2) == Hk and x_sampled.size(3) == Wk
        else:
            x_sampled = F.grid_sample(input=x.reshape(B * g, cg, H, W), grid=pos[..., (1, 0)],
                                      mode="bilinear", align_corners=True)
        x_sampled = x_sampled.reshape(B, C, 1, n_sample)
        q = q.reshape(B * self.n_heads, self.n_head_channels, H * W)
        k = self.proj_k(x_sampled).reshape(B * self.n_heads, self.n_head_channels, n_sample)
        v = self.proj_v(x_sampled).reshape(B * self.n_heads, self.n_head_channels, n_sample)
        attn = torch.einsum("bcm,bcn->bmn", q, k)
        attn = attn.mul(self.scale)
        if self.use_pe and not self.no_off:
            if self.dwc_pe:
                residual_lepe = self.rpe_table(q.reshape(B, C, H, W)).reshape(
                    B * self.n_heads, self.n_head_channels, H * W)
            elif self.fixed_pe:
                attn_bias = self.rpe_table[None, ...].expand(B, -1, -1, -1)
                attn = attn + attn_bias.reshape(B * self.n_heads, H * W, n_sample)
            elif self.log_cpb:
                q_grid = self._get_q_grid(H, W, B, dtype, device)
                displacement = (q_grid.reshape(B * g, H * W, 2).unsqueeze(2)
                                - pos.reshape(B * g, n_sample, 2).unsqueeze(1)).mul(4.0)
                displacement = torch.sign(displacement) * torch.log2(torch.abs(displacement) + 1.0) / math.log2(8.0)
                attn_bias = self.rpe_table(displacement)
                attn = attn + attn_bias.permute(0, 3, 1, 2).reshape(B * self.n_heads, H * W, n_sample)
            else:
                rpe_bias = self.rpe_table[None, ...].expand(B, -1, -1, -1)
                q_grid = self._get_q_grid(H, W, B, dtype, device)
                displacement = (q_grid.reshape(B * g, H * W, 2).unsqueeze(2)
                                - pos.reshape(B * g, n_sample, 2).unsqueeze(1)).mul(0.5)
                attn_bias = F.grid_sample(input=rpe_bias.reshape(B * g, hg, 2 * self.q_h - 1, 2 * self.q_w - 1),
                                          grid=displacement[..., (1, 0)], mode="bilinear", align_corners=True)
                attn = attn + attn_bias.reshape(B * self.n_heads, H * W, n_sample)
        attn = F.softmax(attn, dim=2)
        attn = self.attn_drop(attn)
        out = torch.einsum("bmn,bcn->bcm", attn, v)
        if self.use_pe and self.dwc_pe:
            out = out + residual_lepe
        out = out.reshape(B, C, H, W)
        y = self.proj_drop(self.proj_out(out))
        return y, pos.reshape(B, g, Hk, Wk, 2), reference.reshape(B, g, Hk, Wk, 2)
