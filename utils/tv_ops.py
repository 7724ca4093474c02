"""torchvision's compiled ops (nms, deform_conv2d) without importing the torchvision package.

`import torchvision` costs ~4 s on the 2-core CI machine (it imports its models, and through them
torch._dynamo), longer than val.py's whole NMS. Loading its op library registers `torch.ops.torchvision.*`
directly. If the library cannot be found this way, the package import is the fallback.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys

import torch

_loaded = False


def load_torchvision_ops() -> None:
    """Make torch.ops.torchvision.{nms, deform_conv2d, ...} available (idempotent)."""
    global _loaded
    if _loaded or "torchvision" in sys.modules:
        _loaded = True
        return
    spec = importlib.util.find_spec("torchvision")
    libs = sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so"))) if spec else []
    try:
        torch.ops.load_library(libs[0])
    except (IndexError, OSError, RuntimeError):
        import torchvision  # noqa: F401  (registers the ops the usual way)
    _loaded = True


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """torchvision.ops.batched_nms: boxes of different groups never suppress each other.

    Each group's boxes are shifted past every other group's (torchvision's coordinate trick), so one nms call
    does all groups; returns kept indices sorted by decreasing score.
    """
    load_torchvision_ops()
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    offsets = groups.to(boxes) * (boxes.max() + 1)
    return torch.ops.torchvision.nms(boxes + offsets[:, None], scores, iou_thres)
