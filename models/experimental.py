"""`attempt_load` (the one way val, detect, export and users load weights) and `Ensemble`."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from models.yolo import Detect, Model
from utils.checkpoint import load_checkpoint, model_from_checkpoint
from utils.log import LOGGER
from utils.torch_utils import select_device


class Ensemble(nn.ModuleList):
    """Several models run on the same batch; their predictions are concatenated for one NMS (as YOLOv5)."""

    def forward(self, x, augment=False, profile=False, visualize=False):
        y = [m(x, augment=augment)[0] for m in self]
        return torch.cat(y, 1), None


def _load_one(w: str | Path, device, inplace: bool, fuse: bool) -> Model:
    ckpt = load_checkpoint(w, map_location="cpu")
    model = model_from_checkpoint(ckpt, prefer_ema=True).float()  # EMA weights when present, as YOLOv5
    model.pt_path = str(w)
    model.requires_grad_(False)  # inference only (YOLOv5's loaded checkpoints report "0 gradients")
    model.eval()
    for m in model.modules():
        if isinstance(m, Detect):
            m.inplace = inplace
    model.inplace = inplace
    if fuse:
        model.fuse(flops=False)  # a weights load should not pay for a FLOP count (models/yolo.py prints it)
    return model.to(select_device(device)) if device is not None else model


def attempt_load(weights, device=None, inplace: bool = True, fuse: bool = True):
    """Load one checkpoint (ours or official YOLOv5) or several as an Ensemble; eval, fp32, fused, on `device`
    (a torch.device, 'cpu', '0', 'cuda:0'; None keeps the CPU).

    A missing file raises FileNotFoundError naming it (nothing is downloaded).
    """
    paths = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    if not paths:
        raise ValueError("attempt_load: no weights given")
    for w in paths:
        if not Path(w).is_file():
            raise FileNotFoundError(f"weights file not found: {w} (attempt_load does not download)")
    models = [_load_one(w, device, inplace, fuse) for w in paths]
    if len(models) == 1:
        return models[0]
    ensemble = Ensemble(models)
    ncs = {m.yaml["nc"] for m in models}
    if len(ncs) > 1:
        raise ValueError(f"attempt_load: ensemble members have different class counts {sorted(ncs)} ({paths})")
    for k in ("names", "nc", "yaml"):
        setattr(ensemble, k, getattr(models[0], k, None))
    ensemble.nc = models[0].yaml["nc"]
    ensemble.stride = max((m.stride for m in models), key=lambda s: float(s.max()))
    LOGGER.info(f"Ensemble created with {[str(w) for w in paths]}")
    return ensemble
