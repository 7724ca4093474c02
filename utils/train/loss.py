"""YOLOv5 v6.1 training loss: anchor matching, CIoU box loss, IoU-target objectness, BCE classes.

Matching: a target goes to every anchor whose width and height ratios to it stay within
`anchor_t` (both ways), in the cell holding its centre and in the two neighbouring cells whose
border lies within half a cell of the centre (so each target gets up to 3 cells per anchor).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from utils.eval.metrics import bbox_iou
from utils.torch_utils import de_parallel

LEVEL_BALANCE = {3: [4.0, 1.0, 0.4]}  # objectness weight per level, P3 first
LEVEL_BALANCE_DEFAULT = [4.0, 1.0, 0.25, 0.06, 0.02]  # P3..P7
# Centre cell plus the four neighbours, in half-cell units (scaled by g = 0.5 below).
NEIGHBOUR_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)


def smooth_bce(eps: float = 0.0) -> tuple[float, float]:
    """Positive and negative BCE targets under label smoothing eps."""
    return 1.0 - 0.5 * eps, 0.5 * eps


class FocalLoss(nn.Module):
    """Focal loss around a BCE-with-logits loss (gamma, alpha as in the focal-loss paper)."""

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.loss_fcn, self.gamma, self.alpha = loss_fcn, gamma, alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"  # the focal factor is applied per element

    def forward(self, pred, true):
        loss = self.loss_fcn(pred, true)
        p = torch.sigmoid(pred)
        p_t = true * p + (1 - true) * (1 - p)
        alpha_factor = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_factor * (1.0 - p_t) ** self.gamma
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum() if self.reduction == "sum" else loss


class ObjectnessAndMatched(torch.autograd.Function):
    """pi -> (pi[..., 4], pi[b, a, gj, gi]) with a single gradient buffer laid out like pi.

    Autograd would give each of the two selections its own zero-filled full-size gradient, add them,
    and then copy the sum into the conv output's memory layout: four passes over the largest tensor
    of the step. Here the gradient is written once, with pi's strides, so it flows back through the
    head's permute and view without a copy.
    """

    @staticmethod
    def forward(ctx, pi, b, a, gj, gi):
        ctx.save_for_backward(b, a, gj, gi)
        like = torch.empty_like(pi, device="meta")  # pi's strides when dense, else contiguous; no memory
        ctx.size, ctx.strides, ctx.dtype, ctx.device = like.size(), like.stride(), pi.dtype, pi.device
        return pi[..., 4].clone(), pi[b, a, gj, gi]

    @staticmethod
    def backward(ctx, g_obj, g_matched):
        b, a, gj, gi = ctx.saved_tensors
        grad = torch.empty_strided(ctx.size, ctx.strides, dtype=ctx.dtype, device=ctx.device).zero_()
        if g_obj is not None:
            grad[..., 4] = g_obj
        if g_matched is not None and b.shape[0]:
            grad.index_put_((b, a, gj, gi), g_matched, accumulate=True)  # a cell may hold several targets
        return grad, None, None, None, None


class ComputeLoss:
    """loss, items = ComputeLoss(model, hyp)(preds, targets); items = (box, obj, cls) detached.

    hyp: the run's settled hyperparameters (gains already scaled, see utils/train/hyp.py); read, never written.
    """

    def __init__(self, model: nn.Module, hyp: dict):
        model = de_parallel(model)
        det = model.model[-1]
        device = next(model.parameters()).device
        self.bce_cls = self._bce(hyp.get("cls_pw", 1.0), hyp.get("fl_gamma", 0.0), device)
        self.bce_obj = self._bce(hyp.get("obj_pw", 1.0), hyp.get("fl_gamma", 0.0), device)
        self.cp, self.cn = smooth_bce(hyp.get("label_smoothing", 0.0))
        self.balance = LEVEL_BALANCE.get(det.nl, LEVEL_BALANCE_DEFAULT)
        self.gr, self.hyp = 1.0, hyp
        self.na, self.nc, self.nl = det.na, det.nc, det.nl
        self.anchors = det.anchors  # (nl, na, 2) in grid units; a live view, so autoanchor updates show
        self.anchor_t = hyp["anchor_t"]

    @staticmethod
    def _bce(pos_weight: float, fl_gamma: float, device) -> nn.Module:
        loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight], device=device))
        return FocalLoss(loss, fl_gamma) if fl_gamma > 0 else loss

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor):
        device = targets.device
        lcls, lbox, lobj = (torch.zeros(1, device=device) for _ in range(3))
        tcls, tbox, indices, anchors = self.build_targets(preds, targets)
        for i, pi in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], device=device, dtype=pi.dtype)
            pobj, ps = ObjectnessAndMatched.apply(pi, b, a, gj, gi)
            if b.shape[0]:
                iou = self._box_iou(ps, tbox[i], anchors[i])
                lbox += (1.0 - iou).mean()
                tobj[b, a, gj, gi] = (1.0 - self.gr) + self.gr * iou.detach().clamp(0).to(tobj.dtype)
                if self.nc > 1:  # a single class is learnt through objectness alone
                    t = torch.full_like(ps[:, 5:], self.cn)
                    t[torch.arange(b.shape[0], device=device), tcls[i]] = self.cp
                    lcls += self.bce_cls(ps[:, 5:], t)
            lobj += self.bce_obj(pobj, tobj) * self.balance[i]
        lbox *= self.hyp["box"]
        lobj *= self.hyp["obj"]
        lcls *= self.hyp["cls"]
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    @staticmethod
    def _box_iou(ps: torch.Tensor, tbox: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """CIoU of decoded predictions (cell-relative centre, anchor-scaled size) with the targets."""
        pxy = ps[:, :2].sigmoid() * 2 - 0.5
        pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * anchors
        return bbox_iou(torch.cat((pxy, pwh), 1), tbox, xywh=True, CIoU=True)

    def build_targets(self, preds, targets):
        """Per level: class ids, boxes (xy relative to the cell, wh in grid units), (b, a, gj, gi), anchors."""
        na, nt = self.na, targets.shape[0]
        device = targets.device
        tcls, tbox, indices, anch = [], [], [], []
        anchor_ids = torch.arange(na, device=device).float().view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), anchor_ids[:, :, None]), 2)  # (na, nt, 7)
        g = 0.5
        off = NEIGHBOUR_OFFSETS.to(device) * g
        gain = torch.ones(7, device=device)
        for i in range(self.nl):
            anchors, shape = self.anchors[i], preds[i].shape
            gain[2:6] = torch.tensor(shape, device=device, dtype=torch.float32)[[3, 2, 3, 2]]
            t = targets * gain  # to grid units
            if nt:
                t, offsets = self._match(t, anchors, gain, off, g)
            else:
                t, offsets = targets[0], 0
            b, c = t[:, :2].long().T
            gxy, gwh = t[:, 2:4], t[:, 4:6]
            gij = (gxy - offsets).long()
            gi = gij[:, 0].clamp(0, int(shape[3]) - 1)
            gj = gij[:, 1].clamp(0, int(shape[2]) - 1)
            a = t[:, 6].long()
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - torch.stack((gi, gj), 1), gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch

    def _match(self, t, anchors, gain, off, g):
        """Keep (target, anchor) pairs within anchor_t and add the two nearest neighbour cells."""
        r = t[..., 4:6] / anchors[:, None]
        keep = torch.max(r, 1 / r).max(2)[0] < self.anchor_t
        t = t[keep]
        gxy = t[:, 2:4]
        gxi = gain[[2, 3]] - gxy  # distance from the far border
        left, top = ((gxy % 1 < g) & (gxy > 1)).T
        right, bottom = ((gxi % 1 < g) & (gxi > 1)).T
        use = torch.stack((torch.ones_like(left), left, top, right, bottom))
        t = t.repeat((5, 1, 1))[use]
        offsets = (torch.zeros_like(gxy)[None] + off[:, None])[use]
        return t, offsets
