"""load_backend: the one place val.py and detect.py turn a weights path into something that predicts.

Dispatch is on the suffix: .pt (ours or official checkpoints, via attempt_load; a list is an ensemble),
.onnx (onnxruntime; stride and names from metadata_props), .torchscript (torch.jit; extra/config.txt) and an
OpenVINO IR folder `<name>_openvino_model/` or its .xml (metadata.yaml).
Every backend has the same small surface:
    names, nc, stride, fp16, device, pt (True only for PyTorch)
    dynamic       True when any batch size and any stride-multiple (h, w) is accepted (rect batches are fine)
    input_shape   (b, c, h, w) the model takes; None in a dynamic position
    forward(im) -> (B, N, 5 + nc);  __call__(im, augment=False) -> (pred, raw maps or None);  warmup(imgsz)
    check_imgsz(imgsz)                  clear error when a static export cannot take that (h, w)
    batch_size_for(batch_size, imgsz)   the batch size to use (a static export's own), after check_imgsz
"""
from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from models.backends.base import Backend, ExportedBackend, names_list  # noqa: F401
from models.backends.onnx_runtime import OnnxBackend
from models.backends.openvino_ir import OpenVinoBackend
from models.backends.pytorch import TorchBackend
from models.backends.torchscript import TorchScriptBackend, read_torchscript_config  # noqa: F401
from models.load import attempt_load
from utils.cli import InputError
from utils.export_openvino import is_openvino_path
from utils.log import LOGGER

SUFFIXES = (".pt", ".onnx", ".torchscript", "_openvino_model/ (or its .xml)")


def load_backend(weights, device: torch.device = torch.device("cpu"), half: bool = False, fuse: bool = True,
                 channels_last=None, dnn: bool = False):
    """Weights path (.pt, .onnx, .torchscript, an OpenVINO folder; or a list of .pt paths for an ensemble) -> a
    backend on `device`.

    half: fp16 for .pt; an exported file runs in the precision it was exported with.
    channels_last (.pt; default: on CPU) runs the convolutions in NHWC memory order, faster with oneDNN.
    dnn: YOLOv5's --dnn (ONNX through OpenCV DNN); accepted so its command lines keep working, warned about once.
    """
    if dnn:
        _warn_dnn_ignored()
    paths = [Path(w) for w in (weights if isinstance(weights, (list, tuple)) else [weights])]
    suffixes = {p.suffix.lower() for p in paths}
    if suffixes == {".pt"}:
        model = attempt_load([str(p) for p in paths] if len(paths) > 1 else str(paths[0]), device=device, fuse=fuse)
        return TorchBackend(model, device, half, device.type == "cpu" if channels_last is None else channels_last)
    if len(paths) > 1:
        raise InputError(f"an ensemble needs .pt weights, got {', '.join(map(str, paths))}")
    path, suffix = paths[0], paths[0].suffix.lower()
    if is_openvino_path(path):
        return OpenVinoBackend(path, device)
    if suffix not in SUFFIXES:
        raise InputError(f"{path}: weights format '{suffix}' is not supported (use one of {', '.join(SUFFIXES)})")
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    backend = (OnnxBackend if suffix == ".onnx" else TorchScriptBackend)(path, device)
    if half and not backend.fp16:
        LOGGER.warning(f"WARNING: {path} holds an FP32 graph; --half is ignored (export with --half for FP16)")
    return backend


@cache
def _warn_dnn_ignored() -> None:
    LOGGER.warning("WARNING: --dnn is ignored (accepted for YOLOv5 compatibility): .onnx weights run on "
                   "onnxruntime, not OpenCV DNN")


def wrap_model(model: torch.nn.Module, half: bool = False) -> TorchBackend:
    """A backend around an in-memory model (training passes its EMA model)."""
    device = next(model.parameters()).device
    if half and device.type == "cpu":
        LOGGER.debug("validating in fp16 on CPU (asked for explicitly)")
    return TorchBackend(model, device, half)
