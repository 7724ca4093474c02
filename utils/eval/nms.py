"""Non-maximum suppression over the raw Detect output, as YOLOv5 v6.1 does it, minus its silent drops.

v6.1 stops after a 10 s time limit (later images get no detections) and truncates at max_nms and
max_det without a word. Here there is no time limit; every truncation is counted in an NMSStats:
- `utils.eval.nms.last_stats` holds the counts of the latest call (a fresh object per call; read it
  through the module, `from utils.eval import nms; nms.last_stats`, not by importing the name);
- pass `stats=NMSStats()` to accumulate counts over many calls (e.g. one val run).
Going over max_nms also logs one warning per process (the counts keep being recorded).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from utils.boxes import xywh2xyxy
from utils.cli import InputError
from utils.log import LOGGER
from utils.tv_ops import batched_nms

MIN_WH, MAX_WH = 2, 7680  # pixels; v6.1 drops boxes whose width or height is outside [MIN_WH, MAX_WH]
MAX_NMS = 30000  # most candidate boxes per image handed to torchvision's nms


@dataclass
class NMSStats:
    images: int = 0  # images processed
    over_max_nms: int = 0  # images that had more than max_nms candidates
    max_candidates: int = 0  # largest candidate count seen in one image
    candidates_cut: int = 0  # candidates left out of NMS because of max_nms
    over_max_det: int = 0  # images whose detections were cut at max_det
    detections_cut: int = 0  # detections removed by the max_det cap

    def add(self, other: "NMSStats") -> None:
        self.images += other.images
        self.over_max_nms += other.over_max_nms
        self.max_candidates = max(self.max_candidates, other.max_candidates)
        self.candidates_cut += other.candidates_cut
        self.over_max_det += other.over_max_det
        self.detections_cut += other.detections_cut


last_stats = NMSStats()
_warned_max_nms = False


def _check_args(prediction, conf_thres: float, iou_thres: float) -> torch.Tensor:
    if isinstance(prediction, (list, tuple)):  # Detect in eval mode returns (inference, features)
        prediction = prediction[0]
    if prediction.ndim != 3 or prediction.shape[2] < 6:
        raise ValueError(f"non_max_suppression: expected (batch, boxes, 5 + nc) with nc >= 1, "
                         f"got shape {tuple(prediction.shape)}")
    if not 0 <= conf_thres <= 1:
        raise InputError(f"Invalid confidence threshold {conf_thres}, valid values are 0.0 to 1.0")
    if not 0 <= iou_thres <= 1:
        raise InputError(f"Invalid IoU threshold {iou_thres}, valid values are 0.0 to 1.0")
    return prediction


def _with_apriori_labels(x: torch.Tensor, lb: torch.Tensor, nc: int) -> torch.Tensor:
    """Append labels (n, 5) [cls, xywh] as certain detections (v6.1's autolabelling/--save-hybrid)."""
    v = torch.zeros((len(lb), nc + 5), device=x.device, dtype=x.dtype)
    v[:, :4] = lb[:, 1:5]
    v[:, 4] = 1.0
    v[torch.arange(len(lb), device=x.device), lb[:, 0].long() + 5] = 1.0
    return torch.cat((x, v), 0)


def _candidates(x: torch.Tensor, conf_thres: float, multi_label: bool) -> torch.Tensor:
    """Raw rows (n, 5 + nc) -> detections (k, 6) [x1, y1, x2, y2, conf, cls] with conf > conf_thres."""
    scores = x[:, 5:] * x[:, 4:5]  # conf = obj * cls
    box = xywh2xyxy(x[:, :4])
    if multi_label:  # one row per (box, class) above the threshold
        i, j = (scores > conf_thres).nonzero(as_tuple=True)
        return torch.cat((box[i], scores[i, j, None], j[:, None].float()), 1)
    conf, j = scores.max(1, keepdim=True)
    return torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]


def _one_image(x, lb, nc, conf_thres, iou_thres, classes, agnostic, multi_label, max_det, max_nms, st):
    # v6.1 zeroes the objectness of boxes with a side outside [MIN_WH, MAX_WH]: same as dropping them
    wh = x[:, 2:4]
    x = x[(x[:, 4] > conf_thres) & ((wh >= MIN_WH) & (wh <= MAX_WH)).all(1)]
    if lb is not None and len(lb):
        x = _with_apriori_labels(x, lb.to(x.device, x.dtype), nc)
    det = _candidates(x, conf_thres, multi_label)
    if classes is not None:
        det = det[(det[:, 5:6] == torch.tensor(classes, device=det.device, dtype=det.dtype)).any(1)]
    n = det.shape[0]
    st.max_candidates = max(st.max_candidates, n)
    if n > max_nms:
        _note_over_max_nms(n, max_nms, st)
        det = det[det[:, 4].argsort(descending=True, stable=True)[:max_nms]]
    if not det.shape[0]:
        return det
    groups = torch.zeros_like(det[:, 5]) if agnostic else det[:, 5]
    keep = batched_nms(det[:, :4], det[:, 4], groups, iou_thres)  # sorted by score
    if keep.shape[0] > max_det:
        st.over_max_det += 1
        st.detections_cut += keep.shape[0] - max_det
        keep = keep[:max_det]
    return det[keep]


def _note_over_max_nms(n: int, max_nms: int, st: NMSStats) -> None:
    global _warned_max_nms
    st.over_max_nms += 1
    st.candidates_cut += n - max_nms
    if not _warned_max_nms:
        _warned_max_nms = True
        LOGGER.warning(f"WARNING: NMS got {n} candidate boxes in one image, more than max_nms={max_nms}; "
                       f"kept the {max_nms} most confident. Shown once; counts are kept in NMSStats "
                       "(utils.eval.nms.last_stats). Raise conf_thres or max_nms if this matters.")


def non_max_suppression(prediction, conf_thres=0.25, iou_thres=0.45, classes=None, agnostic=False,
                        multi_label=False, labels=(), max_det=300, max_nms=MAX_NMS, stats=None):
    """NMS per image -> list of (n, 6) float32 tensors [x1, y1, x2, y2, conf, cls], one per image.

    prediction: (B, N, 5 + nc) Detect output, xywh in pixels, objectness and class scores already
    sigmoid (any float dtype; computed in float32; the input is never modified). conf = obj * cls
    must exceed conf_thres. multi_label (only when nc > 1): one row per class above conf_thres
    (val uses this). classes: keep only these class ids. agnostic: suppress across classes.
    labels: per image (n, 5) [cls, xywh] added as conf-1 detections. Detections come sorted by conf.
    Truncations are counted in `stats` (an NMSStats, accumulated) and in `utils.eval.nms.last_stats`.
    """
    global last_stats
    prediction = _check_args(prediction, conf_thres, iou_thres)
    nc = prediction.shape[2] - 5
    multi_label = multi_label and nc > 1
    call_stats = NMSStats(images=prediction.shape[0])
    if isinstance(classes, int):
        classes = [classes]
    output = []
    for xi in range(prediction.shape[0]):
        lb = labels[xi] if len(labels) else None
        output.append(_one_image(prediction[xi].float(), lb, nc, conf_thres, iou_thres, classes, agnostic,
                                 multi_label, max_det, max_nms, call_stats))
    last_stats = call_stats
    if stats is not None:
        stats.add(call_stats)
    return output
