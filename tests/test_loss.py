"""ComputeLoss on hand-made targets: matching cells/anchors (with neighbours), exact boxes, smoothing, gains."""
import math

import pytest
import torch
import torch.nn as nn

from utils.train.hyp import scale_hyp_gains
from models.yolo import Detect
from utils.train.loss import ComputeLoss, FocalLoss, ObjectnessAndMatched, smooth_bce

HYP = dict(box=0.05, obj=1.0, cls=0.5, cls_pw=1.0, obj_pw=1.0, anchor_t=4.0, fl_gamma=0.0, label_smoothing=0.0)
STRIDES = (8.0, 16.0, 32.0)


class OneHead(nn.Module):
    """Just a Detect as the last layer, with anchors in grid units like a built Model."""

    def __init__(self, anchors_px, nc=2):
        super().__init__()
        det = Detect(nc, anchors_px, ch=(4, 4, 4))
        det.stride = torch.tensor(STRIDES)
        det.anchors /= det.stride.view(-1, 1, 1)
        self.model = nn.ModuleList([det])


def head(anchors_px=None, nc=2, **hyp):
    anchors_px = anchors_px or [[8, 8, 80, 80, 160, 160]] * 3
    return OneHead(anchors_px, nc), ComputeLoss(OneHead(anchors_px, nc), {**HYP, **hyp})


def empty_preds(bs=1, imgsz=64, nc=2):
    return [torch.zeros(bs, 3, imgsz // int(s), imgsz // int(s), 5 + nc) for s in STRIDES]


def test_matching_assigns_centre_cell_and_two_neighbours():
    _, loss = head()
    # 64 px image, P3 grid 8x8; a 8x8 px box centred at (0.3, 0.45) -> grid centre (2.4, 3.6), size 1x1 cell
    targets = torch.tensor([[0, 1, 0.3, 0.45, 0.125, 0.125]])
    tcls, tbox, indices, anch = loss.build_targets(empty_preds(), targets)
    b, a, gj, gi = indices[0]
    assert set(a.tolist()) == {0}  # anchor 1 (10x10 cells) and 2 (20x20) exceed anchor_t=4
    # x fraction 0.4 < 0.5 -> left neighbour; y fraction 0.6 -> the lower neighbour (0.4 from the far side)
    assert sorted(zip(gi.tolist(), gj.tolist())) == [(1, 3), (2, 3), (2, 4)]
    assert tcls[0].tolist() == [1, 1, 1]
    # target xy is relative to each assigned cell: in [-0.5, 1.5) and consistent with the cell index
    xy = tbox[0][:, :2] + torch.stack((gi, gj), 1).float()
    torch.testing.assert_close(xy, torch.tensor([[2.4, 3.6]]).expand(3, 2))
    torch.testing.assert_close(anch[0], loss.anchors[0][0].expand(3, 2))


def test_no_neighbours_at_the_image_border():
    _, loss = head()
    targets = torch.tensor([[0, 0, 0.05, 0.05, 0.125, 0.125]])  # grid (0.4, 0.4): neighbours would be off-image
    _, _, indices, _ = loss.build_targets(empty_preds(), targets)
    b, a, gj, gi = indices[0]
    assert list(zip(gi.tolist(), gj.tolist())) == [(0, 0)]


def _set_exact(pred, b, a, gj, gi, tbox, anchors):
    """Raw outputs whose decoded box equals the target box exactly."""
    sxy = (tbox[:, :2] + 0.5) / 2
    swh = torch.sqrt(tbox[:, 2:4] / anchors) / 2
    pred[b, a, gj, gi, 0:2] = torch.logit(sxy)
    pred[b, a, gj, gi, 2:4] = torch.logit(swh)


def test_perfect_boxes_give_zero_box_loss_and_iou_objectness():
    _, loss = head()
    # one target per image: cells of different targets never collide (a shared cell could fit only one)
    targets = torch.tensor([[0, 0, 0.3, 0.45, 0.125, 0.125], [1, 1, 0.7, 0.6, 0.2, 0.15]])
    preds = empty_preds(bs=2)
    tcls, tbox, indices, anch = loss.build_targets(preds, targets)
    for i in range(3):
        if len(indices[i][0]):
            _set_exact(preds[i], *indices[i], tbox[i], anch[i])
    total, items = loss(preds, targets)
    assert items[0].item() < 1e-5  # box
    wrong = [p.clone() for p in preds]
    wrong[0][..., 0:2] += 0.5
    assert loss(wrong, targets)[1][0].item() > 1e-3


def test_objectness_target_is_detached_clamped_iou():
    _, loss = head(cls=0.0, box=0.0)
    targets = torch.tensor([[0, 0, 0.3, 0.45, 0.125, 0.125]])
    preds = [p.requires_grad_() for p in empty_preds()]
    tcls, tbox, indices, anch = loss.build_targets(preds, targets)
    total, items = loss(preds, targets)
    b, a, gj, gi = indices[0]
    ciou = ComputeLoss._box_iou(preds[0][b, a, gj, gi].detach(), tbox[0], anch[0])
    bce = nn.BCEWithLogitsLoss()
    t3 = torch.zeros(preds[0].shape[:4])
    t3[b, a, gj, gi] = ciou.clamp(0)
    zeros = [torch.zeros(p.shape[:4]) for p in preds]
    lobj = (bce(preds[0][..., 4].detach(), t3) * 4.0 + bce(preds[1][..., 4].detach(), zeros[1]) * 1.0
            + bce(preds[2][..., 4].detach(), zeros[2]) * 0.4)  # level balance 4.0, 1.0, 0.4
    torch.testing.assert_close(items[1], lobj.reshape(()) * HYP["obj"])
    total.backward()
    assert preds[0].grad[..., :4].abs().max() == 0  # the IoU target carries no gradient into the box outputs
    assert preds[0].grad[..., 4].abs().max() > 0


def test_label_smoothing_and_class_loss():
    assert smooth_bce(0.1) == (0.95, 0.05)
    _, loss = head(label_smoothing=0.2)
    assert (loss.cp, loss.cn) == (0.9, 0.1)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.125, 0.125]])
    preds = empty_preds()
    _, _, indices, _ = loss.build_targets(preds, targets)
    for i in range(3):
        b, a, gj, gi = indices[i]
        preds[i][b, a, gj, gi, 6] = 20.0  # confident in the right class (index 1)
        preds[i][b, a, gj, gi, 5] = -20.0
    cls_smooth = loss(preds, targets)[1][2].item()
    _, sharp = head(label_smoothing=0.0)
    assert sharp(preds, targets)[1][2].item() < 1e-6 < cls_smooth  # smoothing penalises over-confidence


