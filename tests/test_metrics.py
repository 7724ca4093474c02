"""Metrics against numbers worked out by hand: IoUs, matching and the P/R operating point (YOLOv5-current
defaults and v6.1 variants by flag), AP, confusion matrix."""
import math

import numpy as np
import pytest
import torch
import torchvision

from utils.eval.metrics import (IOU_THRESHOLDS, ConfusionMatrix, ap_per_class, bbox_iou, box_iou, compute_ap, fitness,
                           match_predictions, smooth)

# ------------------------------------------------------------------------------------------- IoU --


def test_box_iou_known_geometry():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 10, 10]])
    b = torch.tensor([[1.0, 1, 3, 3], [20, 20, 30, 30], [0, 0, 10, 10]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    # [0,0,2,2] vs [1,1,3,3]: overlap 1x1 = 1, union 4 + 4 - 1 = 7
    assert iou[0, 0].item() == pytest.approx(1 / 7)
    assert iou[0, 1].item() == 0  # disjoint
    # [0,0,2,2] inside [0,0,10,10]: 4 / 100
    assert iou[0, 2].item() == pytest.approx(0.04)
    assert iou[1, 2].item() == pytest.approx(1.0)


def test_box_iou_matches_torchvision_and_handles_zero_area():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, generator=g) * 50
    a = torch.cat((xy, xy + torch.rand(20, 2, generator=g) * 30 + 1), 1)
    xy = torch.rand(15, 2, generator=g) * 50
    b = torch.cat((xy, xy + torch.rand(15, 2, generator=g) * 30 + 1), 1)
    torch.testing.assert_close(box_iou(a, b), torchvision.ops.box_iou(a, b))
    point = torch.tensor([[5.0, 5, 5, 5]])
    assert box_iou(point, point).item() == 0  # not NaN


def test_bbox_iou_giou_diou_ciou_known_geometry():
    b1, b2 = torch.tensor([0.0, 0, 2, 2]), torch.tensor([1.0, 1, 3, 3])
    iou = 1 / 7
    # enclosing box [0,0,3,3]: area 9, diagonal^2 18; centres (1,1) and (2,2): distance^2 2
    assert bbox_iou(b1, b2).item() == pytest.approx(iou, abs=1e-6)
    assert bbox_iou(b1, b2, GIoU=True).item() == pytest.approx(iou - (9 - 7) / 9, abs=1e-6)
    assert bbox_iou(b1, b2, DIoU=True).item() == pytest.approx(iou - 2 / 18, abs=1e-6)
    # same aspect ratio -> CIoU's v term is 0 -> CIoU == DIoU
    assert bbox_iou(b1, b2, CIoU=True).item() == pytest.approx(iou - 2 / 18, abs=1e-6)

    # 4x2 vs 2x4 at the origin: overlap 2x2 = 4, union 12; centres (2,1),(1,2): rho^2 2; enclosing 4x4: c^2 32
    w1, w2 = torch.tensor([0.0, 0, 4, 2]), torch.tensor([0.0, 0, 2, 4])
    v = 4 / math.pi ** 2 * (math.atan(2 / 4) - math.atan(4 / 2)) ** 2
    alpha = v / (v - 1 / 3 + 1)
    assert bbox_iou(w1, w2, CIoU=True).item() == pytest.approx(1 / 3 - (2 / 32 + v * alpha), abs=1e-6)


def test_bbox_iou_xywh_broadcast_and_gradient():
    xyxy = torch.tensor([[0.0, 0, 4, 2], [10, 10, 12, 12]])
    xywh = torch.tensor([[2.0, 1, 4, 2], [11, 11, 2, 2]])
    other = torch.tensor([[0.0, 0, 2, 4], [10, 10, 12, 12]])
    other_xywh = torch.tensor([[1.0, 2, 2, 4], [11, 11, 2, 2]], requires_grad=True)
    ref = bbox_iou(xyxy, other, CIoU=True)
    got = bbox_iou(xywh, other_xywh, xywh=True, CIoU=True)
    assert got.shape == (2,)
    torch.testing.assert_close(got.detach(), ref)
    assert got[1].item() == pytest.approx(1.0, abs=1e-5)  # identical boxes
    (1 - got).sum().backward()  # the loss uses 1 - CIoU
    assert torch.isfinite(other_xywh.grad).all() and other_xywh.grad.abs().sum() > 0


# -------------------------------------------------------------------------------------- matching --

LABELS = torch.tensor([[0.0, 0, 0, 10, 10],  # L0
                       [0.0, 20, 0, 30, 10],  # L1
                       [0.0, 40, 0, 50, 10]])  # L2 (never detected)
# P0 = L0 exactly (IoU 1); P1 = L1 shifted 2 px: overlap 8x10 = 80, union 120 -> IoU 2/3;
# P2 hits nothing; P3 = L0 shifted 1 px (IoU 90/110 = 0.818) but L0 is already taken by P0.
# Confidences sit on the 1000-point confidence grid of ap_per_class so P and R come out exact.
GRID = np.linspace(0, 1, 1000)
CONF = GRID[[900, 800, 700, 600]]
DETS = torch.tensor([[0.0, 0, 10, 10, CONF[0], 0],
                     [22.0, 0, 32, 10, CONF[1], 0],
                     [60.0, 0, 70, 10, CONF[2], 0],
                     [1.0, 0, 11, 10, CONF[3], 0]])


@pytest.mark.parametrize("per_threshold", [True, False])
def test_match_predictions_by_hand(per_threshold):
    # no label has two candidates at any threshold here, so both rules agree
    correct = match_predictions(DETS, LABELS, per_threshold=per_threshold)
    assert correct.shape == (4, 10) and correct.dtype == torch.bool
    assert correct[0].all()  # IoU 1 passes all thresholds
    # IoU 2/3 passes 0.50, 0.55, 0.60, 0.65 and fails 0.70 ... 0.95
    assert correct[1].tolist() == [True] * 4 + [False] * 6
    assert not correct[2].any() and not correct[3].any()


@pytest.mark.parametrize("per_threshold", [True, False])
def test_match_predictions_class_must_agree_and_empty_inputs(per_threshold):
    wrong_class = DETS.clone()
    wrong_class[:, 5] = 1
    assert not match_predictions(wrong_class, LABELS, per_threshold=per_threshold).any()
    assert match_predictions(DETS[:0], LABELS, per_threshold=per_threshold).shape == (0, 10)
    assert not match_predictions(DETS, LABELS[:0], per_threshold=per_threshold).any()
    # right place, wrong class: never; an exact duplicate of a matched detection: never
    labels = torch.tensor([[1, 0.0, 0.0, 10.0, 10.0], [0, 50.0, 50.0, 60.0, 60.0]])
    dets = torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.9, 0.0], [50.0, 50.0, 60.0, 60.0, 0.8, 0.0],
                         [50.0, 50.0, 60.0, 60.0, 0.7, 0.0]])
    correct = match_predictions(dets, labels, per_threshold=per_threshold)
    assert correct[1].all() and not correct[0].any() and not correct[2].any()


