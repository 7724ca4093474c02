"""The two places where val.py's numbers follow YOLOv5's current val.py rather than v6.1's.

The reference figures val.py must reproduce (official val.py on coco128: 640 px mAP50-95 0.3499, 320 px
0.2907) come from YOLOv5's later val.py, which differs from v6.1 in two ways that utils/metrics.py keeps
as v6.1 had them:
- matching: predictions and labels are matched greedily *separately at each of the 10 IoU thresholds*
  (v6.1 matched once at IoU 0.5 and reused that pairing at 0.55..0.95, which under-counts mAP50-95
  by ~0.009 on coco128);
- P and R are read at the confidence where the class-mean F1, smoothed by a box filter of 10% of the
  confidence grid, peaks (v6.1 took the raw peak, a noisier choice).
mAP50 is the same either way. These are small functions on top of utils/metrics.py, which still
computes AP and draws the curves.
"""
from __future__ import annotations

import numpy as np
import torch

from utils.metrics import _greedy_pairs, box_iou

F1_SMOOTH_FRACTION = 0.1  # box filter width as a fraction of the 1000-point confidence grid


def match_per_threshold(detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor) -> torch.Tensor:
    """Which detections are correct at each IoU threshold, re-matching at every threshold.

    detections (N, 6) [x1, y1, x2, y2, conf, cls]; labels (M, 5) [cls, x1, y1, x2, y2] in the same
    pixels -> bool (N, len(iouv)). At each threshold, same-class pairs with IoU >= it are paired one to
    one by the same greedy rule as utils.metrics (best IoU per detection, then one per label).
    """
    correct = torch.zeros(detections.shape[0], iouv.shape[0], dtype=torch.bool)
    if detections.shape[0] == 0 or labels.shape[0] == 0:
        return correct.to(iouv.device)
    iou = box_iou(labels[:, 1:].float(), detections[:, :4].float())
    iou = iou * (labels[:, 0:1] == detections[:, 5]).to(iou.dtype)  # other classes never match
    li, di = torch.nonzero(iou >= iouv[0], as_tuple=True)
    if li.numel() == 0:
        return correct.to(iouv.device)
    pairs = torch.stack((li.double(), di.double(), iou[li, di].double()), 1).cpu().numpy()
    for k, t in enumerate(iouv.tolist()):
        kept = pairs[pairs[:, 2] >= t]
        if not len(kept):
            break  # thresholds only grow
        kept = _greedy_pairs(kept, relabel_sort=False)
        correct[kept[:, 1].astype(np.int64), k] = True
    return correct.to(iouv.device)


def smooth(y: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Box filter over `fraction` of the points (odd width), the ends padded with the end values."""
    nf = round(len(y) * fraction * 2) // 2 + 1
    edge = np.ones(nf // 2)
    padded = np.concatenate((edge * y[0], y, edge * y[-1]))
    return np.convolve(padded, np.ones(nf) / nf, mode="valid")


def pr_at_smoothed_f1(tp, conf, pred_cls, target_cls, eps: float = 1e-16):
    """Per-class P and R (IoU 0.5) at the confidence where smooth(mean F1) peaks -> (p (k,), r (k,)).

    Classes are those with labels, sorted, as in utils.metrics.ap_per_class; curves are built the same
    way there (recall/precision interpolated on a 1000-point confidence grid, R=0 / P=1 above the top).
    """
    tp = np.asarray(tp, dtype=np.float64).reshape(len(conf), -1)[:, 0]
    conf, pred_cls, target_cls = np.asarray(conf, np.float64), np.asarray(pred_cls), np.asarray(target_cls)
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, nt = np.unique(target_cls, return_counts=True)
    px = np.linspace(0, 1, 1000)
    p, r = np.zeros((len(classes), 1000)), np.zeros((len(classes), 1000))
    for ci, c in enumerate(classes):
        mine = pred_cls == c
        if not mine.any():
            continue
        tpc = tp[mine].cumsum()
        fpc = (1 - tp[mine]).cumsum()
        r[ci] = np.interp(-px, -conf[mine], tpc / (nt[ci] + eps), left=0)
        p[ci] = np.interp(-px, -conf[mine], tpc / (tpc + fpc), left=1)
    if not len(classes):
        return np.zeros(0), np.zeros(0)
    f1 = 2 * p * r / (p + r + eps)
    best = smooth(f1.mean(0), F1_SMOOTH_FRACTION).argmax()
    return p[:, best], r[:, best]
