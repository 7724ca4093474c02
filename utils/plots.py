"""Training plots: label statistics (labels.jpg) and batch mosaics (train_batchN.jpg, val_batchN_*.jpg).

Drawing uses cv2's built-in Hershey font, so nothing is downloaded (YOLOv5 v6.1 fetched Arial.ttf).
"""
import math
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.boxes import xywh2xyxy

PALETTE = ["FF3838", "FF9D97", "FF701F", "FFB21D", "CFD231", "48F90A", "92CC17", "3DDB86", "1A9334", "00D4BB",
           "2C99A8", "00C2FF", "344593", "6473FF", "0018EC", "8438FF", "520085", "CB38FF", "FF95C8", "FF37C7"]


def colour(i: int, bgr: bool = False) -> tuple[int, int, int]:
    h = PALETTE[int(i) % len(PALETTE)]
    rgb = tuple(int(h[k:k + 2], 16) for k in (0, 2, 4))
    return rgb[::-1] if bgr else rgb


def _to_numpy(x):
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def plot_labels(labels, names=(), save_dir=Path("")) -> Path:
    """labels.jpg: class histogram, boxes drawn at one centre, centre (x, y) and size (w, h) histograms.

    labels: (n, 5) array `cls cx cy w h` normalised (e.g. np.concatenate(dataset.labels)).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    labels = _to_numpy(labels).reshape(-1, 5)
    c, b = labels[:, 0].astype(int), labels[:, 1:]
    nc = max(int(c.max()) + 1 if len(c) else 0, len(names), 1)
    fig, ax = plt.subplots(2, 2, figsize=(8, 8), tight_layout=True)
    ax = ax.ravel()
    counts = np.bincount(c, minlength=nc)
    ax[0].bar(range(nc), counts, color=[np.array(colour(i)) / 255 for i in range(nc)])
    ax[0].set_ylabel("instances")
    if 0 < len(names) < 30:
        ax[0].set_xticks(range(nc), [str(n) for n in names][:nc], rotation=90, fontsize=8)
    else:
        ax[0].set_xlabel("classes")
    canvas = np.full((1000, 1000, 3), 255, np.uint8)  # up to 1000 boxes drawn around the centre
    for cls, box in zip(c[:1000], b[:1000]):
        x1, y1, x2, y2 = (np.array([0.5 - box[2] / 2, 0.5 - box[3] / 2, 0.5 + box[2] / 2, 0.5 + box[3] / 2]) * 1000)
        cv2.rectangle(canvas, (int(x1), int(y1)), (int(x2), int(y2)), colour(cls), 1)
    ax[1].imshow(canvas)
    ax[1].axis("off")
    ax[2].hist2d(b[:, 0], b[:, 1], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
    ax[2].set_xlabel("x")
    ax[2].set_ylabel("y")
    ax[3].hist2d(b[:, 2], b[:, 3], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
    ax[3].set_xlabel("width")
    ax[3].set_ylabel("height")
    f = Path(save_dir) / "labels.jpg"
    f.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(f, dpi=200)
    plt.close(fig)
    return f


def _draw_box(im, box, col, text, lw):
    p1, p2 = (int(box[0]), int(box[1])), (int(box[2]), int(box[3]))
    cv2.rectangle(im, p1, p2, col, lw, cv2.LINE_AA)
    if text:
        fs = max(lw / 4, 0.35)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, fs, max(lw - 1, 1))
        top = p1[1] - th - 3 >= 0
        q = (p1[0] + tw, p1[1] - th - 3 if top else p1[1] + th + 3)
        cv2.rectangle(im, p1, q, col, -1, cv2.LINE_AA)
        org = (p1[0], p1[1] - 2 if top else p1[1] + th + 2)
        cv2.putText(im, text, org, cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 255), max(lw - 1, 1), cv2.LINE_AA)


def plot_images(images, targets, paths=None, fname="images.jpg", names=None, max_size=1920, max_subplots=16):
    """Grid of a batch with its boxes; targets rows `img_idx cls cx cy w h [conf]` (normalised or pixels).

    Rows with a conf column are predictions: drawn when conf > 0.25 and labelled `name conf`.
    """
    images, targets = _to_numpy(images), _to_numpy(targets).reshape(-1, _to_numpy(targets).shape[-1] or 6)
    if images.dtype.kind == "f" and images.size and images.max() <= 1:  # [0, 1] floats; uint8 is drawn as is
        images = images * 255
    bs, _, h, w = images.shape
    bs = min(bs, max_subplots)
    ns = math.ceil(bs ** 0.5)
    scale = min(1.0, max_size / max(h, w) / ns)
    hs, ws = math.ceil(h * scale), math.ceil(w * scale)
    mosaic = np.full((ns * hs, ns * ws, 3), 255, np.uint8)
    lw = max(round(0.003 * max(ns * hs, ns * ws)), 1)
    for i in range(bs):
        x, y = ws * (i % ns), hs * (i // ns)
        im = images[i].transpose(1, 2, 0).astype(np.uint8)
        mosaic[y:y + hs, x:x + ws] = cv2.resize(im, (ws, hs)) if scale < 1 else im
        cv2.rectangle(mosaic, (x, y), (x + ws, y + hs), (255, 255, 255), 2)
        if paths is not None and i < len(paths):
            cv2.putText(mosaic, Path(paths[i]).name[:40], (x + 5, y + 5 + 10 * lw), cv2.FONT_HERSHEY_SIMPLEX,
                        lw / 3, (220, 220, 220), max(lw - 1, 1), cv2.LINE_AA)
        t = targets[targets[:, 0] == i]
        boxes = xywh2xyxy(t[:, 2:6].astype(np.float64))
        if len(boxes) and boxes.max() <= 1.01:  # normalised
            boxes[:, [0, 2]] *= w
            boxes[:, [1, 3]] *= h
        boxes = boxes * scale + [x, y, x, y]
        for j, box in enumerate(boxes):
            cls, conf = int(t[j, 1]), (t[j, 6] if t.shape[1] > 6 else None)
            if conf is not None and conf <= 0.25:
                continue
            name = names[cls] if names is not None and cls < len(names) else str(cls)
            text = name if conf is None else f"{name} {conf:.1f}"
            _draw_box(mosaic, box, colour(cls), text, lw)
    cv2.imwrite(str(fname), cv2.cvtColor(mosaic, cv2.COLOR_RGB2BGR))
    return mosaic