# One label, two detections: D0 (more confident, IoU 0.6) and D1 (IoU 0.9). Both rules pick one pair per
# label in detection order after de-duplicating detections (v6.1 quirk), so D0 wins wherever it qualifies.
ONE_LABEL = torch.tensor([[0.0, 0, 0, 10, 10]])
TWO_DETS = torch.tensor([[0.0, 0, 10, 6, 0.9, 0],  # overlap 60, union 100 -> 0.6
                         [0.0, 0, 10, 9, 0.8, 0]])  # overlap 90, union 100 -> 0.9


def test_match_predictions_v61_single_match():
    # v6.1: one pairing at 0.5 (D0), reused at every threshold: D1 is never credited
    correct = match_predictions(TWO_DETS, ONE_LABEL, per_threshold=False)
    assert correct[0].tolist() == [True, True, True] + [False] * 7  # 0.6 >= 0.5, 0.55, 0.6
    assert not correct[1].any()


def test_match_predictions_rematches_at_every_threshold():
    # YOLOv5 now (the default): above 0.6 D0 no longer qualifies and the label goes to D1 (up to 0.9)
    correct = match_predictions(TWO_DETS, ONE_LABEL)
    assert correct[0].tolist() == [True] * 3 + [False] * 7
    assert correct[1].tolist() == [False] * 3 + [True] * 6 + [False]  # 0.65 ... 0.9
    assert correct.sum(0).max() <= 1  # one detection per label at each threshold


