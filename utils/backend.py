"""load_backend: the one place val.py and detect.py turn a weights path into something that predicts.

Dispatch is on the file suffix so exported formats (.onnx, .torchscript, ...) can be added later as one
more class with the same small surface: `names`, `stride`, `nc`, `fp16`, `pt`, `device`,
`__call__(im, augment=False) -> (pred (B, N, 5 + nc), raw maps or None)` and `warmup(imgsz)`.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import torch

from utils.log import LOGGER


def _names_list(names, nc: int) -> list[str]:
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    names = list(names or [])
    return [str(n) for n in names] if len(names) == nc else [f"class{i}" for i in range(nc)]


class TorchBackend:
    """A PyTorch model (ours or an official v6.1 checkpoint), eval, fused, fp32 or fp16."""

    pt = True

    def __init__(self, model: torch.nn.Module, device: torch.device, half: bool = False, channels_last: bool = False):
        self.model = model.half() if half else model.float()
        self.device, self.fp16 = device, half
        self.nc = int(getattr(model, "nc", None) or model.yaml["nc"])
        self.names = _names_list(getattr(model, "names", None), self.nc)
        self.stride = int(max(model.stride)) if hasattr(model, "stride") else 32
        self.channels_last = channels_last and self._try_channels_last()

    def _try_channels_last(self) -> bool:
        """NHWC convs run ~30% faster on CPU (oneDNN); keep NCHW for a model whose blocks cannot take it."""
        self.model.to(memory_format=torch.channels_last)
        try:
            with torch.no_grad():
                x = torch.zeros(1, 3, 2 * self.stride, 2 * self.stride, device=self.device,
                                dtype=torch.half if self.fp16 else torch.float)
                self.model(x.contiguous(memory_format=torch.channels_last))
            return True
        except RuntimeError as e:
            LOGGER.info(f"channels-last inference not possible for this model ({e}); using NCHW")
            self.model.to(memory_format=torch.contiguous_format)
            return False

    def __call__(self, im: torch.Tensor, augment: bool = False):
        if self.channels_last:
            im = im.contiguous(memory_format=torch.channels_last)
        out = self.model(im, augment=augment)
        return out if isinstance(out, (list, tuple)) else (out, None)

    def warmup(self, imgsz=(1, 3, 640, 640)) -> None:
        """One forward so lazily built kernels/grids are not timed (only on accelerators, as v6.1)."""
        if self.device.type != "cpu":
            self(torch.zeros(*imgsz, device=self.device, dtype=torch.half if self.fp16 else torch.float))


def load_backend(weights, device: torch.device, half: bool = False, fuse: bool = True, channels_last=None):
    """Weights path (or list of .pt paths for an ensemble) -> a backend on `device`.

    channels_last (default: on CPU) runs the convolutions in NHWC memory order, faster with oneDNN.
    """
    paths = [Path(w) for w in (weights if isinstance(weights, (list, tuple)) else [weights])]
    suffixes = {p.suffix.lower() for p in paths}
    if suffixes == {".pt"}:
        from models.experimental import attempt_load

        model = attempt_load([str(p) for p in paths] if len(paths) > 1 else str(paths[0]), device=device, fuse=fuse)
        return TorchBackend(model, device, half, device.type == "cpu" if channels_last is None else channels_last)
    if len(paths) > 1:
        raise ValueError(f"an ensemble needs .pt weights, got {', '.join(map(str, paths))}")
    raise NotImplementedError(f"{paths[0]}: weights format '{paths[0].suffix}' is not supported yet "
                              "(only PyTorch .pt checkpoints)")


def wrap_model(model: torch.nn.Module, half: bool = False) -> TorchBackend:
    """A backend around an in-memory model (training passes its EMA model)."""
    device = next(model.parameters()).device
    if half and device.type == "cpu":
        LOGGER.debug("validating in fp16 on CPU (asked for explicitly)")
    return TorchBackend(model, device, half)


def check_img_size(imgsz, stride: int = 32, floor: int = 0):
    """Round an image size (int or [h, w]) up to a multiple of the model stride, saying so when it changes."""
    def fit(x: int) -> int:
        return max(math.ceil(int(x) / stride) * stride, floor)

    new = fit(imgsz) if isinstance(imgsz, int) else [fit(x) for x in imgsz]
    if new != imgsz:
        LOGGER.warning(f"WARNING: --img-size {imgsz} must be a multiple of max stride {stride}, updating to {new}")
    return new


@contextmanager
def cpu_threads(n: int, device: torch.device):
    """Run a block with n CPU threads (then restore). NMS and matching are many small ops: on CPU one
    thread does them as fast as two on an idle machine and ~8x faster on a busy one, where every
    parallel op waits for a descheduled worker thread."""
    if device.type != "cpu" or torch.get_num_threads() <= n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
