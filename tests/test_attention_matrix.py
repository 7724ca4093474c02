"""The contract every registered attention block must meet, checked for all of them automatically.

Blocks are found in the registry (`attention=True`), so a new block file is covered without editing
this test. Each is built the way a yaml row `[-1, 1, Name, []]` builds it. Every models/yolov5_*.yaml
is built at every scale and trained one step at a small size.
"""
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import models.common  # noqa: F401  (registers every block)
from models.registry import REGISTRY, LayerContext, op_flop_rules
from utils.flops import count_flops

ATTENTION = sorted(name for name, spec in REGISTRY.items() if spec.attention)
CHANNELS = (32, 64, 128)
SIZES = [(1, 1), (3, 3), (7, 5), (20, 20), (13, 17)]
# P3/P4/P5 widths of YOLOv5 n..x (64..1280) and the narrow ones a custom width may give
YOLO_WIDTHS = (16, 24, 32, 64, 128, 192, 256, 320, 384, 512, 640, 768, 1024, 1280)
YAMLS = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "models").glob("yolov5_*.yaml"))
P6_YAMLS = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "models").glob("yolov5-P6_*.yaml"))
LOW_PRECISION = (torch.float16, torch.bfloat16)  # CPU fp16 conv/bmm/softmax all run in this torch


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def build(name: str, c: int) -> nn.Module:
    """What parse_model builds for `[-1, 1, name, []]` on a c-channel input."""
    spec = REGISTRY[name]
    ctx = LayerContext(0, f"[-1, 1, {name}, []]", [c], [], 1, 1.0, 1.0, 80, None)
    built = spec.build(ctx)
    assert built.c2 == c, f"{name} must keep the channel count"
    mods = [spec.cls(*built.args, **built.kwargs) for _ in range(built.n)]
    return mods[0] if len(mods) == 1 else nn.Sequential(*mods)


def _seeded(name, c):
    torch.manual_seed(0)
    return build(name, c)


def _check_output(name, y, x):
    assert isinstance(y, torch.Tensor), f"{name} returned {type(y)}"
    assert y.shape == x.shape, f"{name}: output {tuple(y.shape)} for input {tuple(x.shape)}"
    assert torch.isfinite(y.float()).all(), f"{name}: non-finite output for {tuple(x.shape)}"


def test_registry_has_attention_blocks():
    assert {"TripletAttention", "ACmix"} <= set(ATTENTION)


@pytest.mark.parametrize("name", ATTENTION)
def test_builds_from_empty_args_at_every_yolo_width(name):
    """Built from `[-1, 1, name, []]` at every YOLO width, a forward on meta tensors (shapes only) returns the
    input's shape: the arguments the rule derives per width (heads, groups, kernels) fit together."""
    with torch.device("meta"), torch.no_grad():
        for c in YOLO_WIDTHS:
            x = torch.empty(2, c, 5, 7)
            y = build(name, c).eval()(x)
            assert isinstance(y, torch.Tensor) and y.shape == x.shape, f"{name} at width {c}: {tuple(y.shape)}"


@pytest.mark.parametrize("name", ATTENTION)
@pytest.mark.parametrize("c", CHANNELS)
def test_any_size_and_batch_keeps_shape(name, c):
    m = _seeded(name, c).eval()
    with torch.no_grad():
        for hw in SIZES:
            for b in (1, 2):
                x = torch.randn(b, c, *hw)
                _check_output(name, m(x), x)


@pytest.mark.parametrize("name", ATTENTION)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_cast(name, dtype):
    m = _seeded(name, 64).eval()
    x = torch.randn(2, 64, 7, 5)
    with torch.no_grad():
        want = m(x)
        y = m.to(dtype)(x.to(dtype))
    assert y.dtype == dtype, f"{name}: .to({dtype}) gave {y.dtype}"
    _check_output(name, y, x)
    err = (y.float() - want).abs().max().item()
    assert err <= 0.1 * (want.abs().max().item() + 1e-3), f"{name}: {dtype} error {err:.3g}"


@pytest.mark.parametrize("name", ATTENTION)
def test_cpu_autocast_bfloat16(name):
    m = _seeded(name, 64).eval()
    x = torch.randn(2, 64, 13, 17)
    with torch.no_grad():
        want = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
    _check_output(name, y, x)
    err = (y.float() - want).abs().max().item()
    assert err <= 0.1 * (want.abs().max().item() + 1e-3), f"{name}: autocast error {err:.3g}"


@pytest.mark.parametrize("name", ATTENTION)
def test_backward_reaches_every_parameter(name):
    m = _seeded(name, 32).train()
    x = torch.randn(2, 32, 7, 5, requires_grad=True)
    y = m(x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}.{pname} got no gradient (DDP find_unused_parameters=False would fail)"
            assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"


@pytest.mark.parametrize("name", ATTENTION)
def test_train_and_eval_return_self(name):
    m = build(name, 32)
    assert m.train() is m and m.eval() is m and m.train(False) is m
    assert not any(x.training for x in m.modules())


@pytest.mark.parametrize("name", [n for n in ATTENTION if REGISTRY[n].flops is not None])
@pytest.mark.parametrize("shape", [(1, 64, 20, 20), (2, 32, 13, 17), (1, 128, 7, 5)])
def test_flops_formula_equals_flop_counter(name, shape):
    m = _seeded(name, shape[1])
    formula = REGISTRY[name].flops(m, shape)
    counted = count_flops(m, torch.randn(shape), op_flop_rules(m))  # the block's registered op rules
    assert math.isclose(formula, counted, rel_tol=1e-3, abs_tol=16), f"{name}: formula {formula} vs counted {counted}"


