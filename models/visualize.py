"""detect.py --visualize: per picture, every layer's feature maps (YOLOv5's stage{i}_{type}_features.png) and, for
attention blocks, the block's own attention or gate maps over the picture (stage{i}_{type}_{map}.png).

Everything is read with forward hooks, so the model runs unchanged. Attention maps come from the views in
models/attention/views.py: a block class with a registered view (TripletAttention, CBAM, ACmix,
CascadedGroupAttention, LocalWindowAttention, DAttentionBaseline, ...) shows that; another block registered with
attention=True gets the generic output/input ratio. A view also applies to such a block nested inside a layer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models.attention.views import View, view_for
from models.registry import REGISTRY
from models.yolo import Detect
from utils.feature_maps import save_feature_maps, save_overlay
from utils.log import LOGGER


def _layers(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, nn.ModuleList):  # an Ensemble: show its first member
        LOGGER.warning("WARNING: --visualize shows the first model of the ensemble")
        model = model[0]
    return list(model.model)


def _views_of(layer: nn.Module) -> list[tuple[str, View]]:
    """(label, view) for a layer: its own view, else views of blocks nested in it, else (attention) the generic one."""
    spec = REGISTRY.get(getattr(layer, "type", ""))
    own = view_for(layer, generic=False)
    if own is not None:
        return [("", own)]
    nested = []
    covered: list[str] = []
    for name, sub in layer.named_modules():
        if not name or any(name.startswith(c + ".") for c in covered):
            continue
        v = view_for(sub, generic=False)
        if v is not None:
            nested.append((name.replace(".", "_"), v))
            covered.append(name)
    if nested:
        return nested
    return [("", view_for(layer, generic=True))] if spec is not None and spec.attention else []


class Visualizer:
    """Hooks on a model's layers; `save(...)` after each forward writes that forward's pictures."""

    def __init__(self, model: nn.Module, feature_maps: bool = True):
        self.layers = _layers(model)
        self.outputs: dict[int, torch.Tensor] = {}
        self.handles = []
        self.views: list[tuple[int, str, str, View]] = []  # (layer index, layer type, label, view)
        for layer in self.layers:
            if isinstance(layer, Detect):
                continue
            if feature_maps:
                self.handles.append(layer.register_forward_hook(self._keep_output))
            for label, view in _views_of(layer):
                self.views.append((layer.i, layer.type, label, view))

    def _keep_output(self, layer, args, out) -> None:
        if layer.i not in self.outputs and isinstance(out, torch.Tensor):  # first pass only (TTA runs three)
            self.outputs[layer.i] = out.detach()

    def reset(self) -> None:
        self.outputs = {}
        for *_, view in self.views:
            view.reset()

    def save(self, save_dir: Path, im0_bgr: np.ndarray, img1_shape) -> list[Path]:
        """Pictures of image 0 of the latest forward into save_dir; `img1_shape` is the model input's (h, w)."""
        files = []
        for i in sorted(self.outputs):
            f = save_feature_maps(self.outputs[i], self.layers[i].type, i, save_dir)
            files += [f] if f else []
        for i, kind, label, view in self.views:
            for amap in view.maps():
                stem = "_".join(p for p in (f"stage{i}", kind.split(".")[-1], label, amap.name) if p)
                files.append(_draw(save_dir / f"{stem}.png", amap, im0_bgr, img1_shape))
        self.reset()
        return files

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        for *_, view in self.views:
            view.remove()
        self.handles, self.views = [], []


def _draw(file: Path, amap, im0_bgr: np.ndarray, img1_shape) -> Path:
    if amap.points is not None:
        return save_overlay(file, im0_bgr, amap.title, img1_shape, points=amap.points[0].float().cpu().numpy(),
                            weights=amap.weights[0].float().cpu().numpy(), feat_hw=amap.grid_hw)
    return save_overlay(file, im0_bgr, amap.title, img1_shape, heat=amap.heat[0].float().cpu().numpy(),
                        vrange=amap.vrange)