# -------------------------------------------------------------------------------------------- AP --

def _ap_by_hand():
    """AP of the 4 detections above, worked out with the 101-point rule.

    IoU >= 0.5..0.65 (4 thresholds): tp = 1,1,0,0 -> recall 1/3, 2/3, 2/3, 2/3; precision 1, 1, 2/3, 1/2.
      With sentinels: mrec 0, 1/3, 2/3, 2/3, 2/3, 1; envelope mpre 1, 1, 1, 2/3, 1/2, 0.
      At recall 0.00..0.66 (67 points) precision is 1; after the last 2/3 it falls linearly from
      1/2 at 2/3 to 0 at 1: p(x) = 1.5 (1 - x) for x = 0.67..1.00.
      Trapezoid, step 0.01: 0.01 * (sum of the 101 values - (first + last) / 2).
    IoU >= 0.70..0.95 (6 thresholds): tp = 1,0,0,0 -> recall 1/3 x4; precision 1, 1/2, 1/3, 1/4.
      Envelope: 1 up to recall 1/3 (x = 0.00..0.33, 34 points), then from 1/4 at 1/3 to 0 at 1:
      p(x) = 0.375 (1 - x) for x = 0.34..1.00.
    """
    hi = 0.01 * (67 + sum(1.5 * (1 - k / 100) for k in range(67, 101)) - (1 + 0) / 2)
    lo = 0.01 * (34 + sum(0.375 * (1 - k / 100) for k in range(34, 101)) - (1 + 0) / 2)
    return hi, lo


def test_ap_per_class_by_hand():
    correct = match_predictions(DETS, LABELS).numpy()
    tp, fp, p, r, f1, ap, classes = ap_per_class(correct, DETS[:, 4].numpy(), DETS[:, 5].numpy(),
                                                  LABELS[:, 0].numpy(), f1_smooth=0)  # v6.1's raw F1 peak
    hi, lo = _ap_by_hand()
    assert hi == pytest.approx(0.74915) and lo == pytest.approx(0.4179125)  # the arithmetic itself
    assert classes.tolist() == [0]
    np.testing.assert_allclose(ap[0], [hi] * 4 + [lo] * 6, rtol=1e-9)
    assert ap[0, 0] == pytest.approx(0.74915)  # mAP50
    assert ap.mean() == pytest.approx((4 * hi + 6 * lo) / 10)  # mAP50-95
    # P/R at the confidence of best F1. At conf 0.8 (2nd detection): P = 2/2, R = 2/3, F1 = 0.8.
    # Just below it P starts to fall (interpolating towards 2/3 at the 3rd), just above it R falls
    # (towards 1/3 at the 1st): F1 peaks exactly there.
    assert p[0] == pytest.approx(1.0) and r[0] == pytest.approx(2 / 3)
    assert f1[0] == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert tp[0] == 2 and fp[0] == 0  # round(R * 3 labels) = 2, round(2 / P - 2) = 0