def test_single_class_has_no_class_loss():
    _, loss = head(nc=1)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.125, 0.125]])
    assert loss(empty_preds(nc=1), targets)[1][2].item() == 0.0


def test_returns_batch_scaled_total_and_detached_items():
    _, loss = head()
    targets = torch.tensor([[0, 0, 0.3, 0.45, 0.125, 0.125], [1, 1, 0.6, 0.6, 0.3, 0.3]])
    preds = [p.requires_grad_() for p in empty_preds(bs=2)]
    total, items = loss(preds, targets)
    torch.testing.assert_close(total, items.sum().reshape(1) * 2)
    assert total.requires_grad and not items.requires_grad
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in preds)


def test_no_targets_only_objectness():
    _, loss = head()
    total, items = loss(empty_preds(), torch.zeros(0, 6))
    assert items[0] == 0 and items[2] == 0 and items[1] > 0


def test_focal_loss_down_weights_easy_examples():
    bce = nn.BCEWithLogitsLoss()
    fl = FocalLoss(nn.BCEWithLogitsLoss(), gamma=1.5)
    easy, hard = torch.tensor([4.0]), torch.tensor([-1.0])
    one = torch.tensor([1.0])
    assert fl(easy, one) / bce(easy, one) < fl(hard, one) / bce(hard, one)
    _, loss = head(fl_gamma=1.5)
    assert isinstance(loss.bce_obj, FocalLoss)


def test_v61_gain_scaling():
    h = scale_hyp_gains(dict(box=0.05, cls=0.5, obj=1.0), nc=6, nl=3, imgsz=320)
    assert h["box"] == pytest.approx(0.05)
    assert h["cls"] == pytest.approx(0.5 * 6 / 80)
    assert h["obj"] == pytest.approx((320 / 640) ** 2)
    h4 = scale_hyp_gains(dict(box=0.05, cls=0.5, obj=1.0), nc=80, nl=4, imgsz=640)
    assert h4["box"] == pytest.approx(0.05 * 3 / 4) and h4["obj"] == pytest.approx(0.75)
    assert math.isclose(h4["cls"], 0.5 * 3 / 4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_head_split_gradient_equals_plain_indexing(channels_last):
    """The single-buffer gradient of (pi[..., 4], pi[b, a, gj, gi]) is autograd's, repeated cells included,
    and it comes back in the conv output's own layout (no copy through the head's permute)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv_out = torch.randn(2, 3 * 7, 5, 6, dtype=torch.double).contiguous(memory_format=fmt).requires_grad_()
    b, a, gj, gi = (torch.tensor(v) for v in ([0, 1, 1, 1], [0, 2, 2, 1], [1, 4, 4, 0], [2, 5, 5, 3]))
    w_obj, w_matched = torch.randn(2, 3, 5, 6, dtype=torch.double), torch.randn(4, 7, dtype=torch.double)
    grads = []
    for split in (ObjectnessAndMatched.apply, lambda pi, *idx: (pi[..., 4], pi[idx])):
        pi = conv_out.view(2, 3, 7, 5, 6).permute(0, 1, 3, 4, 2)
        obj, matched = split(pi, b, a, gj, gi)
        (grad,) = torch.autograd.grad((obj * w_obj).sum() + (matched * w_matched).sum(), conv_out)
        grads.append(grad)
    assert torch.equal(grads[0], grads[1])
    assert grads[0].is_contiguous(memory_format=fmt)
    none = torch.zeros(0, dtype=torch.long)
    pi = conv_out.view(2, 3, 7, 5, 6).permute(0, 1, 3, 4, 2)
    obj, matched = ObjectnessAndMatched.apply(pi, none, none, none, none)  # no targets at this level
    (grad,) = torch.autograd.grad(obj.sum(), conv_out)
    assert matched.shape == (0, 7) and grad.sum() == 2 * 3 * 5 * 6


def test_training_head_returns_views_with_v61_shapes():
    det = Detect(2, [[8, 8, 80, 80, 160, 160]] * 3, ch=(4, 4, 4)).train()
    xs = [torch.randn(2, 4, 8 // 2 ** i, 8 // 2 ** i) for i in range(3)]
    out = det(list(xs))
    for i, o in enumerate(out):
        ref = det.m[i](xs[i]).view(2, 3, 7, *xs[i].shape[2:]).permute(0, 1, 3, 4, 2).contiguous()
        assert o.shape == ref.shape and torch.equal(o, ref)
