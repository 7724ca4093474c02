"""Drawing detections on BGR frames for detect.py, with cv2 only (Hershey font: nothing to download).

Also: save_one_box (crops for --save-crop) and display_available (so --view-img can say why it cannot
show anything instead of crashing on a machine without a display).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.boxes import clip_boxes, xywh2xyxy, xyxy2xywh
from utils.plots import colour

FONT = cv2.FONT_HERSHEY_SIMPLEX


def colors(i: int, bgr: bool = True) -> tuple[int, int, int]:
    """The project's class palette (same colours as the batch plots)."""
    return colour(int(i), bgr=bgr)


class Annotator:
    """Boxes with a filled label tab on a copy-free HWC uint8 BGR image."""

    def __init__(self, im: np.ndarray, line_width: int | None = None):
        if not (isinstance(im, np.ndarray) and im.ndim == 3 and im.dtype == np.uint8):
            raise TypeError("Annotator needs an HWC uint8 image; convert grayscale/16-bit frames first")
        self.im = np.ascontiguousarray(im)
        self.lw = line_width or max(round(sum(im.shape) / 2 * 0.003), 2)

    def box_label(self, box, label: str = "", color=(128, 128, 128), txt_color=(255, 255, 255)) -> None:
        p1, p2 = (int(box[0]), int(box[1])), (int(box[2]), int(box[3]))
        cv2.rectangle(self.im, p1, p2, color, thickness=self.lw, lineType=cv2.LINE_AA)
        if not label:
            return
        tf = max(self.lw - 1, 1)  # font thickness
        scale = self.lw / 3
        w, h = cv2.getTextSize(label, FONT, scale, tf)[0]
        outside = p1[1] - h - 3 >= 0  # tab above the box when it fits
        p2 = p1[0] + w, p1[1] - h - 3 if outside else p1[1] + h + 3
        cv2.rectangle(self.im, p1, p2, color, -1, cv2.LINE_AA)
        org = (p1[0], p1[1] - 2 if outside else p1[1] + h + 2)
        cv2.putText(self.im, label, org, FONT, scale, txt_color, thickness=tf, lineType=cv2.LINE_AA)

    def result(self) -> np.ndarray:
        return self.im


def save_one_box(xyxy, im: np.ndarray, file: Path, gain: float = 1.02, pad: int = 10, square: bool = False,
                 save: bool = True) -> np.ndarray:
    """Crop a box grown by `gain` and `pad` pixels (optionally squared) out of a BGR image; save as jpg.

    Crops of the same name get numbered (a.jpg, a2.jpg, ...) so several boxes per image all survive.
    """
    b = xyxy2xywh(torch.tensor(xyxy, dtype=torch.float32).view(-1, 4))
    if square:
        b[:, 2:] = b[:, 2:].max(1, keepdim=True)[0]
    b[:, 2:] = b[:, 2:] * gain + pad
    box = clip_boxes(xywh2xyxy(b), im.shape).long()[0].tolist()
    crop = im[box[1]:box[3], box[0]:box[2]]
    if save and crop.size:
        from utils.run_dirs import increment_path

        file = Path(file)
        file.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(increment_path(file.with_suffix(".jpg"))), crop)
    return crop


def display_available() -> tuple[bool, str]:
    """(can cv2.imshow work here, why not). Checked without opening a window when there is no display."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no DISPLAY or WAYLAND_DISPLAY is set"
    try:
        cv2.namedWindow("__probe__", cv2.WINDOW_NORMAL)
        cv2.destroyWindow("__probe__")
    except cv2.error as e:
        return False, f"OpenCV has no GUI support here ({str(e).strip().splitlines()[-1][:120]})"
    return True, ""
