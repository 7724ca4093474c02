"""A PyTorch model (ours or an official YOLOv5 checkpoint) behind the backend interface."""
from __future__ import annotations

import torch

from models.backends.base import Backend, names_list
from utils.torch_utils import try_channels_last


class TorchBackend(Backend):
    """A PyTorch model (ours or an official v6.1 checkpoint), eval, fused, fp32 or fp16."""

    pt = True

    def __init__(self, model: torch.nn.Module, device: torch.device, half: bool = False, channels_last: bool = False):
        self.model = model.half() if half else model.float()
        self.device, self.fp16 = device, half
        self.nc = int(getattr(model, "nc", None) or model.yaml["nc"])
        self.names = names_list(getattr(model, "names", None), self.nc)
        self.stride = int(max(model.stride)) if hasattr(model, "stride") else 32
        self.channels_last = channels_last and try_channels_last(self.model, self._probe())

    def _probe(self) -> torch.Tensor:
        dtype = torch.half if self.fp16 else torch.float
        return torch.zeros(1, 3, 2 * self.stride, 2 * self.stride, device=self.device, dtype=dtype)

    def __call__(self, im: torch.Tensor, augment: bool = False):
        """-> (pred, raw maps): training's validation needs the raw maps for its loss."""
        if self.channels_last:
            im = im.contiguous(memory_format=torch.channels_last)
        out = self.model(im, augment=augment)
        return out if isinstance(out, (list, tuple)) else (out, None)

    def forward(self, im: torch.Tensor) -> torch.Tensor:
        return self(im)[0]