# m/l/x take 1-4 s each per yaml (model init and v6.1's 256x256 stride probe dominate): marked slow
SCALES = ["n", "s"] + [pytest.param(x, marks=pytest.mark.slow) for x in "mlx"]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("yaml_name", YAMLS)
def test_every_yaml_builds_and_trains_a_step_at_every_scale(yaml_name, scale):
    from models.yolo import Model
    cfg = yaml_name.replace("yolov5_", f"yolov5{scale}_")
    model = Model(cfg).train()
    sizes = [(64, 64), (64, 96)] if scale == "n" else [(64, 96)]
    for h, w in sizes:
        model.zero_grad(set_to_none=True)
        outs = model(torch.randn(1, 3, h, w))
        assert [tuple(o.shape[2:4]) for o in outs] == [(h // s, w // s) for s in (8, 16, 32)]
        sum((o * o).mean() for o in outs).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), f"{cfg}: missing/non-finite grads"


@pytest.mark.parametrize("yaml_name", YAMLS)
def test_every_yaml_trains_at_real_input_sizes(yaml_name):
    """Scale n at the sizes training and val really use: 640, 320 (batch 2, bf16 autocast), 640x384."""
    from models.yolo import Model
    cfg = yaml_name.replace("yolov5_", "yolov5n_")
    torch.manual_seed(0)
    model = Model(cfg).train()
    for (h, w), batch, bf16 in (((640, 640), 1, False), ((320, 320), 2, True), ((384, 640), 1, False)):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outs = model(torch.randn(batch, 3, h, w))
            loss = sum((o.float() ** 2).mean() for o in outs)
        assert [tuple(o.shape[:4]) for o in outs] == [(batch, 3, h // s, w // s) for s in (8, 16, 32)]
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()), \
            f"{cfg} at {h}x{w}: missing or non-finite gradients"


@pytest.mark.parametrize("yaml_name", P6_YAMLS)
def test_every_p6_yaml_builds_and_trains_a_step_at_scale_n(yaml_name):
    """P6 placements (yolov5n6_<block>.yaml): four output levels, input a multiple of 64 with P6 at least 2x2."""
    from models.yolo import Model
    cfg = yaml_name.replace("yolov5-P6_", "yolov5n6_")
    model = Model(cfg).train()
    assert model.stride.tolist() == [8, 16, 32, 64]
    h, w = 128, 192
    outs = model(torch.randn(1, 3, h, w))
    assert [tuple(o.shape[2:4]) for o in outs] == [(h // s, w // s) for s in (8, 16, 32, 64)]
    sum((o * o).mean() for o in outs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()), cfg


def _rows(name):
    import yaml
    d = yaml.safe_load((Path(__file__).resolve().parents[1] / "models" / name).read_text())
    return d["backbone"] + d["head"]


@pytest.mark.parametrize("yaml_name,inserted,detect,base_name", [
    ("yolov5_TripletAttention.yaml", [3], [18, 21, 24], "yolov5s.yaml"),
    ("yolov5_ACmix.yaml", [18, 22, 26], [18, 22, 26], "yolov5s.yaml"),
    ("yolov5_ACmix-P5.yaml", [24], [17, 20, 24], "yolov5s.yaml"),
    ("yolov5_CGA.yaml", [10], [18, 21, 24], "yolov5s.yaml"),
    ("yolov5_DAT.yaml", [10], [18, 21, 24], "yolov5s.yaml"),
    ("yolov5-P6_TripletAttention.yaml", [3], [24, 27, 30, 33], "yolov5-P6.yaml"),
    ("yolov5-P6_ACmix.yaml", [24, 28, 32, 36], [24, 28, 32, 36], "yolov5-P6.yaml"),
    ("yolov5-P6_CGA.yaml", [12], [24, 27, 30, 33], "yolov5-P6.yaml"),
    ("yolov5-P6_DAT.yaml", [12], [24, 27, 30, 33], "yolov5-P6.yaml"),
])
def test_insertion_yamls_are_the_base_with_indices_shifted(yaml_name, inserted, detect, base_name):
    """Same rows as the base yaml plus the inserted blocks; every `from` points at the same layer as before
    (or at the block inserted right after it), so Concat and Detect indices are shifted correctly."""
    base, rows = _rows(base_name), _rows(yaml_name)
    assert [i for i, r in enumerate(rows) if r[2] in ATTENTION] == inserted
    assert all(rows[i][:2] == [-1, 1] for i in inserted)
    kept = [i for i in range(len(rows)) if i not in inserted]
    assert [rows[i][1:] for i in kept] == [r[1:] for r in base]
    new_of = dict(enumerate(kept))  # old layer index -> its new index
    # a consumer of old layer j now reads the block inserted right after j, if any
    reads = {j: (new_of[j] + 1 if new_of[j] + 1 in inserted else new_of[j]) for j in new_of}
    for old_i, new_i in new_of.items():
        old_from, new_from = base[old_i][0], rows[new_i][0]
        old_from = [old_from] if isinstance(old_from, int) else old_from
        new_from = [new_from] if isinstance(new_from, int) else new_from
        want = [reads[old_i - 1] if f == -1 else reads[f] for f in old_from] if old_i else [-1]
        got = [new_i - 1 if f == -1 else f for f in new_from] if new_i else [-1]
        assert got == want, f"{yaml_name} layer {new_i}: from {rows[new_i][0]} should read layers {want}"
    assert rows[-1][0] == detect
