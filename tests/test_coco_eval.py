"""COCO json helpers and pycocotools scoring, cross-checked against our own ap_per_class."""
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from utils.eval.coco_eval import (coco80_to_coco91, coco_evaluate, coco_gt_from_label_files, coco_gt_from_yolo,
                             coco_image_ids, predictions_to_coco, save_json)
from utils.eval.metrics import ap_per_class, match_predictions

pytest.importorskip("pycocotools")


def _synthetic_set(n_images=6, nc=3, seed=0):
    """Images of two sizes with 1-5 non-degenerate YOLO labels each (cls, cx, cy, w, h normalised)."""
    rng = np.random.default_rng(seed)
    files, sizes, labels = [], [], []
    for i in range(n_images):
        files.append(f"/data/images/val/{100 + i:012d}.jpg")
        sizes.append((640, 480) if i % 2 else (500, 375))
        m = int(rng.integers(1, 6))
        wh = rng.uniform(0.1, 0.4, (m, 2))
        cxy = rng.uniform(wh / 2, 1 - wh / 2)
        labels.append(np.c_[rng.integers(0, nc, m), cxy, wh])
    return files, sizes, labels


def _pixel_xyxy(lb, size):
    w, h = size
    cx, cy, bw, bh = lb[:, 1] * w, lb[:, 2] * h, lb[:, 3] * w, lb[:, 4] * h
    return np.c_[cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]


def _predictions(labels, sizes, jitter=0.0, extra_fp=0, drop=0.0, seed=1):
    """Detections per image (n, 6) xyxy/conf/cls: the labels, optionally jittered/dropped, plus FPs."""
    rng = np.random.default_rng(seed)
    out = []
    for lb, size in zip(labels, sizes):
        boxes = _pixel_xyxy(lb, size) + rng.normal(0, jitter, (len(lb), 4))
        keep = rng.random(len(lb)) >= drop
        det = np.c_[boxes, rng.uniform(0.5, 1.0, len(lb)), lb[:, 0]][keep]
        fp_xy = rng.uniform(0, 300, (extra_fp, 2))
        fp = np.c_[fp_xy, fp_xy + 30, rng.uniform(0.05, 0.6, extra_fp), rng.integers(0, 3, extra_fp)]
        det = np.r_[det, fp]
        out.append(torch.tensor(det[np.argsort(-det[:, 4])], dtype=torch.float32))
    return out


def _both_scores(files, sizes, labels, preds):
    """(pycocotools mAP50-95, mAP50), (ours mAP50-95, mAP50) for the same detections."""
    gt = coco_gt_from_yolo(files, sizes, labels, names=["a", "b", "c"])
    ids = coco_image_ids(files)
    results = [r for f, p in zip(files, preds) for r in predictions_to_coco(p, ids[f])]
    coco = coco_evaluate(gt, results)
    stats = []
    for lb, size, det in zip(labels, sizes, preds):
        labels_px = torch.tensor(np.c_[lb[:, 0], _pixel_xyxy(lb, size)], dtype=torch.float32)
        stats.append((match_predictions(det, labels_px).numpy(), det[:, 4].numpy(), det[:, 5].numpy(), lb[:, 0]))
    tp, conf, pcls, tcls = (np.concatenate(x, 0) for x in zip(*stats))
    ap = ap_per_class(tp, conf, pcls, tcls)[5]
    return coco, (ap.mean(), ap[:, 0].mean())


def test_perfect_predictions_score_one():
    files, sizes, labels = _synthetic_set()
    coco, ours = _both_scores(files, sizes, labels, _predictions(labels, sizes))
    assert coco == pytest.approx((1.0, 1.0))
    # v6.1's 101-point rule ends with a (recall 1, precision 0) sentinel: a perfect class scores 0.995
    assert ours == pytest.approx((0.995, 0.995))


def test_perturbed_predictions_agree_closely():
    # A detector-like output: boxes jittered by ~3 px, 10% of objects missed, 10 false positives
    # per image. The two scores differ only by how the PR curve is integrated (see the next test).
    files, sizes, labels = _synthetic_set(n_images=20, seed=3)
    preds = _predictions(labels, sizes, jitter=3.0, extra_fp=10, drop=0.1, seed=4)
    (c5095, c50), (o5095, o50) = _both_scores(files, sizes, labels, preds)
    assert 0.3 < c5095 < 0.9 and c50 < 0.95  # the perturbation really costs something
    assert o5095 == pytest.approx(c5095, abs=0.025)
    assert o50 == pytest.approx(c50, abs=0.025)