def test_smooth_keeps_constants_and_spreads_spikes():
    y = np.full(1000, 0.3)
    assert np.allclose(smooth(y, 0.1), 0.3) and len(smooth(y, 0.1)) == 1000
    spike = np.zeros(1000)
    spike[500] = 1.0
    s = smooth(spike, 0.1)  # 101-point box filter
    assert len(s) == 1000 and s.max() == pytest.approx(1 / 101) and math.isclose(s.sum(), 1.0, rel_tol=1e-9)
    np.testing.assert_array_equal(smooth(spike, 0), spike)  # fraction 0: no smoothing (v6.1)


def test_operating_point_smoothed_f1_vs_raw_peak():
    """Class 0: 4 true detections at conf 0.9, 4 false ones at 0.1, 4 labels. On the grid, R = 1 between the
    two confidences while P falls linearly from 1 (at 0.9) to 0.8 (at 0.1); above 0.9, R = 0. The raw F1 peak
    sits at the grid point just below 0.9 (P within one grid step of 1); the 101-point box filter pulls
    the peak ~0.05 lower, where P = 1 - 0.2 * 0.05 / 0.8 ~ 0.9875. AP is the same either way."""
    tp = np.array([[1]] * 4 + [[0]] * 4, bool)
    conf = np.array([0.9] * 4 + [0.1] * 4)
    args = tp, conf, np.zeros(8), np.zeros(4)
    _, _, p_raw, r_raw, _, ap_raw, _ = ap_per_class(*args, f1_smooth=0)
    _, _, p, r, _, ap, _ = ap_per_class(*args)  # default: smoothed, as YOLOv5 now
    assert r_raw[0] == pytest.approx(1.0) and r[0] == pytest.approx(1.0)
    assert p_raw[0] > 0.999 and p[0] == pytest.approx(0.9875, abs=0.002)
    np.testing.assert_array_equal(ap, ap_raw)


def test_ap_perfect_predictions_give_v61_0995():
    # Every label found with IoU 1: recall 1/3, 2/3, 1 at precision 1. The end sentinel (recall 1,
    # precision 0) drags the last interval down: 1 - 0.01 * (1 - 0) / 2 = 0.995, as v6.1 reports.
    ap, mpre, mrec = compute_ap(np.array([1 / 3, 2 / 3, 1.0]), np.array([1.0, 1.0, 1.0]))
    assert ap == pytest.approx(0.995)
    assert mrec[0] == 0 and mrec[-1] == 1 and mpre[0] == 1 and mpre[-1] == 0


def test_ap_per_class_multi_class_and_missing_predictions():
    # class 0: one label, one perfect prediction; class 2: one label, no prediction;
    # class 5: a prediction but no label -> not reported.
    tp = np.array([[True] * 10, [False] * 10])
    out = ap_per_class(tp, np.array([0.9, 0.8]), np.array([0, 5]), np.array([0, 2]))
    tp_c, fp_c, p, r, f1, ap, classes = out
    assert classes.tolist() == [0, 2]
    np.testing.assert_allclose(ap[0], 0.995)
    np.testing.assert_allclose(ap[1], 0.0)
    assert r[1] == 0 and p[1] == 0
    assert ap_per_class(np.zeros((0, 10)), np.zeros(0), np.zeros(0), np.array([1]))[5].shape == (1, 10)
    from_tensors = ap_per_class(torch.from_numpy(tp), torch.tensor([0.9, 0.8]), torch.tensor([0, 5]), [0, 2])
    np.testing.assert_array_equal(from_tensors[5], ap)
    assert ap_per_class(np.zeros((0, 10)), np.zeros(0), np.zeros(0), np.zeros(0))[5].shape == (0, 10)


