"""What detect.py --visualize shows for an attention block: its own attention or gate maps, read with hooks.

A view is attached to one block instance (forward hooks on the block and its sub-modules; nothing in the block
changes) and, after a forward, `maps()` returns AttentionMaps over the block's input grid. A block gets a view
here by class name: `@register_view("MyBlock")` on a View subclass, next to the others below or in the block's
own file. Blocks without one get GenericView: the least-squares per-pixel ratio of output to input, which is
exactly the gate for blocks of the form x * g(h, w).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.attention._local_attention import reflect_index
from models.attention.acmix import position_grid
from models.attention.efficientvit import from_windows

VIEWS: dict[str, type["View"]] = {}


@dataclass
class AttentionMap:
    name: str  # file-name part: stage{i}_{type}_{name}.png
    title: str  # what the picture shows
    heat: torch.Tensor | None = None  # (B, h, w) over the block's input grid
    vrange: tuple | None = None  # a fixed colour range; None: the map's own min..max (the colour bar shows values)
    points: torch.Tensor | None = None  # (B, N, 2) x, y in [-1, 1] over the input grid (align_corners=True)
    weights: torch.Tensor | None = None  # (B, N) value per point
    grid_hw: tuple = ()  # (h, w) of the grid the points are normalised over


def register_view(*class_names: str):
    def deco(cls):
        for name in class_names:
            VIEWS[name] = cls
        return cls
    return deco


class View:
    """Hooks on one block; `maps()` after a forward; `remove()` when done."""

    def __init__(self, module: nn.Module):
        self.module, self.handles, self.seen = module, [], {}
        self.attach()

    def attach(self) -> None:
        raise NotImplementedError

    def keep(self, module: nn.Module, key: str, what: str = "output") -> None:
        """Store a copy of a sub-module's output (or first input) under `key`. The first call after reset()
        wins: with test-time augmentation that is the unscaled pass. A copy, because blocks may change their
        tensors in place after the call (TripletAttention's sigmoid_)."""
        def hook(m, args, out):
            if key not in self.seen:
                t = out if what == "output" else args[0]
                self.seen[key] = t.detach().clone() if isinstance(t, torch.Tensor) else t
        self.handles.append(module.register_forward_hook(hook))

    def reset(self) -> None:
        self.seen = {}

    def maps(self) -> list[AttentionMap]:
        raise NotImplementedError

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def view_for(module: nn.Module, generic: bool = False) -> View | None:
    """The registered view of this block's class (or a parent class), else GenericView when `generic`."""
    for cls in type(module).__mro__:
        if cls.__name__ in VIEWS:
            return VIEWS[cls.__name__](module)
    return GenericView(module) if generic else None


class GenericView(View):
    """Per pixel the s minimising |y - s x|^2 over channels: the gate of any y = x * g(h, w) block."""

    def attach(self):
        def hook(m, args, out):
            if "x" not in self.seen and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                self.seen["x"], self.seen["y"] = args[0].detach(), out.detach()
        self.handles.append(self.module.register_forward_hook(hook))

    def maps(self):
        x, y = self.seen.get("x"), self.seen.get("y")
        if x is None or x.shape != y.shape or x.ndim != 4:
            return []
        x, y = x.float(), y.float()
        ratio = (x * y).sum(1) / (x * x).sum(1).clamp(min=1e-12)
        return [AttentionMap("attention", "output/input ratio per pixel (least squares over channels)", ratio)]


def _gate(t: torch.Tensor) -> torch.Tensor:
    return t.float().sigmoid()[:, 0]


@register_view("TripletAttention")
class TripletView(View):
    """The three branch gates and the multiplier they make together, (g_hw + g_cw + g_hc) / 3 per element."""

    def attach(self):
        m = self.module
        self.keep(m.ChannelGateH.spatial, "cw")  # (B, 1, C, W): pooled over H
        self.keep(m.ChannelGateW.spatial, "hc")  # (B, 1, H, C): pooled over W
        if not m.no_spatial:
            self.keep(m.SpatialGate.spatial, "hw")  # (B, 1, H, W): pooled over C

    def multiplier(self) -> torch.Tensor:
        """(B, C, H, W) such that the block's output is x * multiplier."""
        cw = _gate(self.seen["cw"]).unsqueeze(2)  # (B, C, 1, W)
        hc = _gate(self.seen["hc"]).permute(0, 2, 1).unsqueeze(3)  # (B, C, H, 1)
        if self.module.no_spatial:
            return (cw + hc) / 2
        return (_gate(self.seen["hw"]).unsqueeze(1) + cw + hc) / 3

    def maps(self):
        if "cw" not in self.seen:
            return []
        out = [AttentionMap("attention", "TripletAttention: mean over channels of the combined gate of its "
                                         "three branches", self.multiplier().mean(1))]
        if not self.module.no_spatial:
            out.append(AttentionMap("spatial_gate", "TripletAttention: spatial (H, W) branch gate",
                                    _gate(self.seen["hw"])))
        return out


@register_view("CBAM")
class CBAMView(View):
    def attach(self):
        if not self.module.no_spatial:
            self.keep(self.module.SpatialGate.spatial, "hw")

    def maps(self):
        if "hw" not in self.seen:
            return []
        return [AttentionMap("spatial_gate", "CBAM: spatial gate", _gate(self.seen["hw"]))]


def acmix_attention(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ACmix's k x k window attention recomputed from its input x (B, C, H, W).

    Returns (weights (B, heads, k*k, Ho, Wo) softmax-normalised per output position, key index (k*k, Ho*Wo)
    into the flattened H*W input grid, v (B*heads, d, H, W)): the attention branch is
    sum over cells of weights * v[key index].
    """
    b, _, h, w = x.shape
    head, d, s, k, dil = m.head, m.head_dim, m.stride, m.kernel_att, m.dilation
    weight = torch.cat((m.conv1.weight, m.conv2.weight, m.conv3.weight))
    bias = torch.cat((m.conv1.bias, m.conv2.bias, m.conv3.bias))
    q, key, v = F.conv2d(x, weight, bias).float().reshape(b, 3, head, d, h, w).unbind(1)
    pe = m.conv_p(position_grid(h, w, x)).float()  # (1, d, H, W)
    q = q[..., ::s, ::s] * d ** -0.5  # (B, head, d, Ho, Wo)
    ho, wo = q.shape[-2:]
    pad = (dil * (k - 1) + 1) // 2
    rows = reflect_index(h, pad, x.device)[(torch.arange(k, device=x.device) * dil)[:, None]
                                          + (torch.arange(ho, device=x.device) * s)[None]]  # (k, Ho)
    cols = reflect_index(w, pad, x.device)[(torch.arange(k, device=x.device) * dil)[:, None]
                                          + (torch.arange(wo, device=x.device) * s)[None]]  # (k, Wo)
    index = (rows[:, None, :, None] * w + cols[None, :, None, :]).reshape(k * k, ho * wo)
    rel = (key - pe.unsqueeze(1)).reshape(b, head, d, h * w)  # q.(k_n + pe_q - pe_n): q.pe_q cancels
    neighbours = rel[..., index]  # (B, head, d, k*k, Ho*Wo)
    logits = (q.reshape(b, head, d, 1, ho * wo) * neighbours).sum(2)
    weights = logits.softmax(2).reshape(b, head, k * k, ho, wo)
    return weights, index, v.reshape(b * head, d, h, w)


@register_view("ACmix")
class ACmixView(View):
    """How much attention each position receives from the windows that contain it, mean over heads."""

    def attach(self):
        self.keep(self.module, "x", what="input")

    def maps(self):
        if "x" not in self.seen:
            return []
        x = self.seen["x"]
        b, _, h, w = x.shape
        with torch.no_grad():
            weights, index, _ = acmix_attention(self.module, x)
        kk = index.shape[0]
        received = torch.zeros(b, weights.shape[1], h * w, device=x.device)
        received.scatter_add_(2, index.reshape(1, 1, -1).expand(b, weights.shape[1], -1),
                              weights.reshape(b, weights.shape[1], kk, -1).reshape(b, weights.shape[1], -1))
        k = self.module.kernel_att
        return [AttentionMap("attention", f"ACmix: attention received per position ({k}x{k} window softmax "
                                          "weights summed over queries, mean over heads)",
                             received.mean(1).reshape(b, h, w))]


class _CGAView(View):
    """Per head softmax(q^T k * scale + bias) rebuilt from the hooked q (after its depthwise conv) and k."""

    def cga(self) -> nn.Module:
        raise NotImplementedError

    def attach(self):
        m = self.cga()
        self.keep(m, "x", what="input")
        for i in range(m.num_heads):
            self.keep(m.qkvs[i], f"qkv{i}")
            self.keep(m.dws[i], f"q{i}")
        self.handles.append(m.register_forward_pre_hook(self._valid))

    def _valid(self, m, args):
        self.seen.setdefault("valid", args[1] if len(args) > 1 else None)

    def head_attention(self) -> list[torch.Tensor]:
        """Per head (B', HW, HW) attention of the latest call (B' = batch x windows for LocalWindowAttention)."""
        m = self.cga()
        _, _, h, w = self.seen["x"].shape
        bias = m.relative_bias(h, w).float()
        valid = self.seen.get("valid")
        out = []
        for i in range(m.num_heads):
            k = self.seen[f"qkv{i}"].float().split([m.key_dim, m.key_dim, m.d], dim=1)[1].flatten(2)
            q = self.seen[f"q{i}"].float().flatten(2)
            logits = q.transpose(1, 2) @ k * m.scale + bias[i]
            if valid is not None:
                logits = logits.masked_fill(~valid.reshape(valid.shape[0], 1, -1), float("-inf"))
            out.append(logits.softmax(-1))
        return out

    def received(self) -> torch.Tensor:
        """(B', h, w): attention each key position gets, averaged over queries and heads."""
        _, _, h, w = self.seen["x"].shape
        attn = torch.stack(self.head_attention())  # (heads, B', HW queries, HW keys)
        valid = self.seen.get("valid")
        if valid is None:
            return attn.mean((0, 2)).reshape(-1, h, w)
        queries = valid.reshape(1, valid.shape[0], -1, 1).float()  # window padding is no query
        per_key = (attn * queries).sum(2) / queries.sum(2).clamp(min=1)
        return per_key.mean(0).reshape(-1, h, w)


@register_view("CascadedGroupAttention")
class CGAView(_CGAView):
    def cga(self):
        return self.module

    def maps(self):
        if "x" not in self.seen:
            return []
        return [AttentionMap("attention", "CascadedGroupAttention: attention received per position (mean over "
                                          "queries and heads)", self.received())]


@register_view("LocalWindowAttention")
class LWAView(_CGAView):
    def cga(self):
        return self.module.attn

    def attach(self):
        super().attach()
        self.keep(self.module, "block_x", what="input")

    def maps(self):
        if "block_x" not in self.seen:
            return []
        b, _, h, w = self.seen["block_x"].shape
        per_window = self.received()  # (B * windows, win, win), or (B, h, w) when the map fits one window
        hp, wp = self.module.padded_size(h, w)
        if per_window.shape[0] != b:
            per_window = from_windows(per_window[:, None], b, hp, wp)[:, 0]
        win = self.module.window_resolution
        return [AttentionMap("attention", f"LocalWindowAttention: attention received per position in its "
                                          f"{win}x{win} window (mean over queries and heads)",
                             per_window[:, :h, :w])]


@register_view("DAttentionBaseline")
class DATView(View):
    """The deformed key sampling points, coloured by the attention they receive (mean over queries and heads)."""

    def attach(self):
        m = self.module
        # The fused SDPA path never materialises the weights; the explicit one does (same outputs, 1e-6).
        self.was_explicit, m.explicit_attention = m.explicit_attention, True
        self.keep(m, "x", what="input")
        self.keep(m.proj_q, "q")
        self.keep(m.attn_drop, "attn", what="input")  # softmax weights (B*heads, HW, Ns) before dropout

    def remove(self):
        super().remove()
        self.module.explicit_attention = self.was_explicit

    def maps(self):
        if "attn" not in self.seen:
            return []
        m, x = self.module, self.seen["x"]
        b, _, h, w = x.shape
        with torch.no_grad():
            pos = m._sample_points(self.seen["q"], b, h, w)[0]  # (B*groups, Hk, Wk, 2) as (y, x)
        g, heads = m.n_groups, m.n_heads
        ns = pos.shape[1] * pos.shape[2]
        received = self.seen["attn"].float().mean(1).reshape(b, g, heads // g, ns).mean(2)  # (B, groups, Ns)
        xy = pos.reshape(b, g * ns, 2).flip(-1)  # (x, y)
        return [AttentionMap("sampling_points", "DAttentionBaseline: deformed sampling points of every group "
                                                "(colour: attention received, mean over queries and heads)",
                             points=xy, weights=received.reshape(b, g * ns), grid_hw=(h, w))]