def test_known_gap_when_recall_stops_short():
    # 1 class, 4 labels, 3 perfect detections, no false positives: recall 0.25, 0.5, 0.75 at precision 1.
    # COCO: mean of precision at recall 0, 0.01, ..., 1 -> 1 at the 76 points up to 0.75, 0 after: 76/101.
    # v6.1: the envelope is interpolated linearly to the sentinel (recall 1, precision 0):
    #       area 0.75 * 1 + triangle 0.5 * 0.25 * 1 = 0.875. So with few objects or a short PR curve
    #       our mAP can sit above pycocotools'; real runs (many low-confidence FPs) shrink the triangle.
    lb = np.array([[0, 0.2, 0.2, 0.1, 0.1], [0, 0.5, 0.5, 0.1, 0.1], [0, 0.8, 0.8, 0.1, 0.1], [0, 0.3, 0.8, 0.1, 0.1]])
    files, sizes = ["/d/images/1.jpg"], [(100, 100)]
    preds = [torch.tensor(np.c_[_pixel_xyxy(lb[:3], sizes[0]), [0.9, 0.8, 0.7], [0, 0, 0]], dtype=torch.float32)]
    (c5095, c50), (o5095, o50) = _both_scores(files, sizes, [lb], preds)
    assert c50 == pytest.approx(76 / 101) and c5095 == pytest.approx(76 / 101)
    assert o50 == pytest.approx(0.875) and o5095 == pytest.approx(0.875)


def test_gt_dict_layout_and_class_map():
    files, sizes, labels = _synthetic_set(n_images=2)
    gt = coco_gt_from_yolo(files, sizes, labels, names={0: "a", 1: "b", 2: "c"}, class_map=coco80_to_coco91())
    assert [im["id"] for im in gt["images"]] == [100, 101]  # numeric stems become the image ids
    assert gt["images"][0]["width"] == 500 and gt["images"][0]["height"] == 375
    assert [c["id"] for c in gt["categories"]] == [1, 2, 3]
    assert len(gt["annotations"]) == sum(len(lb) for lb in labels)
    a, lb = gt["annotations"][0], labels[0][0]
    # [cx, cy, w, h] normalised -> [x_left, y_top, w, h] pixels of a 500x375 image
    np.testing.assert_allclose(a["bbox"], [(lb[1] - lb[3] / 2) * 500, (lb[2] - lb[4] / 2) * 375,
                                           lb[3] * 500, lb[4] * 375])
    assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])
    with pytest.raises(ValueError, match="must match"):
        coco_gt_from_yolo(files, sizes[:1], labels)


def test_class_map_and_image_ids():
    m = coco80_to_coco91()
    assert len(m) == 80 and m[:3] == [1, 2, 3] and m[11] == 13 and m[-1] == 90
    assert coco_image_ids(["a/12.jpg", "b/7.png"]) == {"a/12.jpg": 12, "b/7.png": 7}
    # non-numeric or clashing stems: positions, so ids never mix ints and strings
    assert coco_image_ids(["a/cat.jpg", "b/7.png"]) == {"a/cat.jpg": 0, "b/7.png": 1}
    assert coco_image_ids(["a/7.jpg", "b/007.png"]) == {"a/7.jpg": 0, "b/007.png": 1}


def test_predictions_json_round_trip(tmp_path):
    det = torch.tensor([[10.0, 20, 50, 80, 0.123456, 2]])
    res = predictions_to_coco(det, 5, class_map=coco80_to_coco91())
    assert res == [{"image_id": 5, "category_id": 3, "bbox": [10.0, 20.0, 40.0, 60.0], "score": 0.12346}]
    path = save_json(res, tmp_path / "sub" / "pred.json")
    assert json.loads(path.read_text()) == res


def test_label_files_on_disk_and_json_paths(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.new("RGB", (64, 32)).save(tmp_path / "images" / "1.jpg")
    Image.new("RGB", (40, 40)).save(tmp_path / "images" / "2.jpg")  # no label file: no objects
    (tmp_path / "labels" / "1.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    files = [str(tmp_path / "images" / "1.jpg"), str(tmp_path / "images" / "2.jpg")]
    gt = coco_gt_from_label_files(files, names=["a", "b"])
    assert [(im["width"], im["height"]) for im in gt["images"]] == [(64, 32), (40, 40)]
    assert gt["annotations"][0]["bbox"] == [16.0, 8.0, 32.0, 16.0]
    det = torch.tensor([[16.0, 8, 48, 24, 0.9, 1]])
    gt_path = save_json(gt, tmp_path / "gt.json")
    pred_path = save_json(predictions_to_coco(det, 1), tmp_path / "pred.json")
    assert coco_evaluate(gt_path, pred_path) == pytest.approx((1.0, 1.0))
    assert coco_evaluate(gt_path, []) == (0.0, 0.0)


def test_coco8_labels_scored_against_themselves(shared_dir):
    root = shared_dir / "datasets" / "coco8"
    files = sorted(str(p) for p in (root / "images").rglob("*.jpg"))
    if not files:
        pytest.skip(f"no images under {root}")
    gt = coco_gt_from_label_files(files)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in gt["annotations"]]
    assert coco_evaluate(gt, results) == pytest.approx((1.0, 1.0))


def test_missing_pycocotools_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(ImportError, match="pip install pycocotools"):
        coco_evaluate({"images": [], "annotations": [], "categories": []}, [{"image_id": 1}])
