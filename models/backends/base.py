"""What every backend shares: class names, the static-shape rules, warm-up, and exported-file metadata."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import torch

from utils.cli import InputError
from utils.data.names import names_list
from utils.log import LOGGER


class Backend:
    """What every backend shares: the shape rules and warmup."""

    pt, dynamic, input_shape = False, True, (None, 3, None, None)
    channels_last = False  # True: the model wants NHWC input (val's pre-processing reorders the uint8 batch)
    device: torch.device
    fp16: bool
    path: Path | str = "model"

    def check_imgsz(self, imgsz) -> None:
        """A static export takes only the (h, w) it was exported with: a clear error for another size."""
        hw = [imgsz, imgsz] if isinstance(imgsz, int) else list(imgsz)
        want = list(self.input_shape[2:])
        if all(w is not None for w in want) and hw != want:
            raise InputError(f"{self.path} was exported for image size {want[0]}x{want[1]} (h x w) but --imgsz is "
                             f"{hw[0]}x{hw[1]}; pass --imgsz {' '.join(map(str, want))} or re-export with --dynamic")

    def batch_size_for(self, batch_size: int, imgsz) -> int:
        """A dynamic model takes any batch; a static export only its own batch size and (h, w)."""
        self.check_imgsz(imgsz)
        fixed = self.input_shape[0]
        if fixed is not None and fixed != batch_size:
            LOGGER.info(f"{self.path} takes batches of exactly {fixed}: using --batch-size {fixed}")
            return fixed
        return batch_size

    def warmup(self, imgsz=(1, 3, 640, 640)) -> None:
        """One forward so lazily built kernels/sessions are not timed (only on accelerators, as v6.1)."""
        if self.device.type != "cpu":
            shape = [s if s is not None else d for s, d in zip(self.input_shape, imgsz)]
            self.forward(torch.zeros(*shape, device=self.device, dtype=torch.half if self.fp16 else torch.float))


def parse_meta_value(text: str):
    """Our files store JSON; v6.1's exporter stored Python reprs (str(dict)), which literal_eval reads."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return ast.literal_eval(text)


class ExportedBackend(Backend):
    """What ONNX and TorchScript share: metadata, the static-shape check, the val/detect call convention."""

    def __init__(self, path: Path, device: torch.device, meta: dict, input_shape, fp16: bool, dynamic: bool):
        self.path, self.device, self.fp16 = path, device, fp16
        if "stride" not in meta or "names" not in meta:
            raise InputError(f"{path}: no stride/names metadata in the file; re-export it with this repo's export.py")
        self.stride = int(meta["stride"])
        self.names = names_list(meta["names"])
        self.nc = len(self.names)
        self.input_shape, self.dynamic = tuple(input_shape), dynamic

    def _fit(self, im: torch.Tensor) -> torch.Tensor:
        """A static export takes only its own shape: say which instead of a runtime crash. A short last
        batch (dataset size not a multiple of the batch) is padded with blank images."""
        want, got = self.input_shape, tuple(im.shape)
        if any(w is not None and w != g for w, g in zip(want[1:], got[1:])) or (want[0] or got[0]) < got[0]:
            raise InputError(f"{self.path} was exported for input shape {want} (None = dynamic) but got {got}; "
                             f"re-export with --dynamic or use --imgsz {want[2]} --batch-size {want[0]}")
        if want[0] is not None and got[0] < want[0]:
            im = torch.cat((im, im.new_zeros(want[0] - got[0], *got[1:])))
        return im

    def __call__(self, im: torch.Tensor, augment: bool = False):
        if augment:
            raise InputError(f"{self.path}: --augment (test-time augmentation) needs PyTorch .pt weights")
        return self.forward(im), None

    def forward(self, im: torch.Tensor) -> torch.Tensor:
        n = im.shape[0]
        return self._run(self._fit(im).to(self.device, torch.half if self.fp16 else torch.float))[:n]