def test_ap_per_class_plots(tmp_path):
    correct = match_predictions(DETS, LABELS).numpy()
    ap_per_class(correct, DETS[:, 4].numpy(), DETS[:, 5].numpy(), LABELS[:, 0].numpy(),
                 plot=True, save_dir=tmp_path, names={0: "box"})
    for name in ("PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_fitness_weights():
    rows = np.array([[0.5, 0.6, 0.7, 0.4], [1.0, 1.0, 0.2, 0.1]])
    np.testing.assert_allclose(fitness(rows), [0.1 * 0.7 + 0.9 * 0.4, 0.1 * 0.2 + 0.9 * 0.1])
    assert fitness(np.array([0, 0, 1.0, 1.0])).shape == (1,)


COCO_THRESHOLDS = (0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95)  # COCO's 0.5:0.05:0.95


@pytest.mark.parametrize("per_threshold", [True, False])
def test_iou_thresholds_decide_correctness(per_threshold):
    """A detection just above / below each COCO threshold is correct at exactly the thresholds it reaches,
    through the default thresholds (a wrong count, spacing or comparison changes some row)."""
    label = torch.tensor([[0.0, 0, 0, 100, 100]])
    for t in COCO_THRESHOLDS:
        for iou in (t - 0.005, t + 0.005):
            det = torch.tensor([[0.0, 0, 100, 100 * iou, 0.9, 0]])  # inside the label: IoU = its height / 100
            assert abs(box_iou(label[:, 1:], det[:, :4]).item() - iou) < 1e-6
            correct = match_predictions(det, label, per_threshold=per_threshold)[0]
            assert correct.tolist() == [iou >= c for c in COCO_THRESHOLDS], (iou, correct.tolist())
    assert IOU_THRESHOLDS.shape == (10,)


# ------------------------------------------------------------------------------ confusion matrix --

def test_confusion_matrix_by_hand(tmp_path):
    labels = torch.tensor([[0.0, 0, 0, 10, 10], [1.0, 20, 0, 30, 10], [1.0, 40, 0, 50, 10]])
    dets = torch.tensor([[0.0, 0, 10, 10, 0.9, 0],  # on label 0, right class   -> [pred 0, true 0]
                         [20.0, 0, 30, 10, 0.8, 0],  # on label 1, wrong class  -> [pred 0, true 1]
                         [60.0, 0, 70, 10, 0.7, 1],  # on nothing               -> [pred 1, background]
                         [40.0, 0, 50, 10, 0.2, 1]])  # conf 0.2 < 0.25: ignored -> label 2 missed: [bg, 1]
    cm = ConfusionMatrix(nc=2)
    cm.process_batch(dets, labels)
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0],
                                              [0, 0, 1],
                                              [0, 1, 0]])
    tp, fp = cm.tp_fp()
    np.testing.assert_array_equal(tp, [1, 0])  # diagonal without background
    np.testing.assert_array_equal(fp, [1, 1])  # row sums - diagonal: class 0 row 2-1, class 1 row 1-0

    # Fix over v6.1: an image where nothing matches still counts its detections as background FP
    cm.process_batch(torch.tensor([[100.0, 100, 110, 110, 0.9, 1]]), labels[:1])
    assert cm.matrix[1, 2] == 2 and cm.matrix[2, 0] == 1
    cm.process_batch(None, labels[1:2])  # no detections: the label is missed
    assert cm.matrix[2, 1] == 2
    cm.process_batch(dets[:1], labels[:0])  # no labels: the detection is background FP
    assert cm.matrix[0, 2] == 1
    assert cm.plot(save_dir=tmp_path, names=["a", "b"]).stat().st_size > 1000


def test_confusion_matrix_one_to_one_by_iou():
    # two detections on one label: the better-IoU one is matched, the other is background FP
    cm = ConfusionMatrix(nc=1, iou_thres=0.45)
    label = torch.tensor([[0.0, 0, 0, 10, 10]])
    dets = torch.tensor([[0.0, 0, 10, 6, 0.9, 0], [0.0, 0, 10, 9, 0.8, 0]])
    cm.process_batch(dets, label)
    np.testing.assert_array_equal(cm.matrix, [[1, 1], [0, 0]])
