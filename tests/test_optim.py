"""Optimizer groups cover every trainable parameter once; schedules, warm-up, decay scaling, EMA, early stop."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from models.yolo import Model
from utils.train.early_stopping import EarlyStopping
from utils.train.ema import ModelEMA
from utils.train.optim import (accumulate_steps, apply_warmup, build_optimizer, lr_lambda, parameter_groups,
                         scaled_weight_decay, warmup_iters)


class RawParams(nn.Module):
    """Stand-in for attention blocks with bare Parameters (ACmix rate1/rate2, attention_biases, rpe_table)."""

    def __init__(self, c=8):
        super().__init__()
        self.rate1 = nn.Parameter(torch.tensor(0.5))
        self.rpe_table = nn.Parameter(torch.zeros(3, 5, 5))
        self.ln = nn.LayerNorm(c)
        self.gn = nn.GroupNorm(2, c)
        self.proj = nn.Linear(c, c)
        self.shared = self.proj  # the same module reachable twice must not duplicate its parameters

    def forward(self, x):
        return x


def _ids(params):
    return [id(p) for p in params]


def assert_exact_cover(model):
    norm_w, decay_w, biases = parameter_groups(model)
    all_ids = _ids(norm_w) + _ids(decay_w) + _ids(biases)
    assert len(all_ids) == len(set(all_ids)), "a parameter is in two groups"
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(all_ids) == trainable
    return norm_w, decay_w, biases


def test_groups_cover_raw_parameters_and_all_norm_types():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), RawParams())
    norm_w, decay_w, biases = assert_exact_cover(m)
    raw = m[2]
    assert {id(raw.rate1), id(raw.rpe_table), id(raw.proj.weight), id(m[0].weight)} <= set(_ids(decay_w))
    assert set(_ids(norm_w)) == {id(m[1].weight), id(raw.ln.weight), id(raw.gn.weight)}
    assert {id(m[1].bias), id(raw.ln.bias), id(raw.proj.bias)} <= set(_ids(biases))


def test_groups_cover_an_attention_model_and_skip_frozen():
    model = Model("yolov5n_ACmix.yaml", nc=3)
    norm_w, decay_w, biases = assert_exact_cover(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert any(names[i].endswith("rate1") for i in _ids(decay_w))
    for p in model.model[0].parameters():
        p.requires_grad_(False)
    assert_exact_cover(model)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_build_optimizer_three_groups_decay_only_on_weights(name):
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    opt = build_optimizer(m, name, lr=0.01, momentum=0.9, weight_decay=1e-3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 1e-3, 0.0]
    if name == "SGD":
        assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
    else:
        assert opt.param_groups[0]["betas"][0] == 0.9
    with pytest.raises(ValueError, match="RMSprop"):
        build_optimizer(m, "RMSprop")


@pytest.mark.parametrize("cos", [False, True])
def test_lr_schedule_endpoints(cos):
    lf = lr_lambda(10, 0.01, cos)
    assert lf(0) == pytest.approx(1.0) and lf(10) == pytest.approx(0.01)
    assert lf(5) == pytest.approx(0.505)  # both schedules pass the midpoint halfway
    values = [lf(e) for e in range(11)]
    assert all(a > b for a, b in zip(values, values[1:]))
    if cos:
        assert lf(1) > lr_lambda(10, 0.01, False)(1)  # cosine stays high early


def test_warmup_interpolates_lr_momentum_and_accumulation():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    opt = build_optimizer(m, "SGD", lr=0.01, momentum=0.937)
    for g in opt.param_groups:
        g["initial_lr"] = 0.01
    hyp = dict(warmup_bias_lr=0.1, warmup_momentum=0.8, momentum=0.937)
    lf = lr_lambda(10, 0.01, False)
    acc = apply_warmup(opt, 0, 100, 0, lf, hyp, batch_size=16)
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0, 0.1] and acc == 1
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.8)
    acc = apply_warmup(opt, 100, 100, 0, lf, hyp, batch_size=16)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01] * 3) and acc == 4
    assert opt.param_groups[2]["momentum"] == pytest.approx(0.937)
    assert warmup_iters(3, 8) == 100 and warmup_iters(3, 1000) == 3000 and warmup_iters(0, 8) == 0


def test_weight_decay_scaling():
    assert accumulate_steps(16) == 4 and accumulate_steps(128) == 1
    assert scaled_weight_decay(5e-4, 16) == pytest.approx(5e-4)
    assert scaled_weight_decay(5e-4, 128) == pytest.approx(1e-3)
    assert scaled_weight_decay(5e-4, 48) == pytest.approx(5e-4 * 48 / 64)
    assert accumulate_steps(16, nbs=16) == 1 and scaled_weight_decay(5e-4, 8, nbs=16) == pytest.approx(5e-4)


def test_ema_ramp_and_update():
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(m)
    assert ema.decay(2000) == pytest.approx(0.9999 * (1 - math.exp(-1)))
    assert not any(p.requires_grad for p in ema.ema.parameters())
    with torch.no_grad():
        m[0].weight.add_(1.0)
        m[1].running_mean.fill_(2.0)
    before = ema.ema[0].weight.clone()
    ema.update(m)
    d = ema.decay()
    torch.testing.assert_close(ema.ema[0].weight, before * d + m[0].weight * (1 - d))
    torch.testing.assert_close(ema.ema[1].running_mean, torch.full((2,), 2.0 * (1 - d)))
    assert ema.ema[1].num_batches_tracked == 0  # integer buffers are not averaged
    assert ema.updates == 1


def test_early_stopping():
    stop = EarlyStopping(patience=2)
    assert [stop(e, f) for e, f in enumerate([0.1, 0.2, 0.15, 0.19])] == [False, False, False, True]
    assert stop.best_epoch == 1
    never = EarlyStopping(patience=0)
    assert not any(never(e, 0.0 if e else 1.0) for e in range(50))
    assert np.isfinite(never.best_fitness)
