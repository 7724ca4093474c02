"""Our checkpoint format: weights-only loadable, identical reload, atomic save, clear errors, attempt_load."""
import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from models.load import Ensemble, attempt_load, model_from_checkpoint
from models.yolo import Model
from utils.checkpoint import (FORMAT, CheckpointError, load_checkpoint, make_checkpoint, save_checkpoint, strip_optimizer,
                              to_plain)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def official_model(official_weights):
    return model_from_checkpoint(load_checkpoint(official_weights)).eval()


# A small model yaml so the format tests build in milliseconds; the official-weights tests use yolov5n.
TINY = {"nc": 2, "depth_multiple": 0.33, "width_multiple": 0.25, "anchors": [[10, 13, 16, 30, 33, 23]],
        "backbone": [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "C3", [64]], [-1, 1, "Conv", [128, 3, 2]]],
        "head": [[[-1], 1, "Detect", ["nc", "anchors"]]]}


@pytest.fixture(scope="module")
def x320():
    return torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)[0]


def test_official_weights_in_our_format(tmp_path, official_model, x320):
    f = save_checkpoint(make_checkpoint(official_model, epoch=-1, half=True), tmp_path / "n.pt")
    raw = torch.load(f, map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT and raw["model"]["model.0.conv.weight"].dtype == torch.float16
    assert raw["yaml"]["backbone"] == official_model.yaml["backbone"]
    ckpt = load_checkpoint(f)
    assert ckpt["format"] == FORMAT and ckpt["names"][:2] == ["person", "bicycle"]
    reloaded = model_from_checkpoint(ckpt)
    assert torch.equal(_out(official_model, x320), _out(reloaded, x320))  # fp16 source, so fp16 storage is lossless


def test_fp32_roundtrip_is_exact(tmp_path, x320):
    model = Model(TINY, nc=3)
    f = save_checkpoint(make_checkpoint(model, half=False), tmp_path / "fp32.pt")
    reloaded = model_from_checkpoint(load_checkpoint(f))
    assert reloaded.yaml["nc"] == 3 and len(reloaded.names) == 3
    assert torch.equal(_out(model, x320), _out(reloaded, x320))
    for k, v in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v), k


def test_training_state_and_plain_metadata(tmp_path):
    model = Model(TINY)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    model.train()
    out = model(torch.rand(1, 3, 64, 64))
    sum(o.sum() for o in out).backward()
    opt.step()
    ema = argparse.Namespace(ema=Model(TINY), updates=7)  # ModelEMA-like
    ns = argparse.Namespace(weights=Path("runs/x.pt"), imgsz=np.int64(640), rect=False, devices=[0, 1])
    ckpt = make_checkpoint(model, epoch=3, best_fitness=np.float64(0.25), metrics={"mAP_0.5": np.float32(0.5)},
                           hyp={"lr0": 0.01}, opt=ns, optimizer=opt, ema=ema, half=False)
    f = save_checkpoint(ckpt, tmp_path / "last.pt")
    raw = torch.load(f, weights_only=True)
    assert raw["opt"] == {"weights": "runs/x.pt", "imgsz": 640, "rect": False, "devices": [0, 1]}
    assert type(raw["best_fitness"]) is float and type(raw["metrics"]["mAP_0.5"]) is float
    assert raw["epoch"] == 3 and raw["updates"] == 7
    opt2 = torch.optim.SGD(Model(TINY).parameters(), lr=0.01, momentum=0.9, nesterov=True)
    opt2.load_state_dict(load_checkpoint(f)["optimizer"])
    k = next(iter(opt.state_dict()["state"]))
    assert torch.equal(opt2.state_dict()["state"][k]["momentum_buffer"], opt.state_dict()["state"][k]["momentum_buffer"])
    with_ema = model_from_checkpoint(load_checkpoint(f), prefer_ema=True)
    assert torch.equal(with_ema.state_dict()["model.0.conv.weight"], ema.ema.state_dict()["model.0.conv.weight"])

    stripped = torch.load(strip_optimizer(f, tmp_path / "best.pt"), weights_only=True)
    assert stripped["optimizer"] is None and stripped["ema"] is None and stripped["epoch"] == -1
    assert torch.equal(stripped["model"]["model.0.conv.weight"], ema.ema.state_dict()["model.0.conv.weight"].half())


def test_to_plain_refuses_objects():
    with pytest.raises(TypeError, match=r"checkpoint\['opt'\]\['fn'\]"):
        to_plain({"opt": {"fn": object()}})


