"""Pictures for detect.py --visualize: a layer's feature maps (as YOLOv5) and maps overlaid on the input image.

save_feature_maps   the first 32 channels of a layer output in an 8-column grid, stage{i}_{type}_features.png,
                    plus the whole map of image 0 as .npy (as YOLOv5 v7.0)
save_overlay        a (h, w) map over the model input, drawn over the original picture with a colour bar;
                    or weighted points (DAT's sampling locations) drawn on it; the map also saved as .npy
A map lives on the letterboxed input's grid: it is resized to the input size, the letterbox border is cut off
and the rest is resized to the original picture, so it lines up with what the model saw.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.log import LOGGER


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    return plt


def _viridis() -> np.ndarray:
    """(256, 3) uint8 BGR lookup table of matplotlib's default colour map (what YOLOv5's imshow grid uses)."""
    from matplotlib import colormaps
    return (colormaps["viridis"](np.linspace(0, 1, 256))[:, 2::-1] * 255).round().astype(np.uint8)


def feature_grid(maps: np.ndarray, columns: int = 8, tile: int = 160, gap: int = 4) -> np.ndarray:
    """(n, h, w) maps -> one BGR picture: each map scaled to its own min..max (as imshow does), viridis
    coloured, enlarged without smoothing to about `tile` pixels, in rows of `columns` on a white background."""
    n, h, w = maps.shape
    scale = max(1, round(tile / max(h, w)))
    th, tw = h * scale, w * scale
    rows = math.ceil(n / columns)
    grid = np.full((rows * (th + gap) - gap, columns * (tw + gap) - gap, 3), 255, np.uint8)
    lut = _viridis()
    for i, m in enumerate(maps):
        lo, hi = float(m.min()), float(m.max())
        idx = np.zeros(m.shape, np.uint8) if hi <= lo else ((m - lo) / (hi - lo) * 255).round().astype(np.uint8)
        r, c = divmod(i, columns)
        big = cv2.resize(lut[idx], (tw, th), interpolation=cv2.INTER_NEAREST)
        grid[r * (th + gap):r * (th + gap) + th, c * (tw + gap):c * (tw + gap) + tw] = big
    return grid


def save_feature_maps(x: torch.Tensor, module_type: str, stage: int, save_dir: Path, n: int = 32) -> Path | None:
    """YOLOv5's feature_visualization for image 0 of a (B, C, H, W) output: the first n channels in rows of 8,
    stage{stage}_{type}_features.png, and the whole map as .npy; None for 1-pixel-wide maps.

    Drawn with OpenCV rather than a matplotlib subplot grid: the same picture in milliseconds instead of
    seconds per layer."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        return None
    _, channels, height, width = x.shape
    if height <= 1 or width <= 1:
        return None
    f = Path(save_dir) / f"stage{stage}_{module_type.split('.')[-1]}_features.png"
    maps = x[0].detach().float().cpu().numpy()
    n = min(n, channels)
    LOGGER.info(f"Saving {f}... ({n}/{channels})")
    cv2.imwrite(str(f), feature_grid(maps[:n]))
    np.save(str(f.with_suffix(".npy")), maps)
    return f


def letterbox_window(img1_shape, img0_shape) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the picture inside the letterboxed input, as utils.data.augment.letterbox
    places it (the inverse of scale_boxes' gain and padding)."""
    h1, w1 = img1_shape[:2]
    h0, w0 = img0_shape[:2]
    gain = min(h1 / h0, w1 / w0)
    uh, uw = int(round(h0 * gain)), int(round(w0 * gain))
    top, left = int(round((h1 - uh) / 2 - 0.1)), int(round((w1 - uw) / 2 - 0.1))
    return top, left, uh, uw


def map_to_picture(heat: np.ndarray, img1_shape, img0_shape) -> np.ndarray:
    """A (h, w) map over the letterboxed input -> (h0, w0) over the original picture (bilinear)."""
    h1, w1 = img1_shape[:2]
    full = cv2.resize(heat.astype(np.float32), (w1, h1), interpolation=cv2.INTER_LINEAR)
    top, left, uh, uw = letterbox_window(img1_shape, img0_shape)
    inner = full[top:top + uh, left:left + uw]
    return cv2.resize(inner, (img0_shape[1], img0_shape[0]), interpolation=cv2.INTER_LINEAR)


def points_to_picture(xy: np.ndarray, feat_hw, img1_shape, img0_shape) -> np.ndarray:
    """(N, 2) points in normalised [-1, 1] coordinates of a feature map (align_corners=True, DAT's convention)
    -> pixel coordinates in the original picture."""
    h, w = feat_hw
    h1, w1 = img1_shape[:2]
    sy, sx = h1 / h, w1 / w  # input pixels per feature cell
    px = ((xy[:, 0] + 1) / 2 * (w - 1) + 0.5) * sx  # cell centre -> input pixel
    py = ((xy[:, 1] + 1) / 2 * (h - 1) + 0.5) * sy
    top, left, uh, uw = letterbox_window(img1_shape, img0_shape)
    g = img0_shape[0] / uh
    return np.stack(((px - left) * g, (py - top) * g), 1)


def save_overlay(file: Path, im0_bgr: np.ndarray, title: str, img1_shape, heat: np.ndarray | None = None,
                 vrange=None, points: np.ndarray | None = None, weights: np.ndarray | None = None,
                 feat_hw=None) -> Path:
    """Draw `heat` (h, w) or weighted `points` (N, 2) over the picture; save file (.png) and the raw map (.npy)."""
    plt = _pyplot()
    rgb = im0_bgr[..., ::-1]
    fig, ax = plt.subplots(figsize=(6.4, 6.4 * rgb.shape[0] / rgb.shape[1] + 0.6))
    ax.imshow(rgb)
    if heat is not None:
        lo, hi = vrange if vrange else (float(heat.min()), float(heat.max()))  # colour bar shows the values
        title = f"{title}\nvalues {float(heat.min()):.4g} to {float(heat.max()):.4g}"
        layer = ax.imshow(map_to_picture(heat, img1_shape, rgb.shape), cmap="jet", alpha=0.5, vmin=lo,
                          vmax=hi if hi > lo else lo + 1e-6)
        fig.colorbar(layer, ax=ax, fraction=0.046, pad=0.02)
        np.save(str(Path(file).with_suffix(".npy")), heat)
    if points is not None:
        xy = points_to_picture(points, feat_hw, img1_shape, rgb.shape)
        layer = ax.scatter(xy[:, 0], xy[:, 1], c=weights, s=12, cmap="jet", edgecolors="white", linewidths=0.3)
        fig.colorbar(layer, ax=ax, fraction=0.046, pad=0.02)
        np.save(str(Path(file).with_suffix(".npy")), np.concatenate((points, weights[:, None]), 1))
        title = f"{title}\nvalues {float(weights.min()):.4g} to {float(weights.max()):.4g}"
    ax.set_xlim(0, rgb.shape[1])
    ax.set_ylim(rgb.shape[0], 0)
    ax.set_title("\n".join(textwrap.fill(line, 90) for line in title.split("\n")), fontsize=8)
    ax.axis("off")
    LOGGER.info(f"Saving {file}...")
    fig.savefig(file, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return Path(file)
