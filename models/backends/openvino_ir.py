"""An OpenVINO IR folder (export.py --include openvino) run by OpenVINO's CPU plugin."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.backends.base import ExportedBackend
from utils.cli import InputError
from utils.export_openvino import compile_ir, find_ir


class OpenVinoBackend(ExportedBackend):
    """`<name>_openvino_model/` (or its .xml): FP32, FP16-weight or INT8 IR; input shape and dynamic axes from
    the IR itself, stride and names from metadata.yaml. Inputs stay float32 (an FP16 IR stores fp16 weights
    only), so `fp16` is False for all three. Runs on torch.get_num_threads() threads, like the other backends."""

    def __init__(self, path, device=torch.device("cpu")):
        path = Path(path)
        xml, meta = find_ir(path)
        if device.type != "cpu":
            raise InputError(f"{path}: OpenVINO runs here on the CPU only; use --device cpu")
        self.compiled = compile_ir(xml, threads=torch.get_num_threads())  # as many threads as PyTorch uses
        self.request = self.compiled.create_infer_request()
        shape = tuple(None if d.is_dynamic else d.get_length() for d in self.compiled.inputs[0].get_partial_shape())
        self.weights = "int8" if meta.get("int8") else "fp16" if meta.get("fp16") else "fp32"
        super().__init__(path, device, meta, shape, fp16=False,
                         dynamic=all(s is None for i, s in enumerate(shape) if i != 1))

    def _run(self, im: torch.Tensor) -> torch.Tensor:
        y = self.request.infer({0: np.ascontiguousarray(im.detach().cpu().numpy())})
        return torch.from_numpy(np.array(y[self.compiled.outputs[0]])).to(self.device)