def test_crash_during_write_keeps_old_file(tmp_path, monkeypatch):
    f = save_checkpoint({"format": FORMAT, "epoch": 1, "model": {"w": torch.ones(3)}}, tmp_path / "last.pt")
    before = f.read_bytes()

    def broken_save(obj, fh, *a, **k):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint({"format": FORMAT, "epoch": 2, "model": {"w": torch.zeros(3)}}, f)
    monkeypatch.undo()
    assert f.read_bytes() == before
    assert torch.load(f, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_killed_during_write_keeps_old_file(tmp_path):
    """SIGKILL mid-write (no cleanup can run): the target is still the previous, complete file."""
    f = save_checkpoint({"format": FORMAT, "epoch": 1, "model": {"w": torch.ones(3)}}, tmp_path / "last.pt")
    script = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(ROOT)!r})
        from utils.checkpoint import save_checkpoint, FORMAT
        def slow_save(obj, fh, *a, **k):
            fh.write(b"PK partial"); fh.flush(); print("writing", flush=True); time.sleep(60)
        torch.save = slow_save
        save_checkpoint({{"format": FORMAT, "epoch": 2, "model": {{}}}}, {str(f)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.kill()
    finally:
        proc.wait(30)
    assert torch.load(f, weights_only=True)["epoch"] == 1
    orphans = [p for p in tmp_path.iterdir() if p.name.startswith(".last.pt.") and p.name.endswith(".tmp")]
    assert len(orphans) == 1  # the killed writer's temp (nothing runs at SIGKILL), never the target
    other = tmp_path / ".best.pt.abc123.tmp"  # a temp of another file is not ours to remove
    other.write_bytes(b"x")
    save_checkpoint({"format": FORMAT, "epoch": 3, "model": {"w": torch.ones(3)}}, f)  # the next save cleans up
    assert torch.load(f, weights_only=True)["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.pt.abc123.tmp", "last.pt"]


def test_stale_temp_cleanup_spares_a_write_in_progress(tmp_path):
    """Only temps last touched before this save started are stale; a newer one may be another writer's."""
    import os
    import time
    f = tmp_path / "last.pt"
    old, fresh = tmp_path / ".last.pt.old1.tmp", tmp_path / ".last.pt.new1.tmp"
    old.write_bytes(b"old")
    fresh.write_bytes(b"new")
    now = time.time()
    os.utime(old, (now - 60, now - 60))
    os.utime(fresh, (now + 60, now + 60))
    save_checkpoint({"format": FORMAT, "epoch": 1, "model": {}}, f)
    assert not old.exists() and fresh.exists()


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        attempt_load(tmp_path / "nope.pt")
    torch.save({"a": torch.ones(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt.*neither"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_wrong_tensors_for_yaml_named(tmp_path):
    ck = make_checkpoint(Model(TINY))
    ck["model"].pop("model.0.conv.weight")
    f = save_checkpoint(ck, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"broken.pt.*1 missing.*model\.0\.conv\.weight"):
        model_from_checkpoint(load_checkpoint(f))


def test_attempt_load_official_and_ours(tmp_path, official_weights, official_model, x320, monkeypatch):
    monkeypatch.setattr(Model, "info", lambda self, *a, **k: None)  # skip the 640-px FLOPs summary on fuse
    ours = save_checkpoint(make_checkpoint(official_model), tmp_path / "ours.pt")
    a = attempt_load(official_weights, device="cpu", fuse=False)
    b = attempt_load(ours, fuse=True)
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    assert next(a.parameters()).dtype == torch.float32
    assert not hasattr(b.model[0], "bn")  # fused
    assert a.names[0] == "person" and a.stride.tolist() == [8, 16, 32] and a.yaml["nc"] == 80
    ya, yb = _out(a, x320), _out(b, x320)
    assert torch.equal(ya, _out(official_model, x320))
    assert torch.allclose(ya, yb, atol=1e-2, rtol=1e-3)  # fusion only reorders float arithmetic


def test_ensemble_concatenates(tmp_path, x320):
    m1, m2 = Model(TINY), Model(TINY)
    f1 = save_checkpoint(make_checkpoint(m1, half=False), tmp_path / "a.pt")
    f2 = save_checkpoint(make_checkpoint(m2, half=False), tmp_path / "b.pt")
    ens = attempt_load([f1, f2], fuse=False)
    assert isinstance(ens, Ensemble) and len(ens) == 2 and ens.names == ["0", "1"] and ens.stride.tolist() == [4]
    with torch.no_grad():
        ye, _ = ens(x320)
    y1, y2 = _out(m1, x320), _out(m2, x320)
    assert ye.shape == (1, y1.shape[1] * 2, 7)
    assert torch.allclose(ye, torch.cat((y1, y2), 1), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_map_location_and_device(tmp_path, x320):
    model = Model(TINY)
    f = save_checkpoint(make_checkpoint(model, half=False), tmp_path / "tiny.pt")
    ckpt = load_checkpoint(f, map_location="cuda:0")
    assert ckpt["state_dict"]["model.0.conv.weight"].is_cuda
    loaded = attempt_load(f, device="0", fuse=False)
    assert next(loaded.parameters()).is_cuda
    with torch.no_grad():
        y = loaded(x320.cuda())[0].cpu()
    assert torch.allclose(y, _out(model, x320), atol=1e-3, rtol=1e-3)
