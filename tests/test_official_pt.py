"""Official YOLOv5 .pt import: strict placement, a sane forward, and refusal of anything outside the allow-list."""
import builtins
import os
import shutil
import subprocess
import time

import cv2
import numpy as np
import pytest
import torch

from models.yolo import Detect
from models.load import model_from_checkpoint
from utils.checkpoint import CheckpointError, UnsafeCheckpointError, load_checkpoint
from utils.official_pt import Inert, resolve_global, unpickle_archive


@pytest.fixture(scope="module")
def official(official_weights):
    t0 = time.perf_counter()
    ckpt = load_checkpoint(official_weights)
    t_load = time.perf_counter() - t0
    model = model_from_checkpoint(ckpt).eval()
    print(f"\nofficial import {t_load * 1e3:.0f} ms, rebuild+strict load {time.perf_counter() - t0 - t_load:.2f} s")
    return ckpt, model


def test_every_tensor_placed(official):
    ckpt, model = official
    sd = ckpt["state_dict"]
    assert ckpt["format"] == "official" and ckpt["class"] == "models.yolo.Model"
    assert ckpt["dtype"] == "float16" and len(sd) == 349
    own = model.state_dict()
    assert set(own) == set(sd)  # strict, and model_from_checkpoint would have raised otherwise
    for k, v in sd.items():
        assert torch.equal(own[k], v.to(own[k].dtype)), k
    assert "model.24.anchors" in sd and "model.0.conv.weight" in sd and "model.24.m.2.weight" in sd
    assert len(model.names) == 80 and model.names[0] == "person"
    assert model.stride.tolist() == [8.0, 16.0, 32.0] == ckpt["stride"]
    assert ckpt["epoch"] == -1 and ckpt["date"].startswith("2022-02-08")


def test_forward_finite(official):
    _, model = official
    with torch.no_grad():
        y = model(torch.rand(1, 3, 320, 320))[0]
    assert y.shape == (1, 3 * (40 * 40 + 20 * 20 + 10 * 10), 85)
    assert torch.isfinite(y).all()


def test_detects_the_labelled_giraffe(official, coco128_dir):
    """Misplaced tensors would still give finite numbers; a confident, correctly-classed box would not survive."""
    _, model = official
    img = cv2.imread(str(coco128_dir / "images/train2017/000000000025.jpg"))
    x = cv2.resize(img, (320, 320))[:, :, ::-1].transpose(2, 0, 1).copy()
    with torch.no_grad():
        y = model(torch.from_numpy(x)[None].float() / 255)[0][0]
    score = y[:, 4:5] * y[:, 5:]
    best = score.max(0).values
    assert best[23] > 0.5  # giraffe, the labelled class
    assert best.argmax().item() == 23


def _evil_payloads(marker):
    return {
        "posix.system": (os.system, (f"touch {marker}",)),
        "builtins.eval": (builtins.eval, (f"open({str(marker)!r}, 'w')",)),
        "subprocess.call": (subprocess.call, (["touch", str(marker)],)),
    }


@pytest.mark.parametrize("name", ["posix.system", "builtins.eval", "subprocess.call"])
@pytest.mark.parametrize("looks_official", [True, False])
def test_malicious_pickle_refused(tmp_path, name, looks_official):
    marker = tmp_path / "pwned"
    payload = _evil_payloads(marker)[name]

    class Evil:
        def __reduce__(self):
            return payload

    obj = {"epoch": 0, "evil": Evil()}
    if looks_official:  # a real models.yolo reference, so it takes the official-import path
        obj["model"] = Detect(nc=1, anchors=([10, 13, 16, 30],), ch=(4,))
    f = tmp_path / "evil.pt"
    torch.save(obj, f)
    # pickle protocol 2 writes some globals under their Python 2 names (_compat_pickle)
    expected = {"posix.system": r"posix\.system", "builtins.eval": r"(builtins|__builtin__)\.eval",
                "subprocess.call": r"(subprocess|commands)\.call"}[name]
    with pytest.raises(UnsafeCheckpointError, match=expected) as e:
        load_checkpoint(f)
    assert str(f) in str(e.value)
    assert not marker.exists()


def test_allow_list():
    assert issubclass(resolve_global("models.common", "C3"), Inert)
    assert issubclass(resolve_global("models.yolo", "DetectionModel"), Inert)
    assert issubclass(resolve_global("torch.nn.modules.conv", "Conv2d"), Inert)
    for module, name in [("os", "system"), ("posix", "system"), ("models.common", "os"),
                         ("builtins", "getattr"), ("torch", "load"), ("subprocess", "Popen")]:
        with pytest.raises(UnsafeCheckpointError, match=f"{module}.{name}"):
            resolve_global(module, name)


def test_stand_ins_are_inert(official_weights):
    top = unpickle_archive(official_weights)
    assert isinstance(top["model"], Inert) and top["model"].qualname == "models.yolo.Model"
    assert not isinstance(top["model"], torch.nn.Module)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_names_it(tmp_path, official_weights, damage):
    f = tmp_path / f"{damage}.pt"
    data = official_weights.read_bytes()
    f.write_bytes({"truncate": data[: len(data) // 2], "garbage": np.random.bytes(4096), "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=str(f.name)):
        load_checkpoint(f)


def test_storage_bytes_damaged(tmp_path, official_weights):
    """A zip whose central directory is fine but a storage record is cut short still fails clearly."""
    import zipfile
    src = zipfile.ZipFile(official_weights)
    f = tmp_path / "short_storage.pt"
    with zipfile.ZipFile(f, "w") as dst:
        for n in src.namelist():
            b = src.read(n)
            dst.writestr(n, b[:2] if n.endswith("data/0") else b)
    with pytest.raises(CheckpointError, match="short_storage.pt"):
        load_checkpoint(f)


def test_copy_elsewhere_loads(tmp_path, official_weights):
    """No dependence on the file's folder or name (the zip record prefix can differ)."""
    f = tmp_path / "renamed.pt"
    shutil.copy(official_weights, f)
    assert len(load_checkpoint(f)["state_dict"]) == 349
