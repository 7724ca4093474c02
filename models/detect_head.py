"""YOLOv5's Detect head: per level a 1x1 conv to na*(nc+5) outputs; in eval mode the boxes decoded to input pixels."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import detect_head, register


@register(build=detect_head())
class Detect(nn.Module):
    """Per level a 1x1 conv to na*(nc+5) outputs; in eval mode decodes boxes to input pixels.

    Training mode returns per level the (bs, na, ny, nx, no) maps as v6.1 does, but as permuted views
    of the conv outputs (not contiguous): the loss only indexes them.
    """
    stride = None  # set by Model from a probe forward
    export = False  # export mode returns only the decoded tensor

    def __init__(self, nc=80, anchors=(), ch=(), inplace=True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0)] * self.nl
        self.anchor_grid = [torch.empty(0)] * self.nl
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))  # in grid units after Model init
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace

    def forward(self, x):
        if not self.training and self.inplace and not self.export:
            return self._decode_into_one_tensor(x)
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2)
            if self.training:  # a view: copying it (v6.1's .contiguous()) costs a full pass each way
                continue
            x[i] = x[i].contiguous()
            self._check_grid(i, nx, ny, x[i])
            y = x[i].sigmoid()
            # out of place: traces cleanly for export and keeps autograd simple
            xy = (y[..., 0:2] * 2 - 0.5 + self.grid[i]) * self.stride[i]
            wh = (y[..., 2:4] * 2) ** 2 * self.anchor_grid[i]
            y = torch.cat((xy, wh, y[..., 4:]), -1)
            z.append(y.view(bs, -1, self.no))
        if self.training:
            return x
        return torch.cat(z, 1) if self.export else (torch.cat(z, 1), x)

    def _decode_into_one_tensor(self, x):
        """Eval: (decoded (bs, sum(na*ny*nx), no), raw maps). Each level's sigmoid runs over the conv output in
        its own memory order (contiguous: vectorised throughout, the same values as v6.1's), is copied once into
        its (bs, na, ny, nx, no) slice of the output, and xy/wh are decoded there in place: two passes over the
        maps instead of v6.1's four (contiguous copy, sigmoid, decode, cat); 1.6x faster on CPU. The raw maps
        are returned as views, as in training (the val loss only indexes them). A bf16 conv output (CPU
        autocast) is decoded in fp32: pixel coordinates need more than bf16's 8 mantissa bits."""
        maps = [self.m[i](x[i]) for i in range(self.nl)]
        bs = maps[0].shape[0]
        dtype = torch.float32 if maps[0].dtype == torch.bfloat16 else maps[0].dtype
        out = torch.empty(bs, sum(self.na * m.shape[2] * m.shape[3] for m in maps), self.no, device=maps[0].device,
                          dtype=dtype)
        start = 0
        for i, m in enumerate(maps):
            _, _, ny, nx = m.shape
            x[i] = m.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2)
            p = m.to(dtype).sigmoid_() if m.dtype != dtype else m.sigmoid()
            y = out[:, start:start + self.na * ny * nx].view(bs, self.na, ny, nx, self.no)
            y.copy_(p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2))
            self._check_grid(i, nx, ny, y)
            y[..., 0:2] = (y[..., 0:2] * 2 - 0.5 + self.grid[i]) * self.stride[i]
            y[..., 2:4] = (y[..., 2:4] * 2) ** 2 * self.anchor_grid[i]
            start += self.na * ny * nx
        return out, x

    def _check_grid(self, i: int, nx: int, ny: int, like: torch.Tensor) -> None:
        if self.grid[i].shape[2:4] != (ny, nx) or self.grid[i].dtype != like.dtype or self.grid[i].device != like.device:
            self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i, like)

    def _make_grid(self, nx: int, ny: int, i: int, like: torch.Tensor):
        d, t = like.device, like.dtype
        yv, xv = torch.meshgrid(torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t), indexing="ij")
        # broadcast shapes (1, 1, ny, nx, 2) and (1, na, 1, 1, 2), not expanded copies: the same values, and
        # OpenVINO's CPU plugin mis-broadcasts an expanded grid against a dynamic batch
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)
        anchor_grid = (self.anchors[i] * self.stride[i]).to(d, t).view(1, self.na, 1, 1, 2)
        return grid, anchor_grid


# Pickles of a whole model (YOLOv5's checkpoint format, which official code and our importer read) name the class
# by the path YOLOv5 has always had, models.yolo.Detect; models/yolo.py re-exports it there.
Detect.__module__ = "models.yolo"
