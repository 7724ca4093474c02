"""Image augmentations that keep boxes consistent with pixels (YOLOv5 v6.1 semantics).

Images are HWC uint8 BGR (as cv2 reads them). Boxes passed to the geometric transforms are rows
`cls x1 y1 x2 y2` in pixels; the flips take normalised `cls cx cy w h`. Randomness comes from numpy's
and Python's global generators, which the loader seeds per worker.
"""
import math
import random

import cv2
import numpy as np

PAD_VALUE = 114


def letterbox(im, new_shape=(640, 640), color=(PAD_VALUE,) * 3, auto=True, scale_fill=False, scaleup=True,
              stride=32):
    """Resize keeping aspect ratio and pad to new_shape (h, w); auto=True pads only to a stride multiple.

    Returns (image, (ratio_w, ratio_h), (pad_w, pad_h)) where pad is the left/top padding per side.
    """
    shape = im.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:  # only shrink (better val mAP)
        r = min(r, 1.0)
    ratio = r, r
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    elif scale_fill:  # stretch, no padding
        dw, dh = 0.0, 0.0
        new_unpad = new_shape[1], new_shape[0]
        ratio = new_shape[1] / shape[1], new_shape[0] / shape[0]
    dw, dh = dw / 2, dh / 2
    if shape[::-1] != new_unpad:
        im = cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return im, ratio, (dw, dh)


def augment_hsv(im, hgain=0.5, sgain=0.5, vgain=0.5):
    """Random hue/saturation/value gains applied in place through lookup tables (fast, no float image)."""
    if not (hgain or sgain or vgain):
        return
    r = np.random.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    x = np.arange(0, 256, dtype=r.dtype)
    lut = np.empty((256, 1, 3), np.uint8)  # one 3-channel table: no split/merge of the image
    lut[:, 0, 0] = (x * r[0]) % 180
    lut[:, 0, 1] = np.clip(x * r[1], 0, 255)
    lut[:, 0, 2] = np.clip(x * r[2], 0, 255)
    im_hsv = cv2.LUT(cv2.cvtColor(im, cv2.COLOR_BGR2HSV), lut)
    cv2.cvtColor(im_hsv, cv2.COLOR_HSV2BGR, dst=im)


def box_candidates(box1, box2, wh_thr=2, ar_thr=100, area_thr=0.1, eps=1e-16):
    """Keep boxes (4, n) that stay > wh_thr px, keep > area_thr of their area, and are not slivers."""
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def perspective_matrix(in_shape, out_shape, degrees, translate, scale, shear, perspective):
    """Random 3x3 homography: centre, perspective, rotate+scale, shear, translate. Returns (M, scale)."""
    C = np.eye(3)
    C[0, 2], C[1, 2] = -in_shape[1] / 2, -in_shape[0] / 2  # move the centre to the origin
    P = np.eye(3)
    P[2, 0], P[2, 1] = random.uniform(-perspective, perspective), random.uniform(-perspective, perspective)
    R = np.eye(3)
    a, s = random.uniform(-degrees, degrees), random.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    S = np.eye(3)
    S[0, 1] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = random.uniform(0.5 - translate, 0.5 + translate) * out_shape[1]
    T[1, 2] = random.uniform(0.5 - translate, 0.5 + translate) * out_shape[0]
    return T @ S @ R @ P @ C, s


def _clip_polygon(pts, width, height):
    """Sutherland-Hodgman: the part of a convex polygon (k, 2) inside [0, width] x [0, height]."""
    for axis, bound, inside in ((0, 0, np.greater_equal), (0, width, np.less_equal),
                                (1, 0, np.greater_equal), (1, height, np.less_equal)):
        if not len(pts):
            break
        out = []
        for p, q in zip(pts, np.roll(pts, -1, 0)):
            p_in, q_in = inside(p[axis], bound), inside(q[axis], bound)
            if p_in:
                out.append(p)
            if p_in != q_in:  # the edge crosses the bound: add the crossing point
                t = (bound - p[axis]) / (q[axis] - p[axis])
                out.append(p + t * (q - p))
        pts = np.array(out).reshape(-1, 2)
    return pts


