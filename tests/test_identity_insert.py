"""Identity insertion (models/gates.py): inserted attention layers start as the identity, the gate survives
checkpoints, resume, export and val, trains without weight decay, shows in the summary and in the FLOPs; and
yolov5n.pt transferred into attention variants scores what yolov5n.pt scores before any training."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from models.gates import GATE_FLOP_RULES, gate_from_scratch, gated_layers, set_identity_gates
from models.load import attempt_load, model_from_checkpoint, pretrained_model
from models.registry import ModelConfigError
from models.yolo import Model
from utils.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, save_checkpoint
from utils.data.shapes import NAMES, generate_shapes
from utils.flops import count_flops
from utils.train.ema import ModelEMA
from utils.train.optim import build_optimizer, parameter_groups

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def plain_ckpt(tmp_path_factory) -> Path:
    """A plain yolov5n checkpoint of our format. Random weights, scaled so the head's output depends on the image
    (with the default init the features fade with depth and the head's biases dominate every output)."""
    torch.manual_seed(0)
    m = Model("yolov5n.yaml")
    head = set(m.model[-1].m)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(mod.weight)
                if mod in head:
                    mod.weight.mul_(100)
    return save_checkpoint(make_checkpoint(m, half=False), tmp_path_factory.mktemp("w") / "plain.pt")


def _gated_triplet(plain_ckpt) -> Model:
    model, _ = pretrained_model(plain_ckpt, "yolov5n_TripletAttention.yaml", verbose=False)
    with torch.no_grad():
        model.gates["3"].copy_(torch.linspace(0.2, 0.8, model.gates["3"].numel()).view(1, -1, 1, 1))
    return model


@pytest.fixture(scope="module")
def gated_ckpt(plain_ckpt, tmp_path_factory) -> Path:
    """yolov5n_TripletAttention with its gate half open (0.2..0.8 per channel), saved fp32."""
    return save_checkpoint(make_checkpoint(_gated_triplet(plain_ckpt), half=False),
                           tmp_path_factory.mktemp("w") / "gated.pt")


def _predict(model, im):
    with torch.no_grad():
        return model.eval()(im)[0]


def _rel_change(model_a, model_b, im) -> float:
    """max |raw head maps of a - those of b| / max |those of b|."""
    with torch.no_grad():
        ra = torch.cat([x.flatten() for x in model_a.eval()(im)[1]])
        rb = torch.cat([x.flatten() for x in model_b.eval()(im)[1]])
    return float((ra - rb).abs().max() / rb.abs().max())


def _around(model, i, im):
    """(input of layer i, input of layer i + 1): what the (gated) layer i received and passed on."""
    seen = {}
    hooks = [model.model[j].register_forward_pre_hook(lambda m, a, j=j: seen.setdefault(j, a[0].clone()))
             for j in (i, i + 1)]
    _predict(model, im)
    for h in hooks:
        h.remove()
    return seen[i], seen[i + 1]


IM = torch.rand(2, 3, 96, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant,layers", [("TripletAttention", [3]), ("SimAM", [9]), ("SE", [9])])
def test_inserted_layers_start_as_exact_identity(plain_ckpt, variant, layers):
    plain = model_from_checkpoint(load_checkpoint(plain_ckpt))
    want = _predict(plain, IM)
    model, _ = pretrained_model(plain_ckpt, f"yolov5n_{variant}.yaml", verbose=False)
    assert gated_layers(model) == layers and model.yaml["identity_gates"] == layers  # SimAM has no parameters
    assert torch.equal(_predict(model, IM), want)  # bit-exact, not just close
    bare, _ = pretrained_model(plain_ckpt, f"yolov5n_{variant}.yaml", verbose=False, attn_init="plain")
    assert gated_layers(bare) == [] and "identity_gates" not in bare.state_dict()
    x, y = _around(model, layers[0], IM)
    assert torch.equal(x, y)  # the gated layer passes its input on unchanged
    x, y = _around(bare, layers[0], IM)
    assert (x - y).abs().max() > 0.05 * x.abs().max()  # plain insertion changes the features


def test_layers_that_received_pretrained_tensors_are_not_gated(plain_ckpt, gated_ckpt):
    model, _ = pretrained_model(plain_ckpt, "yolov5n.yaml", verbose=False)
    assert gated_layers(model) == []
    saved = load_checkpoint(gated_ckpt)["state_dict"]["gates.3"]
    for mode in ("identity", "plain"):  # a gated checkpoint's gate is carried in both modes
        again, report = pretrained_model(gated_ckpt, "yolov5n_TripletAttention.yaml", verbose=False, attn_init=mode)
        assert gated_layers(again) == [3] and report.layer_map[3] == 3
        assert torch.equal(again.gates["3"].detach(), saved)


def test_gate_of_a_layer_without_counterpart_is_dropped_with_a_warning(gated_ckpt, log_lines):
    model, _ = pretrained_model(gated_ckpt, "yolov5n.yaml")
    assert gated_layers(model) == []
    assert any("gate of checkpoint layer 3 dropped" in line for line in log_lines)


def test_checkpoint_reload_is_strict_and_keeps_gates(plain_ckpt, tmp_path):
    model = _gated_triplet(plain_ckpt)
    ck = load_checkpoint(save_checkpoint(make_checkpoint(model, half=False), tmp_path / "g.pt"))
    assert ck["yaml"]["identity_gates"] == [3]
    loaded = model_from_checkpoint(ck)
    assert torch.equal(loaded.gates["3"], model.gates["3"])
    assert torch.equal(_predict(loaded, IM), _predict(model, IM))
    ck["state_dict"] = {k: v for k, v in ck["state_dict"].items() if k != "gates.3"}
    with pytest.raises(CheckpointError, match=r"gate tensors for layers \[\] but its yaml lists identity_gates: \[3\]"):
        model_from_checkpoint(ck)


@pytest.mark.parametrize("gates,match", [([12], "layer 12 .*several inputs"), ([1], "layer 1 .*16 to 32 channels"),
                                         ([40], "40 is not a layer index"), (3, "must be a list")])
def test_bad_identity_gates_in_a_yaml_name_the_layer(gates, match):
    d = Model("yolov5n.yaml").yaml
    d["identity_gates"] = gates
    with pytest.raises(ModelConfigError, match=match):
        Model(d)


def test_a_block_that_changes_the_map_size_cannot_be_gated():
    d = Model("yolov5n.yaml").yaml
    d["backbone"] = list(d["backbone"])
    d["backbone"][1] = [-1, 1, "Conv", [64, 3, 2]]  # 16 -> 16 channels at width 0.25, but stride 2
    d["identity_gates"] = [1]
    with pytest.raises(ModelConfigError, match=r"layer 1 \(Conv\) cannot start as the identity"):
        Model(d)


def test_attempt_load_and_export_rebuild_the_gated_model(plain_ckpt, gated_ckpt, tmp_path):
    import export
    from models.backends import load_backend

    model = attempt_load(str(gated_ckpt))
    assert gated_layers(model) == [3]
    want = _predict(model, IM)
    ungated = model_from_checkpoint({**load_checkpoint(gated_ckpt), "state_dict": {
        k: torch.ones_like(v) if k == "gates.3" else v for k, v in load_checkpoint(gated_ckpt)["state_dict"].items()}})
    assert _rel_change(ungated, model, IM) > 1e-2  # the gate matters here
    files = export.run(weights=str(gated_ckpt), imgsz=[96, 64], batch_size=2, include=["onnx", "torchscript"],
                       dynamic=True, out_dir=tmp_path / "dyn")
    files += export.run(weights=str(gated_ckpt), imgsz=[96, 64], batch_size=2, include=["onnx"], out_dir=tmp_path)
    for f in files:
        got = load_backend(f).forward(IM)
        scale = want[..., :4].abs().max()
        assert (got[..., :4] - want[..., :4]).abs().max() <= 1e-4 * scale, f
        assert (got[..., 4:] - want[..., 4:]).abs().max() <= 1e-4, f


def test_gates_train_without_weight_decay_and_follow_the_ema(plain_ckpt):
    model = _gated_triplet(plain_ckpt)
    gate = model.gates["3"]
    norm_w, decay_w, biases = parameter_groups(model)
    assert any(p is gate for p in norm_w) and not any(p is gate for p in decay_w + biases)
    opt = build_optimizer(model, "SGD", 0.01, 0.9, 5e-4)
    assert opt.param_groups[0].get("weight_decay", 0.0) == 0.0 and any(p is gate for p in opt.param_groups[0]["params"])
    ema = ModelEMA(model)
    assert torch.equal(ema.ema.gates["3"], gate.detach())
    with torch.no_grad():
        gate.add_(1.0)
    ema.updates = 10_000
    ema.update(model)
    assert not torch.equal(ema.ema.gates["3"], gate.detach() - 1.0)  # the EMA copy moved towards the new value
    model.train()
    out = model(IM)
    sum(o.sum() for o in out).backward()
    assert gate.grad is not None and gate.grad.abs().sum() > 0


def test_summary_and_flops_include_the_gate(plain_ckpt, log_lines):
    from utils.log import LOGGER

    model = _gated_triplet(plain_ckpt)
    text = model.info(imgsz=64)
    assert text.splitlines()[1] == "identity-gated: 3 (TripletAttention)"
    assert "identity-gated" not in Model("yolov5n_TripletAttention.yaml").info(imgsz=None)
    im = torch.zeros(1, 3, 64, 64)
    extra = count_flops(model, im, GATE_FLOP_RULES) - count_flops(model, im)
    c = model.gates["3"].numel()
    assert extra == 3 * c * (64 // 4) ** 2  # x + g * (b - x) on layer 3's (1, c, 16, 16) map
    level = LOGGER.level
    LOGGER.setLevel(logging.DEBUG)
    try:
        Model(model.yaml)
    finally:
        LOGGER.setLevel(level)
    row = [line for line in log_lines if "TripletAttention" in line and line.lstrip().startswith("3 ")]
    assert row and "(identity-gated)" in row[0]


def test_from_scratch_identity_gates_every_attention_layer():
    model = Model("yolov5n_ACmix.yaml")
    gate_from_scratch(model)
    assert gated_layers(model) == [18, 22, 26]
    set_identity_gates(model, {})
    assert gated_layers(model) == [] and model.yaml["identity_gates"] == [] and model.gates is None


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = generate_shapes(tmp_path_factory.mktemp("data") / "shapes", n_train=8, n_val=4, imgsz=64, seed=1)
    return {"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}


@pytest.mark.parametrize("attn_init,gated", [(None, [3]), ("plain", [])])
def test_train_flag_reaches_the_checkpoint_and_resume(tiny_data, plain_ckpt, tmp_path, attn_init, gated):
    import train

    kw = dict(data=tiny_data, imgsz=64, batch_size=4, workers=0, noautoanchor=True, noplots=True, noval=True,
              weights=str(plain_ckpt), cfg="yolov5n_TripletAttention.yaml", project=str(tmp_path), name="run")
    train.run(epochs=1, attn_init=attn_init, **kw)
    ck = load_checkpoint(tmp_path / "run" / "weights" / "last.pt")
    assert ck["yaml"].get("identity_gates", []) == gated
    assert ("gates.3" in ck["state_dict"]) == bool(gated)
    if gated:
        assert ck["state_dict"]["gates.3"].abs().sum() > 0  # one epoch opened the gate a little


# ----------------------------------------------------------------------------- with the official weights

def _coco(shared_dir, name):
    names = yaml.safe_load((ROOT / "data" / "coco128.yaml").read_text())["names"]
    root = shared_dir / "datasets" / name
    split = "images/train2017" if name == "coco128" else "images/val"
    if not (root / split).is_dir():
        pytest.skip(f"{root / split} is not present")
    return {"path": str(root), "train": split, "val": split, "names": names}


def test_val_rebuilds_the_gated_model_from_its_checkpoint(official_weights, shared_dir, tmp_path):
    """coco8 at 320: a saved identity-inserted TripletAttention scores exactly what yolov5n.pt scores through
    val.py's weights path; the same model saved with plain insertion does not."""
    import val

    kw = dict(data=_coco(shared_dir, "coco8"), imgsz=320, batch_size=8, device="cpu", workers=0, plots=False,
              project=tmp_path)
    base = val.run(weights=str(official_weights), name="base", **kw)[0]
    scores = {}
    for mode in ("identity", "plain"):
        model, _ = pretrained_model(official_weights, "yolov5n_TripletAttention.yaml", 80, exclude=["anchor"],
                                    verbose=False, attn_init=mode)
        f = save_checkpoint(make_checkpoint(model), tmp_path / f"{mode}.pt")
        scores[mode] = val.run(weights=str(f), name=mode, **kw)[0]
    assert base[3] > 0.1
    assert abs(scores["identity"][3] - base[3]) <= 2e-3  # fp16 checkpoint, same detections up to rounding
    assert scores["plain"][3] < base[3] - 0.05


@pytest.mark.slow
def test_step0_map_of_attention_variants_equals_plain_yolov5n(official_weights, coco128_dir):
    """Issue 13's must-show on three representative variants (the full table: benchmarks/step0.py)."""
    from benchmarks.step0 import step0, val_loader
    from utils.data.dataset_yaml import check_dataset

    data = check_dataset(_coco(coco128_dir.parents[1], "coco128"))
    loader = val_loader(data, 320, 32, 2)
    _, base = step0(str(official_weights), "yolov5n.yaml", data, loader, 320, "identity")
    assert abs(base - 0.2907) <= 0.002  # the known figure for yolov5n.pt on coco128 at 320
    for v in ("TripletAttention", "ACmix", "SimAM"):
        _, got = step0(str(official_weights), f"yolov5n_{v}.yaml", data, loader, 320, "identity")
        assert abs(got - base) <= 0.005, (v, got, base)
    _, plain = step0(str(official_weights), "yolov5n_ACmix.yaml", data, loader, 320, "plain")
    assert plain < base - 0.1  # without the gate the same transfer is wrecked: the check can fail


@pytest.mark.slow
def test_ddp_trains_a_gated_model(plain_ckpt, tmp_path):
    root = generate_shapes(tmp_path / "shapes", n_train=8, n_val=4, imgsz=64, seed=2)
    data = tmp_path / "tiny.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(ROOT / "train.py"), "--device", "cpu", "--data", str(data), "--weights", str(plain_ckpt),
           "--cfg", "yolov5n_TripletAttention.yaml", "--imgsz", "64", "--epochs", "1", "--batch-size", "4",
           "--workers", "0", "--project", str(tmp_path / "runs"), "--name", "ddp", "--noplots", "--noautoanchor"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    ck = load_checkpoint(tmp_path / "runs" / "ddp" / "weights" / "last.pt")
    assert ck["yaml"]["identity_gates"] == [3] and ck["state_dict"]["gates.3"].abs().sum() > 0


@pytest.mark.parametrize("variant", ["ACmix-P5", "TripletAttention"])
def test_gated_layers_train_under_autocast(variant):
    """Under bf16 autocast ACmix returns fp32 for bf16 input: the gate mixes both in the promoted type."""
    model = Model(f"yolov5n_{variant}.yaml")
    gate_from_scratch(model)
    (i,) = gated_layers(model)
    with torch.no_grad():
        model.gates[str(i)].fill_(0.3)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(2, 3, 64, 64))
    sum(o.float().sum() for o in out).backward()
    assert model.gates[str(i)].grad.abs().sum() > 0
