"""Validation plots: PR curve, metric-vs-confidence curves (F1/P/R) and the confusion matrix.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so nothing changes the global
backend, nothing needs a display, and only the bundled DejaVu font is used (no download).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_LEGEND_CLASSES = 20  # more classes than this: grey lines without a per-class legend (as v6.1)


def _new_axes(figsize=(9, 6)):
    fig = Figure(figsize=figsize, tight_layout=True)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # zlib level 1 instead of Pillow's 6: the same pixels, ~2x faster to write, files about as large (these
    # are mostly flat colour)
    fig.savefig(path, dpi=250, pil_kwargs={"compress_level": 1})
    return path


def _finish_curve_axes(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")


def plot_pr_curve(px, py, ap, save_path="PR_curve.png", names=()) -> Path:
    """Precision (y) against recall px (x) per class; py is a list of (len(px),) curves, ap (k, >=1)."""
    fig, ax = _new_axes()
    py = np.stack(py, axis=1) if len(py) else np.zeros((len(px), 0))
    names = names if isinstance(names, dict) else dict(enumerate(names))
    if 0 < len(names) <= MAX_LEGEND_CLASSES:
        for i, y in enumerate(py.T):
            ax.plot(px, y, linewidth=1, label=f"{names.get(i, i)} {ap[i, 0]:.3f}")
    else:
        ax.plot(px, py, linewidth=1, color="grey")
    mean_ap50 = ap[:, 0].mean() if len(ap) else 0.0
    ax.plot(px, py.mean(1) if py.shape[1] else np.zeros(len(px)), linewidth=3, color="blue",
            label=f"all classes {mean_ap50:.3f} mAP@0.5")
    _finish_curve_axes(ax, "Recall", "Precision")
    return _save(fig, save_path)


def plot_mc_curve(px, py, save_path="mc_curve.png", names=(), xlabel="Confidence", ylabel="Metric") -> Path:
    """A metric (k, len(px)) against confidence px per class, plus the class mean and where it peaks."""
    fig, ax = _new_axes()
    py = np.asarray(py).reshape(-1, len(px))
    names = names if isinstance(names, dict) else dict(enumerate(names))
    if 0 < len(names) <= MAX_LEGEND_CLASSES:
        for i, y in enumerate(py):
            ax.plot(px, y, linewidth=1, label=f"{names.get(i, i)}")
    else:
        ax.plot(px, py.T, linewidth=1, color="grey")
    y = py.mean(0) if len(py) else np.zeros(len(px))
    ax.plot(px, y, linewidth=3, color="blue", label=f"all classes {y.max():.2f} at {px[y.argmax()]:.3f}")
    _finish_curve_axes(ax, xlabel, ylabel)
    return _save(fig, save_path)


def _annotate(ax, array: np.ndarray, fontsize: float) -> None:
    for (i, j), v in np.ndenumerate(array):
        if np.isfinite(v):
            color = "white" if v > 0.5 * np.nanmax(array) else "black"
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=fontsize, color=color)


def plot_confusion_matrix(matrix: np.ndarray, save_path="confusion_matrix.png", names=(), normalize=True) -> Path:
    """Heat map of a (nc+1, nc+1) matrix (rows predicted, columns true); cells < 0.005 left blank."""
    nc = matrix.shape[0] - 1
    array = matrix / ((matrix.sum(0).reshape(1, -1) + 1e-9) if normalize else 1)
    array = array.astype(float)
    array[array < 0.005] = np.nan  # would print as 0.00
    fig, ax = _new_axes(figsize=(12, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an all-NaN matrix is fine to draw
        image = ax.imshow(array, cmap="Blues", vmin=0.0, interpolation="nearest")
    fig.colorbar(image, ax=ax)
    if nc < 30:
        _annotate(ax, array, fontsize=8)
    if 0 < len(names) < 99 and len(names) == nc:
        fontsize = 10 if nc < 50 else 8
        ax.set_xticks(range(nc + 1), list(names) + ["background FP"], rotation=90, fontsize=fontsize)
        ax.set_yticks(range(nc + 1), list(names) + ["background FN"], fontsize=fontsize)
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    return _save(fig, save_path)
