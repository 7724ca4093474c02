"""AutoAnchor: BPR of hand-made anchors, replacement only when it helps, k-means + evolution output."""
from types import SimpleNamespace

import numpy as np
import torch

from models.yolo import Model
from utils.train.autoanchor import bpr_and_aat, check_anchors, kmean_anchors, label_wh


def fake_dataset(sizes_px, imgsz=256, n_images=20, seed=0):
    """Square images with boxes of the given pixel sizes (w, h) at imgsz, a few per image."""
    rng = np.random.default_rng(seed)
    labels = []
    for i in range(n_images):
        rows = []
        for w, h in sizes_px:
            j = rng.uniform(0.95, 1.05)
            rows.append([i % 3, 0.5, 0.5, w * j / imgsz, h * j / imgsz])
        labels.append(np.array(rows, np.float32))
    return SimpleNamespace(shapes=np.full((n_images, 2), 640.0), labels=labels)


def test_label_wh_letterbox_scale():
    ds = fake_dataset([(32, 16)], imgsz=256, n_images=2)
    wh = label_wh(ds, 512, jitter=False)
    assert wh.shape == (2, 2)
    np.testing.assert_allclose(wh[:, 0] / wh[:, 1], 2.0, rtol=1e-5)
    assert 60 < wh[0, 0] < 68  # 32 px at 256 -> 64 px at 512


def test_bpr_of_exact_and_far_anchors():
    wh = torch.tensor([[10.0, 10.0], [100.0, 50.0]])
    bpr, aat = bpr_and_aat(torch.tensor([[10.0, 10.0], [100.0, 50.0]]), wh, thr=4.0)
    assert bpr == 1.0 and aat == 1.0
    bpr, _ = bpr_and_aat(torch.tensor([[400.0, 400.0]]), wh, thr=4.0)
    assert bpr == 0.0
    bpr, _ = bpr_and_aat(torch.tensor([[20.0, 20.0]]), wh, thr=4.0)  # fits 10x10 (ratio 2), not 100x50 (ratio 5)
    assert bpr == 0.5


def test_kmean_anchors_sorted_and_fitting():
    sizes = [(8, 8), (12, 20), (30, 15), (50, 50), (90, 60), (60, 120), (150, 150), (200, 120), (240, 240)]
    ds = fake_dataset(sizes)
    k = kmean_anchors(ds, n=9, img_size=256, gen=100, verbose=False)
    assert k.shape == (9, 2)
    areas = k.prod(1)
    assert np.all(np.diff(areas) >= 0)
    bpr, _ = bpr_and_aat(torch.from_numpy(k), torch.from_numpy(label_wh(ds, 256, jitter=False)), 4.0)
    assert bpr > 0.99


def test_check_anchors_replaces_poor_anchors_only():
    model = Model("yolov5n.yaml", nc=3)
    det = model.model[-1]
    ds_small = fake_dataset([(4, 4), (5, 6), (6, 5), (8, 8), (3, 7), (7, 3), (5, 5), (4, 6), (6, 4)])
    before = det.anchors.clone()
    assert check_anchors(ds_small, model, thr=4.0, imgsz=256)  # COCO anchors cannot fit ~5 px boxes
    assert not torch.equal(before, det.anchors)
    px = (det.anchors * det.stride.view(-1, 1, 1)).view(-1, 2)
    bpr, _ = bpr_and_aat(px, torch.from_numpy(label_wh(ds_small, 256, jitter=False)), 4.0)
    assert bpr > 0.98
    assert torch.all(det.anchors.prod(-1).mean(-1).diff() > 0)  # still ordered small -> large with stride

    good = Model("yolov5n.yaml", nc=3)
    ds_coco_like = fake_dataset([(10, 13), (30, 61), (62, 45), (116, 90), (373, 326)], imgsz=640)
    kept = good.model[-1].anchors.clone()
    assert not check_anchors(ds_coco_like, good, thr=4.0, imgsz=640)
    assert torch.equal(kept, good.model[-1].anchors)
