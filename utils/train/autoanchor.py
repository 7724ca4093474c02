"""AutoAnchor: check how well a model's anchors fit a dataset's boxes and re-fit them when they do not.

Fit is the best possible recall (BPR): the share of label boxes that some anchor can match within the
anchor_t size ratio. Below 0.98, anchors are re-estimated with k-means on whitened box sizes followed
by a genetic mutation search (YOLOv5's procedure) and kept only if they raise BPR.
"""
from __future__ import annotations

import numpy as np
import torch

from utils.cli import InputError
from utils.log import LOGGER, colorstr

PREFIX = colorstr("AutoAnchor: ")
BPR_GOOD = 0.98


def check_anchor_order(m) -> None:
    """Anchors must grow with stride (P3 smallest); flip them when a yaml lists them the other way."""
    a = m.anchors.prod(-1).mean(-1).view(-1)
    da, ds = a[-1] - a[0], m.stride[-1] - m.stride[0]
    if da and da.sign() != ds.sign():
        LOGGER.info("AutoAnchor: reversing anchor order")
        m.anchors[:] = m.anchors.flip(0)


def label_wh(dataset, imgsz: int, rng: np.random.Generator | None = None, jitter: bool = True) -> np.ndarray:
    """Label box sizes in pixels for images letterboxed to imgsz, optionally scale-jittered by 0.9-1.1."""
    shapes = imgsz * dataset.shapes / dataset.shapes.max(1, keepdims=True)  # (n, 2) w, h
    if jitter:
        rng = rng or np.random.default_rng(0)
        shapes = shapes * rng.uniform(0.9, 1.1, size=(shapes.shape[0], 1))
    parts = [lb[:, 3:5] * s for s, lb in zip(shapes, dataset.labels) if len(lb)]
    return np.concatenate(parts, 0).astype(np.float32) if parts else np.zeros((0, 2), np.float32)


def _ratio_metric(k: torch.Tensor, wh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (box, anchor) the worse of the w and h ratios (<= 1), and per box its best anchor's value."""
    r = wh[:, None] / k[None]
    x = torch.min(r, 1 / r).min(2)[0]
    return x, x.max(1)[0]


def bpr_and_aat(anchors: torch.Tensor, wh: torch.Tensor, thr: float) -> tuple[float, float]:
    """(best possible recall, anchors above threshold per box)."""
    x, best = _ratio_metric(anchors.float(), wh)
    return float((best > 1 / thr).float().mean()), float((x > 1 / thr).float().sum(1).mean())


def check_anchors(dataset, model, thr: float = 4.0, imgsz: int = 640, seed: int = 0) -> bool:
    """Log BPR; when below 0.98 evolve new anchors and write them into Detect. Returns True if replaced."""

    m = model.module.model[-1] if hasattr(model, "module") else model.model[-1]
    wh = torch.from_numpy(label_wh(dataset, imgsz, np.random.default_rng(seed)))
    if not len(wh):
        LOGGER.info(f"{PREFIX}no labels, anchors left as they are")
        return False
    anchors = m.anchors.clone() * m.stride.to(m.anchors.device).view(-1, 1, 1)  # pixels
    bpr, aat = bpr_and_aat(anchors.cpu().view(-1, 2), wh, thr)
    msg = f"\n{PREFIX}{aat:.2f} anchors/target, {bpr:.3f} Best Possible Recall (BPR). "
    if bpr > BPR_GOOD:
        LOGGER.info(f"{msg}Current anchors are a good fit to dataset")
        return False
    LOGGER.info(f"{msg}Anchors are a poor fit to dataset, attempting to improve...")
    na = m.anchors.numel() // 2
    new = kmean_anchors(dataset, n=na, img_size=imgsz, thr=thr, gen=1000, verbose=False, seed=seed)
    new_bpr = bpr_and_aat(torch.from_numpy(new), wh, thr)[0]
    if new_bpr <= bpr:
        LOGGER.info(f"{PREFIX}Original anchors better than new anchors. Proceeding with original anchors.")
        return False
    new = torch.from_numpy(new).to(m.anchors)
    m.anchors[:] = new.view_as(m.anchors) / m.stride.to(m.anchors.device).view(-1, 1, 1)
    check_anchor_order(m)
    LOGGER.info(f"{PREFIX}New anchors saved to model (BPR {new_bpr:.4f}). Update model *.yaml to use them in future.")
    return True


def kmeans(x: np.ndarray, n: int, iters: int = 30, rng: np.random.Generator | None = None) -> np.ndarray:
    """Plain Lloyd k-means with k-means++ seeding (scipy is not a dependency)."""
    rng = rng or np.random.default_rng(0)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, n):
        d2 = np.min(((x[:, None] - np.array(centres)[None]) ** 2).sum(-1), 1)
        p = d2 / d2.sum() if d2.sum() > 0 else None
        centres.append(x[rng.choice(len(x), p=p)])
    c = np.array(centres, dtype=np.float64)
    for _ in range(iters):
        assign = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        for j in range(n):
            if (assign == j).any():
                c[j] = x[assign == j].mean(0)
    return c