def transform_boxes(boxes, M, width, height, perspective=False):
    """Map xyxy boxes (n, 4) through M by their 4 corners; the new box bounds the transformed rectangle.

    When M rotates or shears, a corner can leave the image while the rest stays: the box then bounds
    the part of the transformed rectangle inside the image (clipping the corners' hull would be loose).
    """
    n = len(boxes)
    xy = np.ones((n * 4, 3))
    xy[:, :2] = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(n * 4, 2)  # x1y1, x2y1, x2y2, x1y2 (in order)
    xy = xy @ M.T
    xy = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 4, 2)
    new = np.concatenate((xy.min(1), xy.max(1)), 1)
    outside = (new[:, 0] < 0) | (new[:, 1] < 0) | (new[:, 2] > width) | (new[:, 3] > height)
    if perspective or M[0, 1] or M[1, 0]:  # not axis-aligned: clip the polygon, not its hull
        for i in np.nonzero(outside)[0]:
            poly = _clip_polygon(xy[i], width, height)
            new[i] = np.concatenate((poly.min(0), poly.max(0))) if len(poly) else 0
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
    return new


def random_perspective(im, targets=(), degrees=10, translate=0.1, scale=0.1, shear=10, perspective=0.0,
                       border=(0, 0)):
    """Warp the image randomly and its boxes with it; targets rows are `cls x1 y1 x2 y2` in pixels.

    border (h, w) < 0 shrinks the output (mosaic: a 2s canvas comes out as s). Boxes that become tiny,
    thin, or lose > 90% of their area are dropped.
    """
    height, width = im.shape[0] + border[0] * 2, im.shape[1] + border[1] * 2
    M, s = perspective_matrix(im.shape, (height, width), degrees, translate, scale, shear, perspective)
    if border[0] or border[1] or (M != np.eye(3)).any():
        if perspective:
            im = cv2.warpPerspective(im, M, dsize=(width, height), borderValue=(PAD_VALUE,) * 3)
        else:
            im = cv2.warpAffine(im, M[:2], dsize=(width, height), borderValue=(PAD_VALUE,) * 3)
    targets = np.asarray(targets, np.float32).reshape(-1, 5)
    if len(targets):
        new = transform_boxes(targets[:, 1:5], M, width, height, bool(perspective))
        keep = box_candidates(targets[:, 1:5].T * s, new.T, area_thr=0.10)
        targets = targets[keep]
        targets[:, 1:5] = new[keep]
    return im, targets


def mosaic_placements(shapes, s, center):
    """For 4 images of shapes [(h, w)] around center (xc, yc) on a 2s canvas: (canvas box, image box) each."""
    xc, yc = center
    out = []
    for i, (h, w) in enumerate(shapes):
        if i == 0:  # top left
            a = max(xc - w, 0), max(yc - h, 0), xc, yc
            b = w - (a[2] - a[0]), h - (a[3] - a[1]), w, h
        elif i == 1:  # top right
            a = xc, max(yc - h, 0), min(xc + w, s * 2), yc
            b = 0, h - (a[3] - a[1]), min(w, a[2] - a[0]), h
        elif i == 2:  # bottom left
            a = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
            b = w - (a[2] - a[0]), 0, w, min(a[3] - a[1], h)
        else:  # bottom right
            a = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
            b = 0, 0, min(w, a[2] - a[0]), min(a[3] - a[1], h)
        out.append((a, b))
    return out


def mosaic4(ims, labels, s, center):
    """Tile 4 images around center on a 2s x 2s canvas; labels are normalised `cls cx cy w h` per image.

    Returns the canvas and rows `cls x1 y1 x2 y2` in canvas pixels, clipped to the canvas.
    """
    canvas = np.full((s * 2, s * 2, ims[0].shape[2]), PAD_VALUE, dtype=np.uint8)
    rows = []
    for im, lb, (a, b) in zip(ims, labels, mosaic_placements([im.shape[:2] for im in ims], s, center)):
        canvas[a[1]:a[3], a[0]:a[2]] = im[b[1]:b[3], b[0]:b[2]]
        rows.append(_tile_rows(lb, im.shape[:2], a[0] - b[0], a[1] - b[1]))
    out = np.concatenate(rows, 0)
    out[:, 1:] = out[:, 1:].clip(0, 2 * s)
    return canvas, out


