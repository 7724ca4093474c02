"""Detections: what an AutoShape model returns (YOLOv5's hub results object).

Per image: `ims[i]` the input picture (HWC, RGB), `pred[i]` its (n, 6) detections [x1, y1, x2, y2, conf, cls]
in that picture's pixels. Box views `xyxy`, `xywh`, `xyxyn`, `xywhn` (normalised by the picture's width and
height), `names`, `files`, `n` (= len), `times` (seconds spent in pre-process, inference, NMS for the batch)
and `t` (milliseconds per image), `s` (the inference BCHW shape). Methods as YOLOv5: print(), show(), save(),
crop(), render(), pandas(), tolist().
"""
from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.annotate import Annotator, colors, display_available, save_one_box
from utils.boxes import xyxy2xywh
from utils.log import LOGGER, colorstr
from utils.run_dirs import increment_path

PANDAS_HINT = "pip install -r requirements-pandas.txt"


def _as_uint8(im: np.ndarray) -> np.ndarray:
    """A picture as uint8 for drawing (float inputs are on the 0-255 scale, as AutoShape reads them)."""
    return im if im.dtype == np.uint8 else np.clip(im, 0, 255).astype(np.uint8)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class Detections:
    """Results of one AutoShape call (one batch of pictures)."""

    def __init__(self, ims, pred, files, times=(0.0, 0.0, 0.0), names=None, shape=None):
        self.ims = list(ims)  # HWC RGB arrays
        self.pred = list(pred)  # (n, 6) tensors: xyxy, conf, cls
        self.names = list(names or [])
        self.files = list(files)
        self.times = tuple(times)
        self.n = len(self.pred)
        self.t = tuple(x / max(self.n, 1) * 1e3 for x in self.times)  # ms per image
        self.s = tuple(shape) if shape is not None else ()
        gains = [torch.tensor([w, h, w, h, 1, 1], device=p.device, dtype=p.dtype)
                 for p, (h, w) in zip(self.pred, (im.shape[:2] for im in self.ims))]
        self.xyxy = self.pred
        self.xywh = [torch.cat((xyxy2xywh(p[:, :4]), p[:, 4:]), 1) for p in self.pred]
        self.xyxyn = [p / g for p, g in zip(self.xyxy, gains)]
        self.xywhn = [p / g for p, g in zip(self.xywh, gains)]

    @property
    def imgs(self):  # v6.1's name for ims
        return self.ims

    # ----------------------------------------------------------------------------- text
    def _label(self, cls) -> str:
        c = int(cls)
        return self.names[c] if c < len(self.names) else str(c)

    def _summary(self, i: int) -> str:
        im, p = self.ims[i], self.pred[i]
        s = f"image {i + 1}/{self.n}: {im.shape[0]}x{im.shape[1]} "
        if not p.shape[0]:
            return s + "(no detections)"
        parts = []
        for c in p[:, 5].unique():
            k = int((p[:, 5] == c).sum())
            parts.append(f"{k} {self._label(c)}{'s' * (k > 1)}")
        return s + ", ".join(parts)

    def __str__(self) -> str:
        lines = [self._summary(i) for i in range(self.n)]
        speed = "Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image" % self.t
        return "\n".join(lines + [f"{speed} at shape {self.s}"])

    def __repr__(self) -> str:
        return f"YOLOv5 {self.__class__} instance\n{self}"

    def __len__(self) -> int:
        return self.n

    def print(self) -> None:
        LOGGER.info(str(self))

    # ----------------------------------------------------------------------------- pictures
    def _annotated(self, i: int, labels: bool = True) -> np.ndarray:
        """A copy of picture i (uint8 RGB) with its boxes drawn, largest confidence on top."""
        annotator = Annotator(_as_uint8(self.ims[i]).copy())
        for *box, conf, cls in reversed(self.pred[i].tolist()):
            text = f"{self._label(cls)} {conf:.2f}" if labels else ""
            annotator.box_label(box, text, color=colors(int(cls), bgr=False))
        return annotator.result()

    def show(self, labels: bool = True) -> None:
        """Show each annotated picture (notebook: inline; desktop: an OpenCV window); without a display, a warning."""
        if _in_notebook():
            from IPython.display import display
            from PIL import Image
            for i in range(self.n):
                display(Image.fromarray(self._annotated(i, labels)))
            return
        ok, why = display_available()
        if not ok:
            LOGGER.warning(f"WARNING: Detections.show(): cannot show images ({why}); use .save() or .render()")
            return
        for i in range(self.n):
            cv2.imshow(self.files[i], self._annotated(i, labels)[..., ::-1])
        cv2.waitKey(1)

    def save(self, labels: bool = True, save_dir="runs/detect/exp", exist_ok: bool = False) -> Path:
        """Write each annotated picture as save_dir/<file> (save_dir incremented unless exist_ok); returns save_dir."""
        save_dir = increment_path(save_dir, exist_ok, mkdir=True)
        for i in range(self.n):
            cv2.imwrite(str(save_dir / self.files[i]), self._annotated(i, labels)[..., ::-1])
        LOGGER.info(f"Saved {self.n} image{'s' * (self.n != 1)} to {colorstr('bold', str(save_dir))}")
        return save_dir

    def crop(self, save: bool = True, save_dir="runs/detect/exp", exist_ok: bool = False) -> list[dict]:
        """One dict per box: box, conf, cls, label, im (the crop, BGR as YOLOv5 returns it); saved under
        save_dir/crops/<class>/ when `save`."""
        save_dir = increment_path(save_dir, exist_ok, mkdir=True) if save else None
        crops = []
        for i in range(self.n):
            bgr = np.ascontiguousarray(_as_uint8(self.ims[i])[..., ::-1])
            for *box, conf, cls in reversed(self.pred[i]):
                name = self._label(cls)
                file = save_dir / "crops" / name / self.files[i] if save else Path("unused.jpg")
                crops.append({"box": box, "conf": conf, "cls": cls, "label": f"{name} {float(conf):.2f}",
                              "im": save_one_box([float(b) for b in box], bgr, file, save=save)})
        if save:
            LOGGER.info(f"Saved results to {save_dir}")
        return crops

    def render(self, labels: bool = True) -> list[np.ndarray]:
        """Draw the boxes into `ims` (as YOLOv5) and return them."""
        for i in range(self.n):
            self.ims[i] = self._annotated(i, labels)
        return self.ims

    # ----------------------------------------------------------------------------- other views
    def pandas(self) -> "Detections":
        """A copy whose xyxy/xyxyn/xywh/xywhn are lists of pandas DataFrames (needs the optional pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ModuleNotFoundError(f"Detections.pandas() needs pandas, an optional dependency: {PANDAS_HINT}") from None
        new = copy.copy(self)
        corners = ["xmin", "ymin", "xmax", "ymax", "confidence", "class", "name"]
        centres = ["xcenter", "ycenter", "width", "height", "confidence", "class", "name"]
        for key, columns in (("xyxy", corners), ("xyxyn", corners), ("xywh", centres), ("xywhn", centres)):
            frames = []
            for boxes in getattr(self, key):
                rows = [r[:5] + [int(r[5]), self._label(r[5])] for r in boxes.tolist()]
                frames.append(pd.DataFrame(rows, columns=columns))
            setattr(new, key, frames)
        return new

    def tolist(self) -> list["Detections"]:
        """One Detections per picture: `for r in results.tolist(): ...`."""
        return [Detections([self.ims[i]], [self.pred[i]], [self.files[i]], self.times, self.names, self.s)
                for i in range(self.n)]
