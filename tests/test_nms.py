"""NMS on hand-built Detect outputs: suppression, classes, agnostic, caps that are reported, dtypes."""
import logging

import pytest
import torch

from utils.eval import nms
from utils.eval.nms import NMSStats, non_max_suppression


def _row(cx, cy, w, h, obj, *cls):
    return [cx, cy, w, h, obj, *cls]


def _pred(*rows):
    """One image, rows of [cx, cy, w, h, obj, cls scores...] -> (1, N, 5 + nc)."""
    return torch.tensor([rows], dtype=torch.float32)


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_seen(monkeypatch):
    monkeypatch.setattr(nms, "_warned_max_nms", False)
    handler = _Capture()
    nms.LOGGER.addHandler(handler)
    yield handler.messages
    nms.LOGGER.removeHandler(handler)


# two boxes 10x10 px, shifted 1 px: IoU 90/110 = 0.82 > 0.45
A = _row(50, 50, 10, 10, 0.9, 0.9, 0.1)
A_SHIFTED = _row(51, 50, 10, 10, 0.8, 0.9, 0.1)
A_SHIFTED_CLS1 = _row(51, 50, 10, 10, 0.8, 0.1, 0.9)
FAR = _row(200, 200, 10, 10, 0.7, 0.1, 0.9)


def test_same_class_overlap_keeps_most_confident():
    out = non_max_suppression(_pred(A_SHIFTED, A, FAR))
    assert len(out) == 1 and out[0].shape == (2, 6)
    det = out[0]
    # sorted by conf = obj * cls: A 0.81 then FAR 0.63; A is returned in xyxy
    torch.testing.assert_close(det[0], torch.tensor([45.0, 45, 55, 55, 0.81, 0]))
    torch.testing.assert_close(det[1, 4:], torch.tensor([0.63, 1.0]))


def test_different_classes_survive_unless_agnostic():
    assert non_max_suppression(_pred(A, A_SHIFTED_CLS1))[0].shape[0] == 2
    det = non_max_suppression(_pred(A, A_SHIFTED_CLS1), agnostic=True)[0]
    assert det.shape[0] == 1 and det[0, 5] == 0


def test_iou_threshold_and_conf_threshold():
    # IoU 0.82: kept with iou_thres 0.9
    assert non_max_suppression(_pred(A, A_SHIFTED), iou_thres=0.9)[0].shape[0] == 2
    # conf of FAR is 0.7 * 0.9 = 0.63
    assert non_max_suppression(_pred(FAR), conf_thres=0.64)[0].shape[0] == 0
    assert non_max_suppression(_pred(FAR), conf_thres=0.62)[0].shape[0] == 1


def test_classes_filter():
    det = non_max_suppression(_pred(A, FAR), classes=[1])[0]
    assert det[:, 5].tolist() == [1.0]
    assert non_max_suppression(_pred(A, FAR), classes=0)[0][:, 5].tolist() == [0.0]


def test_multi_label_rows():
    both = _row(50, 50, 10, 10, 0.9, 0.8, 0.6)  # conf 0.72 for class 0, 0.54 for class 1
    det = non_max_suppression(_pred(both), multi_label=True)[0]
    assert det.shape[0] == 2
    assert det[:, 5].tolist() == [0.0, 1.0]
    torch.testing.assert_close(det[:, 4], torch.tensor([0.72, 0.54]))
    assert non_max_suppression(_pred(both), multi_label=False)[0].shape[0] == 1
    # a class below the threshold gives no row
    assert non_max_suppression(_pred(both), multi_label=True, conf_thres=0.6)[0].shape[0] == 1


def test_max_det_is_counted_not_silent():
    rows = [_row(20 * i + 10, 10, 10, 10, 0.5 + 0.01 * i, 1.0, 0.0) for i in range(10)]  # disjoint
    acc = NMSStats()
    out = non_max_suppression(torch.tensor([rows, rows]), max_det=3, stats=acc)
    assert [o.shape[0] for o in out] == [3, 3]
    assert out[0][0, 4].item() == pytest.approx(0.59)  # the most confident are kept
    assert nms.last_stats.over_max_det == 2 and nms.last_stats.detections_cut == 14
    non_max_suppression(torch.tensor([rows]), max_det=3, stats=acc)
    assert acc.images == 3 and acc.over_max_det == 3 and acc.detections_cut == 21
    assert nms.last_stats.images == 1  # last_stats is per call


def test_many_candidates_warn_once_and_are_counted(warnings_seen):
    rows = [_row(20 * i + 10, 10, 10, 10, 0.3 + 0.01 * i, 1.0, 0.0) for i in range(40)]  # disjoint
    out = non_max_suppression(torch.tensor([rows]), max_nms=25, max_det=100)
    assert out[0].shape[0] == 25
    assert out[0][:, 4].min().item() == pytest.approx(0.3 + 0.01 * 15)  # the 25 most confident
    assert nms.last_stats.over_max_nms == 1 and nms.last_stats.candidates_cut == 15
    assert nms.last_stats.max_candidates == 40
    assert len(warnings_seen) == 1 and "40" in warnings_seen[0] and "max_nms=25" in warnings_seen[0]
    non_max_suppression(torch.tensor([rows]), max_nms=25, max_det=100)
    assert len(warnings_seen) == 1  # warned once per process, but still counted:
    assert nms.last_stats.over_max_nms == 1


def test_no_image_dropped_and_empty_images():
    pred = torch.zeros((3, 5, 7))
    pred[1, 0] = torch.tensor(A)
    out = non_max_suppression(pred)
    assert len(out) == 3
    assert [o.shape for o in out] == [(0, 6), (1, 6), (0, 6)]


def test_half_precision_inputs_give_float32_same_result():
    pred = _pred(A, A_SHIFTED, FAR, A_SHIFTED_CLS1)
    ref = non_max_suppression(pred, multi_label=True)[0]
    for dtype in (torch.float16, torch.bfloat16):
        x = pred.to(dtype)
        before = x.clone()
        det = non_max_suppression(x, multi_label=True)[0]
        assert det.dtype == torch.float32 and det.shape == ref.shape
        torch.testing.assert_close(det, ref, atol=0.02, rtol=0.01)
        assert torch.equal(x, before)  # input untouched


def test_tiny_and_huge_boxes_dropped_like_v61():
    tiny = _row(50, 50, 1.5, 10, 0.9, 0.9, 0.1)  # width < 2 px
    huge = _row(50, 50, 8000, 10, 0.9, 0.9, 0.1)  # width > 7680 px
    assert non_max_suppression(_pred(tiny, huge))[0].shape[0] == 0


def test_apriori_labels_added():
    lb = torch.tensor([[1.0, 300, 300, 20, 20]])  # cls, xywh
    det = non_max_suppression(_pred(A), labels=[lb])[0]
    assert det.shape[0] == 2
    assert det[0].tolist() == [290.0, 290.0, 310.0, 310.0, 1.0, 1.0]


def test_tuple_input_and_bad_input():
    pred = _pred(A)
    assert non_max_suppression((pred, [None]))[0].shape[0] == 1
    with pytest.raises(ValueError, match="5 \\+ nc"):
        non_max_suppression(torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match="confidence"):
        non_max_suppression(pred, conf_thres=1.5)
    with pytest.raises(ValueError, match="IoU"):
        non_max_suppression(pred, iou_thres=-0.1)
