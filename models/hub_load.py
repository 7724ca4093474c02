"""What hubconf.py's entry points do: find the weights (locally only), build or load the model, wrap it.

`create('yolov5n')` loads yolov5n.pt from the working directory or the repo root (YOLOv5 would download it;
here a clear error says where it looked). `create('path/best.pt')` or `custom(path)` loads any checkpoint of
ours or of YOLOv5 (.pt), or an export (.onnx, .torchscript). With channels != 3 or classes != 80 the model is
built from the named yaml and the checkpoint's tensors that fit are transferred (pretrained=False: random
weights, no file needed).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from models.backends import load_backend
from models.hub import AutoShape
from models.load import attempt_load
from models.yolo import Model
from utils.checkpoint import load_checkpoint
from utils.log import LOGGER
from utils.torch_utils import select_device
from utils.train.transfer import transfer_weights

ROOT = Path(__file__).resolve().parents[1]
NO_DOWNLOAD = "nothing is downloaded"


def checkpoint_path(name: str | Path) -> Path:
    """'yolov5n' -> 'yolov5n.pt', 'runs/train/exp/weights/best' -> '.../best.pt' (as YOLOv5)."""
    p = Path(name)
    return p.with_suffix(".pt") if p.suffix == "" and not p.is_dir() else p


def locate(path: str | Path) -> Path:
    """The file as given, else (a relative path) under the repo root; a clear error naming both places."""
    p = Path(path)
    tried = [p] if p.is_absolute() else [Path.cwd() / p, ROOT / p]
    for cand in tried:
        if cand.is_file():
            return cand
    where = " and ".join(str(t) for t in dict.fromkeys(tried))
    hint = (f"; copy the official {p.name} there" if p.parent == Path(".") and p.stem.startswith("yolov5")
            else "")
    raise FileNotFoundError(f"weights {path} not found (looked at {where}); {NO_DOWNLOAD}{hint}, "
                            "or pass pretrained=False for a randomly initialised model")


@contextmanager
def _quiet(verbose: bool):
    level = LOGGER.level
    if not verbose:
        LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def _device(device) -> torch.device:
    return device if isinstance(device, torch.device) else select_device("" if device is None else str(device))


def _load_file(path: Path, device: torch.device, autoshape: bool):
    if path.suffix.lower() == ".pt":
        return attempt_load(str(path), device=device, fuse=autoshape)
    return load_backend(path, device)  # .onnx / .torchscript (clear error for other formats)


def _built_from_yaml(name: Path, channels: int, classes: int, pretrained: bool, device, verbose: bool) -> Model:
    """Model(<stem>.yaml, channels, classes), with the tensors of <stem>.pt that fit when pretrained."""
    model = Model(f"{name.stem}.yaml", ch=channels, nc=classes)
    if pretrained:
        w = locate(checkpoint_path(name))
        ckpt = load_checkpoint(w, map_location="cpu")
        transfer_weights(model, ckpt["state_dict"], ckpt.get("yaml"), source=w, exclude=("anchors",), verbose=verbose)
        if len(ckpt.get("names") or []) == classes:
            model.names = list(ckpt["names"])
    return model.to(device)


def create(name, pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
           verbose: bool = True, device=None):
    """YOLOv5's hubconf._create: a named model ('yolov5s') or a weights path, wrapped in AutoShape if asked."""
    with _quiet(verbose):
        device = _device(device)
        name = Path(name)
        if pretrained and channels == 3 and classes == 80:
            model = _load_file(locate(checkpoint_path(name)), device, autoshape)
        else:
            model = _built_from_yaml(name, channels, classes, pretrained, device, verbose)
        if autoshape:
            model = AutoShape(model, verbose=verbose)
        return model.to(device) if isinstance(model, torch.nn.Module) else model


def custom(path="path/to/model.pt", autoshape: bool = True, verbose: bool = True, device=None):
    """Any local checkpoint or export (a path without suffix gets .pt)."""
    return create(path, autoshape=autoshape, verbose=verbose, device=device)
