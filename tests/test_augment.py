"""Augmentations keep boxes on the drawn objects: draw coloured boxes, transform, find the colours again."""
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.data.augment import (augment_hsv, flip_lr, flip_ud, letterbox, mosaic4, mosaic4_scale_translate,
                           random_perspective)
from utils.boxes import scale_boxes, xywh2xyxy, xywhn2xyxy, xyxy2xywh, xyxy2xywhn
from utils.data.dataset import LoadImagesAndLabels

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255), (255, 128, 0),
           (128, 0, 255), (0, 128, 255), (255, 255, 255), (128, 255, 0), (0, 0, 0)]
TOL = 4  # px: interpolation erodes thresholded edges ~1 px, rotated corner tips ~1.4x that, times the scale


def draw_objects(rng, h, w, classes):
    """A grey image with one filled rectangle per class (its colour); rows `cls x1 y1 x2 y2` in pixels."""
    im = np.full((h, w, 3), 100, np.uint8)
    rows = []
    for c in classes:
        for _ in range(100):  # objects must not overlap, or occlusion would shrink the visible extent
            bw, bh = rng.integers(w // 6, w // 3), rng.integers(h // 6, h // 3)
            x1, y1 = rng.integers(0, w - bw), rng.integers(0, h - bh)
            if all(x1 > r[3] + 2 or x1 + bw < r[1] - 2 or y1 > r[4] + 2 or y1 + bh < r[2] - 2 for r in rows):
                break
        else:
            raise RuntimeError("could not place the test objects without overlap")
        im[y1:y1 + bh, x1:x1 + bw] = COLOURS[c]
        rows.append([c, x1, y1, x1 + bw, y1 + bh])
    return im, np.array(rows, np.float32)


def colour_mask(im, c):
    return np.abs(im.astype(int) - COLOURS[c]).max(2) < 40


def assert_boxes_match_pixels(im, rows, area_lost_ok=0):
    """Each box is tight around its colour; unboxed pixels of a colour only for dropped slivers."""
    h, w = im.shape[:2]
    for c in range(len(COLOURS)):
        m = colour_mask(im, c)
        boxes = rows[rows[:, 0] == c, 1:5]
        covered = np.zeros_like(m)
        for x1, y1, x2, y2 in boxes:
            ys, xs = np.nonzero(m[max(int(y1) - TOL, 0):int(y2) + TOL, max(int(x1) - TOL, 0):int(x2) + TOL])
            assert len(xs), f"class {c}: box {x1, y1, x2, y2} holds none of its colour"
            ox, oy = max(int(x1) - TOL, 0), max(int(y1) - TOL, 0)
            got = np.array([xs.min() + ox, ys.min() + oy, xs.max() + 1 + ox, ys.max() + 1 + oy])
            assert np.abs(got - [x1, y1, x2, y2]).max() <= TOL, f"class {c}: pixels {got} vs box {x1, y1, x2, y2}"
            covered[max(int(y1) - TOL, 0):int(y2) + TOL, max(int(x1) - TOL, 0):int(x2) + TOL] = True
        assert (m & ~covered).sum() <= area_lost_ok, f"class {c}: {(m & ~covered).sum()} px of it not boxed"


@pytest.mark.parametrize("seed", range(6))
def test_random_perspective_keeps_boxes_on_objects(seed):
    rng = np.random.default_rng(seed)
    random.seed(seed)
    im, rows = draw_objects(rng, 200, 240, classes=[0, 1, 2, 3])
    out, t = random_perspective(im, rows, degrees=30, translate=0.1, scale=0.4, shear=8, perspective=0.0005)
    assert out.shape == im.shape and len(t) >= 1
    # objects cut to < 10% of their area are dropped: their slivers may stay unboxed
    assert_boxes_match_pixels(out, t, area_lost_ok=0.1 * 1.4**2 * (240 // 3) * (200 // 3))


def four_mosaic_inputs(seed):
    """Four 128-wide images of 60-127 rows with two classes each, normalised labels; seeds random too."""
    rng = np.random.default_rng(seed)
    random.seed(seed)
    ims, labels = [], []
    for k in range(4):
        im, rows = draw_objects(rng, int(rng.integers(60, 128)), 128, classes=[2 * k, 2 * k + 1])
        h, w = im.shape[:2]
        labels.append(np.concatenate([rows[:, :1], xyxy2xywhn(rows[:, 1:], w, h)], 1))
        ims.append(im)
    return ims, labels


@pytest.mark.parametrize("seed", range(4))
def test_mosaic_then_perspective_keeps_boxes(seed):
    s = 128
    ims, labels = four_mosaic_inputs(seed)
    center = [int(random.uniform(s // 2, 3 * s // 2)) for _ in range(2)]
    img4, rows4 = mosaic4(ims, labels, s, center)
    assert img4.shape == (2 * s, 2 * s, 3)
    visible = [r for r in rows4 if (r[3] - r[1]) > 0 and (r[4] - r[2]) > 0]
    assert_boxes_match_pixels(img4, np.array(visible).reshape(-1, 5))
    out, t = random_perspective(img4, rows4, degrees=10, translate=0.1, scale=0.5, shear=2,
                                border=(-s // 2, -s // 2))
    assert out.shape == (s, s, 3)
    assert_boxes_match_pixels(out, t, area_lost_ok=0.1 * 1.5**2 * (128 // 3) ** 2)


@pytest.mark.parametrize("seed", range(6))
def test_fast_mosaic_scale_translate_keeps_boxes(seed):
    s = 128
    ims, labels = four_mosaic_inputs(seed)
    center = [int(random.uniform(s // 2, 3 * s // 2)) for _ in range(2)]
    out, t = mosaic4_scale_translate(lambda k: ims[k], [im.shape[:2] for im in ims], labels, s, center,
                                     scale=0.5, translate=0.1)
    assert out.shape == (s, s, 3) and t.shape[1] == 5
    assert_boxes_match_pixels(out, t, area_lost_ok=0.1 * 1.5**2 * (128 // 3) ** 2)


def test_flips_move_boxes_with_pixels():
    rng = np.random.default_rng(0)
    im, rows = draw_objects(rng, 90, 120, classes=[0, 1, 2])
    n = np.concatenate([rows[:, :1], xyxy2xywhn(rows[:, 1:], 120, 90)], 1)
    for flip in (flip_lr, flip_ud):
        im2, n2 = flip(im.copy(), n.copy())
        px = np.concatenate([n2[:, :1], xywhn2xyxy(n2[:, 1:], 120, 90)], 1)
        assert_boxes_match_pixels(np.ascontiguousarray(im2), px)


def test_letterbox_and_scale_boxes_round_trip():
    im = np.zeros((300, 500, 3), np.uint8)
    out, ratio, pad = letterbox(im, 256, auto=False)
    assert out.shape == (256, 256, 3) and ratio == (256 / 500, 256 / 500)
    assert pad == (0.0, (256 - round(300 * 256 / 500)) / 2)
    boxes = np.array([[10.0, 20.0, 200.0, 290.0]])
    lb = boxes * ratio[0] + [pad[0], pad[1], pad[0], pad[1]]
    back = scale_boxes(out.shape[:2], lb.copy(), im.shape[:2], ratio_pad=((ratio[0], ratio[0]), pad))
    assert np.allclose(back, boxes, atol=1e-6)
    back2 = scale_boxes(out.shape[:2], lb.copy(), im.shape[:2])  # recomputed letterbox agrees
    assert np.allclose(back2, boxes, atol=1.0)
    auto, _, _ = letterbox(im, 256, auto=True, stride=32)
    assert auto.shape[0] % 32 == 0 and auto.shape[1] == 256


def test_box_conversions_round_trip_numpy_and_torch():
    x = np.array([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.0, 2.0]])
    assert np.allclose(xywh2xyxy(xyxy2xywh(x)), x)
    assert np.allclose(xywhn2xyxy(xyxy2xywhn(x, 100, 200), 100, 200), x)
    t = torch.tensor(x)
    assert torch.allclose(xywh2xyxy(xyxy2xywh(t)), t) and isinstance(xyxy2xywh(t), torch.Tensor)
    assert np.allclose(x, [[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.0, 2.0]])  # inputs untouched


def test_hsv_changes_colours_but_not_geometry():
    np.random.seed(0)
    im = np.zeros((40, 40, 3), np.uint8)
    im[10:20, 10:30] = (40, 120, 200)
    before = im.copy()
    augment_hsv(im, 0.5, 0.7, 0.4)
    assert not np.array_equal(im, before)
    assert (im[:10] == 0).all() and (im[10:20, 10:30].astype(int).sum(2) > 0).all()


def _rect_dataset(root: Path, n=4):
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    for i in range(n):
        h, w = int(rng.integers(80, 160)), int(rng.integers(80, 160))
        im, rows = draw_objects(rng, h, w, classes=[3 * i % 12, (3 * i + 1) % 12, (3 * i + 2) % 12])
        cv2.imwrite(str(root / "images" / f"{i}.png"), im[:, :, ::-1])  # COLOURS are RGB
        n_ = xyxy2xywhn(rows[:, 1:], w, h)
        (root / "labels" / f"{i}.txt").write_text("".join(f"{int(c)} {' '.join(map(str, b))}\n"
                                                          for c, b in zip(rows[:, 0], n_)))
    return root / "images"


@pytest.mark.parametrize("mosaic,degrees", [(1.0, 15), (1.0, 0), (0.0, 15)])  # degrees 0: fast mosaic path
def test_dataset_items_keep_boxes_on_objects(tmp_path, monkeypatch, mosaic, degrees):
    monkeypatch.setenv("YOLOV5_CACHE_DIR", str(tmp_path / "c"))
    hyp = dict(hsv_h=0, hsv_s=0, hsv_v=0, degrees=degrees, translate=0.1, scale=0.5, shear=degrees / 8,
               perspective=0.0, flipud=0.5, fliplr=0.5, mosaic=mosaic, mixup=0.0)
    ds = LoadImagesAndLabels(str(_rect_dataset(tmp_path)), img_size=128, batch_size=2, augment=True, hyp=hyp)
    random.seed(0)
    np.random.seed(0)
    for k in range(12):
        img, labels, _, shapes = ds[k % ds.n]
        im = img.permute(1, 2, 0).numpy()  # RGB HWC, same order as COLOURS
        assert im.shape == (128, 128, 3) and (shapes is None) == (mosaic == 1.0)
        px = labels[:, 1:].numpy().copy()
        px[:, 1:] = xywhn2xyxy(px[:, 1:], 128, 128)
        assert_boxes_match_pixels(np.ascontiguousarray(im), px, area_lost_ok=0.1 * 1.5**2 * 53**2)
