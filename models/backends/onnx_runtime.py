"""An ONNX file run by onnxruntime."""
from __future__ import annotations

from pathlib import Path

import torch

from models.backends.base import ExportedBackend, parse_meta_value


class OnnxBackend(ExportedBackend):
    """onnxruntime InferenceSession (CUDA provider when the device is CUDA and onnxruntime-gpu has it)."""

    def __init__(self, path, device=torch.device("cpu")):
        import onnxruntime as ort

        path = Path(path)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as many threads as PyTorch uses (default: all cores)
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        inp = self.session.get_inputs()[0]
        shape = tuple(d if isinstance(d, int) else None for d in inp.shape)
        meta = {k: parse_meta_value(v) for k, v in self.session.get_modelmeta().custom_metadata_map.items()}
        self.input_name, self.output_name = inp.name, self.session.get_outputs()[0].name
        super().__init__(path, device, meta, shape, fp16=inp.type == "tensor(float16)",
                         dynamic=all(s is None for i, s in enumerate(shape) if i != 1))

    def _run(self, im: torch.Tensor) -> torch.Tensor:
        y = self.session.run([self.output_name], {self.input_name: im.detach().cpu().numpy()})[0]
        return torch.from_numpy(y).to(self.device)