def _fitness(k: np.ndarray, wh: torch.Tensor, thr: float) -> float:
    _, best = _ratio_metric(torch.tensor(k, dtype=torch.float32), wh)
    return float((best * (best > 1 / thr).float()).mean())


def kmean_anchors(dataset, n: int = 9, img_size: int = 640, thr: float = 4.0, gen: int = 1000,
                  verbose: bool = True, seed: int = 0) -> np.ndarray:
    """Anchors (n, 2) in pixels, sorted by area: k-means on whitened sizes, then `gen` mutation rounds."""
    rng = np.random.default_rng(seed)
    wh0 = label_wh(dataset, img_size, rng)
    small = int((wh0 < 3.0).any(1).sum())
    if small:
        LOGGER.info(f"{PREFIX}WARNING: Extremely small objects found: {small} of {len(wh0)} labels are < 3 pixels")
    wh = wh0[(wh0 >= 2.0).any(1)].astype(np.float64)
    if len(wh) < n:
        raise InputError(f"{PREFIX}only {len(wh)} usable label boxes, cannot fit {n} anchors")
    LOGGER.info(f"{PREFIX}Running kmeans for {n} anchors on {len(wh)} points...")
    s = wh.std(0) + 1e-9
    k = kmeans(wh / s, n, rng=rng) * s
    wh_t = torch.tensor(wh, dtype=torch.float32)
    k = _evolve(k, wh_t, thr, gen, rng)
    k = k[np.argsort(k.prod(1))]
    bpr, aat = bpr_and_aat(torch.tensor(k, dtype=torch.float32), torch.tensor(wh0), thr)
    LOGGER.info(f"{PREFIX}thr={thr:.2f}: {bpr:.4f} best possible recall, {aat:.2f} anchors past thr")
    if verbose:
        LOGGER.info(f"{PREFIX}anchors: " + ", ".join(f"{round(w)},{round(h)}" for w, h in k))
    return k.astype(np.float32)


def _evolve(k: np.ndarray, wh: torch.Tensor, thr: float, gen: int, rng: np.random.Generator,
            mutation_prob: float = 0.9, sigma: float = 0.1) -> np.ndarray:
    """Multiplicative random mutations, kept when they improve fitness."""
    f = _fitness(k, wh, thr)
    for _ in range(gen):
        v = np.ones(k.shape)
        while (v == 1).all():  # mutate until something changes
            v = ((rng.random(k.shape) < mutation_prob) * rng.random() * rng.standard_normal(k.shape) * sigma + 1)
            v = v.clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0)
        fg = _fitness(kg, wh, thr)
        if fg > f:
            f, k = fg, kg
    return k
