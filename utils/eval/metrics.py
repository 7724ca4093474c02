"""Validation metrics: IoUs, prediction/label matching, per-class AP, fitness and the confusion matrix.

Defaults follow YOLOv5's current val.py, whose figures the official coco128 numbers are (640 px mAP50-95
0.3499, 320 px 0.2907); flags give v6.1's variants, which differ in two places:
- matching: per_threshold=True re-matches predictions and labels greedily at each of the 10 IoU thresholds;
  v6.1 (per_threshold=False) matched once at IoU 0.5 and reused that pairing at 0.55..0.95, which
  under-counts mAP50-95 by ~0.009 on coco128;
- the P/R operating point: f1_smooth=0.1 reads P and R where the class-mean F1, smoothed by a box filter
  of 10% of the confidence grid, peaks; v6.1 (f1_smooth=0) took the raw, noisier peak.
mAP50 is the same either way. A few other v6.1 quirks are kept on purpose and marked "v6.1 quirk".
Plots live in utils/eval/metric_plots.py and are imported only when asked for.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from utils.boxes import xywh2xyxy

# The 10 COCO IoU thresholds 0.50:0.05:0.95 that val uses for mAP50-95 (column 0 is mAP50).
IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy >= 2.0 renamed trapz


# ----------------------------------------------------------------------------------------- IoU --

def box_iou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M).

    Unlike v6.1 no eps is added to the union (it would shift IoUs that sit exactly on a threshold);
    the union is only floored at eps so that zero-area boxes give 0 instead of NaN.
    """
    area1 = (box1[:, 2] - box1[:, 0]) * (box1[:, 3] - box1[:, 1])
    area2 = (box2[:, 2] - box2[:, 0]) * (box2[:, 3] - box2[:, 1])
    top_left = torch.max(box1[:, None, :2], box2[None, :, :2])
    bottom_right = torch.min(box1[:, None, 2:], box2[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(2)
    union = area1[:, None] + area2[None, :] - inter
    return inter / union.clamp(min=eps)


def _corners(box: torch.Tensor, xywh: bool):
    if xywh:
        box = xywh2xyxy(box)
    return box[..., 0], box[..., 1], box[..., 2], box[..., 3]


def bbox_iou(box1: torch.Tensor, box2: torch.Tensor, *, xywh: bool = False, GIoU: bool = False,
             DIoU: bool = False, CIoU: bool = False, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise IoU (or GIoU/DIoU/CIoU) of boxes (..., 4) and (..., 4), broadcast -> (...).

    Same formula and eps placement as v6.1's bbox_iou (eps added to heights and to the union), so
    the CIoU box loss matches v6.1; the CIoU trade-off weight alpha carries no gradient, as in v6.1.
    Pass xywh=True for centre/size boxes (what the loss uses).
    """
    b1_x1, b1_y1, b1_x2, b1_y2 = _corners(box1, xywh)
    b2_x1, b2_y1, b2_x2, b2_y2 = _corners(box2, xywh)
    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * \
            (torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)).clamp(0)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not (GIoU or DIoU or CIoU):
        return iou
    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)  # smallest enclosing box
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    if GIoU and not (DIoU or CIoU):
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    c2 = cw ** 2 + ch ** 2 + eps  # enclosing diagonal squared
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
    if not CIoU:
        return iou - rho2 / c2
    v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


# ------------------------------------------------------------------------------------ matching --

def _greedy_pairs(pairs: np.ndarray, relabel_sort: bool) -> np.ndarray:
    """Keep one pair per detection and one per label from rows [label, detection, iou].

    Rows are sorted by IoU (descending) and the best row per detection kept. That step leaves the
    rows ordered by detection index. v6.1 quirk, kept by YOLOv5 since (val's matching): it does NOT re-sort by IoU
    before picking one row per label, so a label goes to its lowest-index (= most confident)
    candidate, not its best-IoU one. The confusion matrix does re-sort (relabel_sort=True).
    """
    if len(pairs) <= 1:
        return pairs
    pairs = pairs[pairs[:, 2].argsort()[::-1]]
    pairs = pairs[np.unique(pairs[:, 1], return_index=True)[1]]
    if relabel_sort:
        pairs = pairs[pairs[:, 2].argsort()[::-1]]
    return pairs[np.unique(pairs[:, 0], return_index=True)[1]]


def match_predictions(detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor | None = None,
                      per_threshold: bool = True) -> torch.Tensor:
    """Which detections are correct at each IoU threshold -> bool (N, len(iouv)) on iouv's device.

    detections (N, 6) [x1, y1, x2, y2, conf, cls]; labels (M, 5) [cls, x1, y1, x2, y2], same pixel space.
    Only same-class pairs with IoU >= the threshold count, paired one to one by _greedy_pairs.
    per_threshold=True (YOLOv5 now): the pairing is redone at every threshold, so a label taken at 0.5
    by a confident loose detection can go to a tighter one at 0.7. False (v6.1's process_batch): one
    pairing at iouv[0]; a matched detection is correct at every threshold its IoU reaches.
    """
    iouv = IOU_THRESHOLDS.to(detections.device) if iouv is None else iouv
    correct = torch.zeros(detections.shape[0], iouv.shape[0], dtype=torch.bool)
    if detections.shape[0] == 0 or labels.shape[0] == 0:
        return correct.to(iouv.device)
    iou = box_iou(labels[:, 1:].float(), detections[:, :4].float())
    li, di = torch.nonzero((iou >= iouv[0]) & (labels[:, 0:1] == detections[:, 5]), as_tuple=True)
    if li.numel() == 0:
        return correct.to(iouv.device)
    # float64 rows hold the float32 IoUs exactly, so comparing them with the thresholds is exact too
    pairs = torch.stack((li.double(), di.double(), iou[li, di].double()), 1).cpu().numpy()
    thresholds = torch.as_tensor(iouv).cpu().double()
    if not per_threshold:
        pairs = torch.from_numpy(_greedy_pairs(pairs, relabel_sort=False))
        correct[pairs[:, 1].long()] = pairs[:, 2:3] >= thresholds
        return correct.to(iouv.device)
    for k, t in enumerate(thresholds.tolist()):
        kept = pairs[pairs[:, 2] >= t]
        if not len(kept):
            break  # thresholds only grow
        correct[_greedy_pairs(kept, relabel_sort=False)[:, 1].astype(np.int64), k] = True
    return correct.to(iouv.device)


# ------------------------------------------------------------------------------------------ AP --

def compute_ap(recall: np.ndarray, precision: np.ndarray):
    """AP of one PR curve by COCO's 101-point rule, as v6.1 computes it -> (ap, mpre, mrec).

    Sentinels: recall gets 0 in front and 1.0 at the end, precision 1.0 in front and 0 at the end;
    precision is replaced by its envelope (running max from the right); the envelope is linearly
    interpolated at recall 0, 0.01, ..., 1 and integrated with the trapezoid rule. Because the end
    sentinel sits at recall 1.0 with precision 0, even a perfect curve scores 0.995 (v6.1 quirk).
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    ap = _trapezoid(np.interp(x, mrec, mpre), x)
    return ap, mpre, mrec


def _numpy(a) -> np.ndarray:
    """Arrays, lists or (CUDA) tensors -> numpy."""
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _names_of(names, classes: np.ndarray) -> dict[int, str]:
    """Names of the classes that have labels, re-indexed 0..k-1 (names may be a dict or a list)."""
    table = names if isinstance(names, dict) else dict(enumerate(names))
    return {i: str(table.get(int(c), int(c))) for i, c in enumerate(classes)} if table else {}


def smooth(y: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Box filter over `fraction` of the points (odd width; fraction 0 -> width 1, no change), the ends
    padded with the end values so the output has len(y) points."""
    nf = round(len(y) * fraction * 2) // 2 + 1
    edge = np.ones(nf // 2)
    padded = np.concatenate((edge * y[0], y, edge * y[-1]))
    return np.convolve(padded, np.ones(nf) / nf, mode="valid")


def ap_per_class(tp, conf, pred_cls, target_cls, plot=False, save_dir=".", names=(), eps=1e-16, f1_smooth=0.1,
                 submit=None):
    """Per-class AP, and P, R and F1 at one operating point.

    tp (n, 10) bool per prediction and IoU threshold; conf (n,); pred_cls (n,); target_cls (m,) the
    class of every label. Only classes that have labels are reported (in sorted order).
    Returns (tp, fp, p, r, f1, ap, unique_classes): tp/fp/p/r/f1 (k,) at the single confidence where the
    class-mean F1 (IoU 0.5), smoothed over `f1_smooth` of the 1000-point confidence grid, peaks
    (0.1: YOLOv5 now; 0: v6.1's raw peak); ap (k, 10); unique_classes (k,) int32.
    plot=True writes PR_curve.png, F1_curve.png, P_curve.png, R_curve.png into save_dir, each through
    submit(fn, *args) when given (e.g. utils.plot_workers.PlotWorkers.submit, which draws in the background).
    """
    tp, conf, pred_cls, target_cls = (_numpy(a) for a in (tp, conf, pred_cls, target_cls))
    tp, conf = tp.astype(np.float64), conf.astype(np.float64)
    if tp.ndim == 1:
        tp = tp[:, None]
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]

    unique_classes, nt = np.unique(target_cls, return_counts=True)
    nc = unique_classes.shape[0]
    if nc == 0:  # no labels anywhere: nothing to measure (np.argmax over zero classes would fail)
        empty = np.zeros(0)
        return empty, empty, empty, empty, empty, np.zeros((0, tp.shape[1])), unique_classes.astype("int32")
    px, py = np.linspace(0, 1, 1000), []  # confidence grid; PR curves at IoU 0.5 for plots
    ap, p, r = np.zeros((nc, tp.shape[1])), np.zeros((nc, 1000)), np.zeros((nc, 1000))
    for ci, c in enumerate(unique_classes):
        mine = pred_cls == c
        if not mine.any():
            py.append(np.zeros(1000))
            continue
        tpc = tp[mine].cumsum(0)
        fpc = (1 - tp[mine]).cumsum(0)
        recall = tpc / (nt[ci] + eps)
        precision = tpc / (tpc + fpc)
        # -conf is increasing, as np.interp needs; above the top confidence R=0 and P=1
        r[ci] = np.interp(-px, -conf[mine], recall[:, 0], left=0)
        p[ci] = np.interp(-px, -conf[mine], precision[:, 0], left=1)
        for j in range(tp.shape[1]):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j])
            if j == 0:
                py.append(np.interp(px, mrec, mpre))

    f1 = 2 * p * r / (p + r + eps)
    if plot:
        _plot_curves(px, py, ap, f1, p, r, Path(save_dir), _names_of(names, unique_classes), submit)
    best = smooth(f1.mean(0), f1_smooth).argmax()
    p, r, f1 = p[:, best], r[:, best], f1[:, best]
    tp_count = (r * nt).round()
    fp_count = (tp_count / (p + eps) - tp_count).round()
    return tp_count, fp_count, p, r, f1, ap, unique_classes.astype("int32")


def _plot_curves(px, py, ap, f1, p, r, save_dir: Path, names: dict, submit=None) -> None:
    submit = submit or _run_now
    if len(py):
        submit(_draw, "plot_pr_curve", px, py, ap, save_dir / "PR_curve.png", names)
    submit(_draw, "plot_mc_curve", px, f1, save_dir / "F1_curve.png", names, ylabel="F1")
    submit(_draw, "plot_mc_curve", px, p, save_dir / "P_curve.png", names, ylabel="Precision")
    submit(_draw, "plot_mc_curve", px, r, save_dir / "R_curve.png", names, ylabel="Recall")


def _run_now(fn, *args, **kwargs):
    return fn(*args, **kwargs)


def _draw(name: str, *args, **kwargs):
    """utils.eval.metric_plots.<name>(*args): imported where it runs, so a process that hands its plots to
    workers never imports matplotlib (~0.5 s)."""
    from utils.eval import metric_plots
    return getattr(metric_plots, name)(*args, **kwargs)


def fitness(x: np.ndarray) -> np.ndarray:
    """v6.1's model fitness per row of [P, R, mAP50, mAP50-95, ...]: 0.1*mAP50 + 0.9*mAP50-95."""
    x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
    return (x[:, :4] * np.array([0.0, 0.0, 0.1, 0.9])).sum(1)


# ---------------------------------------------------------------------------- confusion matrix --

class ConfusionMatrix:
    """(nc+1) x (nc+1) counts: rows = predicted class, columns = true class, index nc = background.

    Column nc counts detections that match no label (background FP), row nc counts labels that no
    detection matched (background FN). Matching as v6.1: detections with conf > conf, any class,
    IoU > iou_thres, one-to-one greedily by IoU. One deliberate fix over v6.1: when an image has
    no match at all its detections are still counted as background FP (v6.1 skipped them), and an
    image with no labels is accepted.
    """

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc, self.conf, self.iou_thres = nc, conf, iou_thres

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Add one image: detections (n, 6) [x1, y1, x2, y2, conf, cls]; labels (m, 5) [cls, xyxy]."""
        if detections is None:
            detections = torch.zeros((0, 6), device=labels.device)
        detections = detections[detections[:, 4] > self.conf]
        gt_classes = labels[:, 0].long().tolist()
        det_classes = detections[:, 5].long().tolist()
        iou = box_iou(labels[:, 1:].float(), detections[:, :4].float())
        li, di = torch.nonzero(iou > self.iou_thres, as_tuple=True)
        pairs = torch.stack((li.float(), di.float(), iou[li, di]), 1).cpu().numpy()
        pairs = _greedy_pairs(pairs, relabel_sort=True).astype(np.int64)
        label_to_det = dict(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist()))
        for i, gc in enumerate(gt_classes):
            row = det_classes[label_to_det[i]] if i in label_to_det else self.nc
            self.matrix[row, gc] += 1
        matched = set(pairs[:, 1].tolist())
        for i, dc in enumerate(det_classes):
            if i not in matched:
                self.matrix[dc, self.nc] += 1

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class true and false positives (background row/column dropped)."""
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]

    def plot(self, normalize: bool = True, save_dir=".", names=(), submit=None) -> Path:
        """Write save_dir/confusion_matrix.png (columns normalised to 1 when normalize); through
        submit(fn, *args) when given (see ap_per_class), else now."""
        names = list(names.values()) if isinstance(names, dict) else list(names)
        path = Path(save_dir) / "confusion_matrix.png"
        (submit or _run_now)(_draw, "plot_confusion_matrix", self.matrix.copy(), path, names, normalize)
        return path

    def print(self) -> None:
        from utils.log import LOGGER

        for row in self.matrix:
            LOGGER.info(" ".join(map(str, row)))
