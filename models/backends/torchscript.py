"""A traced TorchScript file (or one saved for the lite interpreter).

Trusted files only: TorchScript is a program, not data. Loading and running one executes the operators it
contains, and those include reading and writing files (a crafted file can overwrite another file when it is
run), so every load logs a warning. ONNX files (run by onnxruntime) and .pt checkpoints (read through the
allow-listed unpickler in utils/official_pt.py) are data and need no such trust.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch

from models.backends.base import ExportedBackend
from utils.log import LOGGER
from utils.tv_ops import load_torchvision_ops


def read_torchscript_config(path: Path) -> dict:
    """extra/config.txt of a TorchScript zip (also readable when it was saved for the lite interpreter)."""
    with zipfile.ZipFile(path) as z:
        hits = [n for n in z.namelist() if n.endswith("extra/config.txt")]
        return json.loads(z.read(hits[0])) if hits else {}


class TorchScriptBackend(ExportedBackend):
    """torch.jit.load of a traced model (or the lite interpreter for --optimize exports)."""

    def __init__(self, path, device=torch.device("cpu")):
        try:  # traced D-LKA graphs call torchvision::deform_conv2d
            load_torchvision_ops()
        except ImportError:
            pass
        path = Path(path)
        LOGGER.warning(f"WARNING: {path} is TorchScript, which runs the code it contains (including file reads and "
                       f"writes): load only files you trust; .pt and .onnx weights are data only")
        meta = read_torchscript_config(path)
        try:
            self.model = torch.jit.load(str(path), map_location=device)
        except RuntimeError:  # saved with _save_for_lite_interpreter (export --optimize)
            from torch.jit.mobile import _load_for_lite_interpreter
            self.model = _load_for_lite_interpreter(str(path), map_location=device)
        params = list(self.model.parameters()) if hasattr(self.model, "parameters") else []
        fp16 = bool(params) and params[0].dtype == torch.half
        dynamic = bool(meta.get("dynamic", False))
        shape = (None, 3, None, None) if dynamic else meta.get("shape", (None, 3, None, None))
        super().__init__(path, device, meta, shape, fp16, dynamic)

    def _run(self, im: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            y = self.model(im)
        return y[0] if isinstance(y, (list, tuple)) else y
