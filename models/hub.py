"""AutoShape: YOLOv5's hub wrapper that takes pictures in any common form and returns Detections.

    model = AutoShape(attempt_load('best.pt'))  # what torch.hub.load(...) returns
    results = model(['data/images/bus.jpg', Path('data/images/zidane.jpg')], size=320)
    results.print(); results.save(); results.pandas().xyxy[0]

Inputs, one or a list (each is letterboxed to a common shape whose long side is `size`):
  file path (str or Path)       read with OpenCV (EXIF orientation applied), used as RGB
  PIL.Image                     EXIF orientation applied, converted to RGB
  numpy HWC                     RGB order as YOLOv5 (OpenCV users pass im[..., ::-1]); CHW (first dim < 5) and
                                grayscale HW are accepted; float arrays are read on the 0-255 scale
  torch tensor (in a list)      one CHW (or 1xCHW) RGB picture, float 0-1 or uint8 0-255
A torch tensor on its own is a ready BCHW batch (RGB, 0-1): it goes straight to the model and the raw model
output comes back (so `torch.jit.trace(model, [im])` traces the plain model, as YOLOv5's CI does).
URLs are refused with a clear message: nothing is downloaded here.

NMS settings are attributes: conf, iou, classes, agnostic, multi_label, max_det (and amp for CUDA autocast).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models.backends.base import names_list
from models.detections import Detections  # noqa: F401 (re-export: models.hub holds the hub API)
from models.yolo import Detect
from utils.boxes import scale_boxes
from utils.data.augment import letterbox
from utils.data.sources import read_image
from utils.eval.nms import non_max_suppression
from utils.log import LOGGER

URL_PREFIXES = ("http://", "https://", "rtsp://", "rtmp://", "ftp://")


class OfflineError(ValueError):
    """A URL was given as input; this project downloads nothing."""


def _from_path(f: str | Path) -> np.ndarray:
    if str(f).lower().startswith(URL_PREFIXES):
        raise OfflineError(f"{f}: AutoShape does not download images (no network access is assumed); "
                           "save the picture locally and pass its path, or pass it as a numpy/PIL image")
    if not Path(f).is_file():
        raise FileNotFoundError(f"image file not found: {f}")
    im = read_image(str(f))
    if im is None:
        raise ValueError(f"{f}: cannot be read as an image (corrupt or unsupported format)")
    return im[..., ::-1]  # OpenCV's BGR -> RGB


def _from_pil(im) -> np.ndarray:
    from PIL import ImageOps
    return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def _from_tensor(t: torch.Tensor, i: int) -> np.ndarray:
    t = t.detach().cpu()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"input {i}: a tensor in a list must be one CHW picture, got shape {tuple(t.shape)} "
                         "(pass a BCHW batch on its own, not inside a list)")
    a = t.float().numpy()
    return a * 255 if t.is_floating_point() else a


def _is_pil(im) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(im, Image.Image)


def to_rgb_hwc(im, i: int) -> tuple[np.ndarray, str]:
    """One input -> (HWC 3-channel RGB array, file name used by save()/crop())."""
    name = f"image{i}"
    if isinstance(im, (str, Path)):
        im, name = _from_path(im), str(im)
    elif _is_pil(im):
        name = getattr(im, "filename", "") or name
        im = _from_pil(im)
    elif isinstance(im, torch.Tensor):
        im = _from_tensor(im, i)
    elif not isinstance(im, np.ndarray):
        raise TypeError(f"input {i}: AutoShape takes file paths, PIL images, numpy arrays or torch tensors, "
                        f"got {type(im).__name__}")
    if im.ndim == 3 and im.shape[0] < 5 and im.shape[2] >= 5:  # CHW -> HWC
        im = im.transpose(1, 2, 0)
    if im.ndim == 2:
        im = im[..., None]
    if im.ndim == 3 and im.shape[2] == 1:  # grayscale
        im = np.repeat(im, 3, axis=2)
    if im.ndim != 3 or im.shape[2] < 3 or 0 in im.shape:
        raise ValueError(f"input {i}: expected an HWC picture with 3 (or 4) channels, got shape {im.shape}")
    im = im[..., :3]
    if im.dtype not in (np.uint8, np.float32):
        im = im.astype(np.float32)
    return np.ascontiguousarray(im), Path(name).with_suffix(".jpg").name


def _detect_layers(model) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, Detect)] if isinstance(model, nn.Module) else []


class AutoShape(nn.Module):
    """Pictures in, Detections out: letterbox, batch, infer, NMS, boxes back in each picture's pixels."""

    conf = 0.25  # NMS confidence threshold
    iou = 0.45  # NMS IoU threshold
    agnostic = False  # class-agnostic NMS
    multi_label = False  # several labels per box
    classes = None  # keep only these class ids, e.g. [0, 15, 16]
    max_det = 1000  # most detections per picture
    amp = False  # CUDA autocast for the forward

    def __init__(self, model, verbose: bool = True):
        super().__init__()
        if verbose:
            LOGGER.info("Adding AutoShape... ")
        self.pt = isinstance(model, nn.Module)  # else an exported model's backend (models.backends)
        self.model = model.eval() if self.pt else model
        for k in ("yaml", "nc", "hyp", "abc"):
            if hasattr(model, k):
                setattr(self, k, getattr(model, k))
        nc = getattr(model, "nc", None) or (getattr(model, "yaml", None) or {}).get("nc")
        self.names = names_list(getattr(model, "names", None), nc)
        stride = getattr(model, "stride", 32)
        self.stride = int(stride.max()) if isinstance(stride, torch.Tensor) else int(stride)
        for m in _detect_layers(model):
            m.inplace = False  # out-of-place box decoding (YOLOv5 does this for thread-safe inference)

    def _param(self) -> torch.Tensor:
        if self.pt:
            return next(self.model.parameters())
        return torch.empty(1, device=self.model.device, dtype=torch.half if self.model.fp16 else torch.float)

    def _infer(self, x: torch.Tensor, augment: bool):
        if not self.pt:
            return self.model.forward(x)
        y = self.model(x, augment=augment)
        return y[0] if isinstance(y, (tuple, list)) else y

    @torch.no_grad()
    def forward(self, ims, size=640, augment: bool = False, profile: bool = False):
        p = self._param()
        autocast = self.amp and p.device.type == "cuda"
        if isinstance(ims, torch.Tensor):  # a ready BCHW batch: straight to the model
            if ims.ndim != 4:
                raise ValueError(f"a tensor on its own must be a BCHW batch (RGB, 0-1), got shape {tuple(ims.shape)}; "
                                 "pass one CHW picture inside a list: model([t])")
            with torch.autocast("cuda", enabled=autocast):
                x = ims.to(p.device).type_as(p)
                y = self.model(x, augment=augment) if self.pt else self.model(x)
            # (pred, per-level maps): the maps as a tuple, a fixed container for torch.jit.trace
            return tuple(tuple(v) if isinstance(v, list) else v for v in y) if isinstance(y, (tuple, list)) else y
        t0 = _clock(p.device)
        x, pics, files, shape1 = self._preprocess(ims, size, p)
        t1 = _clock(p.device)
        with torch.autocast("cuda", enabled=autocast):
            pred = self._infer(x, augment)
        t2 = _clock(p.device)
        dets = non_max_suppression(pred, self.conf, self.iou, self.classes, self.agnostic, self.multi_label,
                                   max_det=self.max_det)
        for det, im in zip(dets, pics):
            det[:, :4] = scale_boxes(shape1, det[:, :4], im.shape[:2])
        t3 = _clock(p.device)
        return Detections(pics, dets, files, (t1 - t0, t2 - t1, t3 - t2), self.names, x.shape)

    def _preprocess(self, ims, size, p: torch.Tensor):
        """Inputs -> (BCHW batch in p's dtype, HWC RGB pictures, file names, the letterboxed (h, w))."""
        size = (size, size) if isinstance(size, int) else tuple(size)
        items = list(ims) if isinstance(ims, (list, tuple)) else [ims]
        if not items:
            raise ValueError("AutoShape got an empty list of pictures")
        pics, files = zip(*(to_rgb_hwc(im, i) for i, im in enumerate(items)))
        shapes = []
        for im in pics:
            g = max(size) / max(im.shape[:2])  # the long side becomes max(size)
            shapes.append([int(s * g) for s in im.shape[:2]])
        shape1 = [math.ceil(s / self.stride) * self.stride for s in np.array(shapes).max(0)]
        fixed = None if self.pt else self.model.input_shape[2:]
        if fixed and None not in fixed:  # a static export takes only its own (h, w)
            shape1 = list(fixed)
        batch = np.stack([letterbox(im, shape1, auto=False)[0] for im in pics])
        x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).to(p.device).type_as(p) / 255
        return x, list(pics), list(files), shape1


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