def mosaic4_scale_translate(load, shapes, labels, s, center, scale=0.5, translate=0.1):
    """mosaic4 followed by a random scale + translation to s x s, without building the 2s canvas.

    Same distribution as mosaic4 + random_perspective with degrees = shear = perspective = 0 (every
    shipped hyp): only the canvas window that lands in the output is assembled, then resized, and a
    tile is loaded (load(k) -> image of shapes[k] = (h, w)) only if it shows. The window is whole
    pixels, so the transform actually applied (a crop and a scale) is used for the boxes, which stay
    exact. Returns (image, rows `cls x1 y1 x2 y2` in output pixels).
    """
    gain = random.uniform(1 - scale, 1 + scale)
    tx, ty = (random.uniform(0.5 - translate, 0.5 + translate) * s for _ in range(2))
    rw = rh = max(int(round(s / gain)), 1)  # window size in canvas pixels
    ox, oy = int(math.floor(s - tx / gain)), int(math.floor(s - ty / gain))  # window corner on the canvas
    window = None
    rows = []
    for k, (lb, (a, b)) in enumerate(zip(labels, mosaic_placements(shapes, s, center))):
        x1, y1 = max(a[0], ox), max(a[1], oy)  # the part of this tile inside the window
        x2, y2 = min(a[2], ox + rw), min(a[3], oy + rh)
        if x2 > x1 and y2 > y1:
            im = load(k)
            if window is None:
                window = np.full((rh, rw, im.shape[2]), PAD_VALUE, dtype=np.uint8)
            window[y1 - oy:y2 - oy, x1 - ox:x2 - ox] = im[y1 - a[1] + b[1]:y2 - a[1] + b[1],
                                                         x1 - a[0] + b[0]:x2 - a[0] + b[0]]
        rows.append(_tile_rows(lb, shapes[k], a[0] - b[0], a[1] - b[1]))
    if window is None:  # the window fell beside every tile
        window = np.full((rh, rw, 3), PAD_VALUE, dtype=np.uint8)
    out = cv2.resize(window, (s, s), interpolation=cv2.INTER_LINEAR) if rw != s else window
    rows = np.concatenate(rows, 0)
    rows[:, 1:] = rows[:, 1:].clip(0, 2 * s)  # the 2s canvas bounds, as in mosaic4
    if not len(rows):
        return out, rows
    k = s / rw  # the scale actually applied
    new = ((rows[:, 1:5] - [ox, oy, ox, oy]) * k).clip(0, s)
    keep = box_candidates(rows[:, 1:5].T * k, new.T, area_thr=0.10)
    rows = rows[keep]
    rows[:, 1:5] = new[keep]
    return out, rows


def _tile_rows(lb, hw, padw, padh):
    """Normalised `cls cx cy w h` of one tile -> `cls x1 y1 x2 y2` in canvas pixels."""
    h, w = hw
    r = np.asarray(lb, np.float32).reshape(-1, 5).copy()
    if len(r):
        cx, cy, bw, bh = r[:, 1].copy(), r[:, 2].copy(), r[:, 3].copy(), r[:, 4].copy()
        r[:, 1], r[:, 2] = w * (cx - bw / 2) + padw, h * (cy - bh / 2) + padh
        r[:, 3], r[:, 4] = w * (cx + bw / 2) + padw, h * (cy + bh / 2) + padh
    return r


def mixup(im, labels, im2, labels2):
    """Blend two images with a Beta(32, 32) weight and keep both label sets (YOLOv5's MixUp)."""
    r = np.random.beta(32.0, 32.0)
    im = cv2.addWeighted(im, r, im2, 1 - r, 0)
    return im, np.concatenate((labels, labels2), 0)


def flip_lr(im, labels_xywhn):
    """Mirror left-right; labels are normalised `cls cx cy w h` (modified in place)."""
    if len(labels_xywhn):
        labels_xywhn[:, 1] = 1 - labels_xywhn[:, 1]
    return np.fliplr(im), labels_xywhn


def flip_ud(im, labels_xywhn):
    """Mirror up-down; labels are normalised `cls cx cy w h` (modified in place)."""
    if len(labels_xywhn):
        labels_xywhn[:, 2] = 1 - labels_xywhn[:, 2]
    return np.flipud(im), labels_xywhn
