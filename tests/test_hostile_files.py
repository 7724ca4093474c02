"""Hostile checkpoints, each built here from a tiny model, are refused before they cost memory or time.

Every attack is refused by the loader with a CheckpointError that names the file, and by the CLIs with one
`ERROR:` line, a non-zero exit and no traceback, within 60 s and well under 1 GiB above what the script's
own imports take (`import torch` alone maps ~0.7 GB here, so that part is measured as `--help`'s peak).
"""
import struct
import zipfile
import zlib
from copy import deepcopy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import import_baseline, run_script
from models.load import attempt_load, model_from_checkpoint, pretrained_model
from models.registry import MAX_CHANNELS, MAX_REPEATS, ModelConfigError
from models.yolo import Model
from utils.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, save_checkpoint, strip_optimizer
from utils.data.shapes import NAMES, generate_shapes

MiB = 1 << 20
TINY = {"nc": 2, "depth_multiple": 0.33, "width_multiple": 0.25, "anchors": [[10, 13, 16, 30, 33, 23]],
        "backbone": [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "C3", [64]], [-1, 1, "Conv", [128, 3, 2]]],
        "head": [[[-1], 1, "Detect", ["nc", "anchors"]]]}
LINEAR_BOMB = {**TINY, "head": [[-1, 1, "nn.Linear", [20000, 20000]], [[2], 1, "Detect", ["nc", "anchors"]]]}
REPEAT_BOMB = {**TINY, "backbone": [[-1, 1, "Conv", [64, 3, 2]], [-1, 200000, "C3", [64]], [-1, 1, "Conv", [128, 3, 2]]]}
CHANNEL_BOMB = {**TINY, "backbone": [[-1, 1, "Conv", [4_000_000, 3, 2]], [-1, 1, "C3", [64]], [-1, 1, "Conv", [128, 3, 2]]]}


# ----------------------------------------------------------------------------- builders (files stay in tmp_path)

def ours(f: Path, **replace) -> Path:
    """A valid checkpoint of our format, with entries replaced, written by torch.save as an attacker would."""
    ck = make_checkpoint(Model(deepcopy(TINY)), half=False)
    ck.update(replace)
    torch.save(ck, f)
    return f


def official_style(f: Path, model=None, **extra) -> Path:
    """A pickled-module checkpoint like YOLOv5's own (models.yolo.Model objects), as torch.save writes it."""
    torch.save({"epoch": -1, "model": model if model is not None else Model(deepcopy(TINY)), **extra}, f)
    return f


def _write_zip(path: Path, records) -> None:
    """A zip from (name, payload, method, crc, size) records, written by hand so a record can carry an already
    deflated payload (zipfile would spend seconds compressing a gigabyte of zeros)."""
    out, central = bytearray(), bytearray()
    for name, payload, method, crc, size in records:
        n, offset = name.encode(), len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(payload), size, len(n), 0)
        out += n + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(payload), size,
                               len(n), 0, 0, 0, 0, 0, offset) + n
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(records), len(records), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))


def deflate_bomb(f: Path, extra_gib: float = 1.1) -> Path:
    """Our checkpoint with one storage record deflated: its bytes followed by `extra_gib` GiB of zeros, ~1 MB."""
    good = save_checkpoint(make_checkpoint(Model(deepcopy(TINY)), half=False), f.with_name("good_" + f.name))
    src = zipfile.ZipFile(good)
    victim = max((i for i in src.infolist() if "/data/" in i.filename), key=lambda i: i.file_size).filename
    chunk = bytes(16 * MiB)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros_block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)  # self-contained: repeatable verbatim
    records = []
    for info in src.infolist():
        data = src.read(info)
        if info.filename != victim:
            records.append((info.filename, data, 0, info.CRC, info.file_size))
            continue
        n = int(extra_gib * 1024 * MiB) // len(chunk)
        head = zlib.compressobj(9, zlib.DEFLATED, -15)
        payload = head.compress(data) + head.flush(zlib.Z_FULL_FLUSH) + zeros_block * n + b"\x03\x00"  # final block
        crc = zlib.crc32(data)
        for _ in range(n):
            crc = zlib.crc32(chunk, crc)
        records.append((info.filename, payload, zipfile.ZIP_DEFLATED, crc, len(data) + n * len(chunk)))
    _write_zip(f, records)
    good.unlink()
    return f


def _self_containing_dict() -> dict:
    d = {"lr0": 0.01}
    d["again"] = d
    return d


def _self_containing_model() -> Model:
    m = Model(deepcopy(TINY))
    m.model._modules["loop"] = m  # a module tree that contains itself
    return m


def _repeating_view():
    return torch.zeros(1).expand(10 ** 6, 10 ** 6)  # 1e12 elements over one stored float


def _bomb_model(yaml: dict) -> Model:
    m = Model(deepcopy(TINY))
    m.yaml = deepcopy(yaml)  # the tensors of TINY, a yaml asking for something else
    return m


ATTACKS = {  # name -> (builder(path), what the one-line refusal says)
    "deflated storage": (deflate_bomb, "zip-compressed"),
    "ours, yaml asks nn.Linear(20000, 20000)": (lambda f: ours(f, yaml=deepcopy(LINEAR_BOMB)), "do not fit"),
    "official, yaml asks nn.Linear(20000, 20000)": (lambda f: official_style(f, _bomb_model(LINEAR_BOMB)),
                                                    "do not fit"),
    "ours, 200000 repeats": (lambda f: ours(f, yaml=deepcopy(REPEAT_BOMB)), f"more than {MAX_REPEATS}"),
    "official, 4e6 channels": (lambda f: official_style(f, _bomb_model(CHANNEL_BOMB)), f"more than {MAX_CHANNELS}"),
    "ours, repeating view": (lambda f: ours(f, hyp={"lr0": _repeating_view()}), "repeating view"),
    "official, repeating view": (lambda f: official_style(f, opt={"x": _repeating_view()}), "repeating view"),
    "ours, self-containing dict": (lambda f: ours(f, hyp=_self_containing_dict()), "contains itself"),
    "official, self-containing dict": (lambda f: official_style(f, opt=_self_containing_dict()), "contains itself"),
    "official, self-containing model": (lambda f: official_style(f, _self_containing_model()), "contains itself"),
}


@pytest.fixture
def data_yaml(tmp_path) -> Path:
    root = generate_shapes(tmp_path / "shapes", n_train=2, n_val=2, imgsz=64, seed=0)
    f = tmp_path / "shapes.yaml"
    f.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}))
    return f


@pytest.fixture
def image(tmp_path) -> Path:
    f = tmp_path / "img.jpg"
    cv2.imwrite(str(f), np.full((64, 64, 3), 114, np.uint8))
    return f


# ----------------------------------------------------------------------------- in process: every attack, every loader

@pytest.mark.parametrize("attack", list(ATTACKS))
def test_loaders_refuse(tmp_path, attack):
    build, says = ATTACKS[attack]
    f = build(tmp_path / "bad.pt")
    assert f.stat().st_size < 2 * MiB
    for load in (lambda: model_from_checkpoint(load_checkpoint(f)), lambda: attempt_load(f),
                 lambda: pretrained_model(f, None, verbose=False)):
        with pytest.raises(CheckpointError, match=says) as e:
            load()
        assert str(f) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("attack", ["ours, repeating view", "ours, self-containing dict", "deflated storage"])
def test_strip_optimizer_uses_the_checked_reader(tmp_path, attack):
    """torch.load(weights_only=True) itself returns a 1e12-element stride-0 view without complaint."""
    build, says = ATTACKS[attack]
    with pytest.raises(CheckpointError, match=says):
        strip_optimizer(build(tmp_path / "bad.pt"))


def test_torch_load_accepts_the_repeating_view(tmp_path):
    """Why the checks live in our reader: torch's weights-only loader returns the view unchecked (if a later
    torch refuses it, this test says so and the comment above can go)."""
    f = ours(tmp_path / "bad.pt", hyp={"lr0": _repeating_view()})
    assert torch.load(f, weights_only=True)["hyp"]["lr0"].shape == (10 ** 6, 10 ** 6)


def test_yaml_limits_without_a_checkpoint():
    with pytest.raises(ModelConfigError, match=r"layer 1.*66000 repeats"):
        Model(deepcopy(REPEAT_BOMB))
    with pytest.raises(ModelConfigError, match=r"layer 0.*1000000 output channels"):
        Model(deepcopy(CHANNEL_BOMB))
    with pytest.raises(ModelConfigError, match="ch: 0"):
        Model({**deepcopy(TINY), "ch": 0})


def test_legitimate_files_still_load(tmp_path, official_weights):
    """The checks refuse no real file: an official checkpoint and ours, with the expected tensors."""
    ck = load_checkpoint(official_weights)
    model = model_from_checkpoint(ck)
    assert len(model.state_dict()) == len(ck["state_dict"]) == 349
    f = save_checkpoint(make_checkpoint(model), tmp_path / "ours.pt")
    assert torch.equal(load_checkpoint(f)["state_dict"]["model.0.conv.weight"], ck["state_dict"]["model.0.conv.weight"])


# ----------------------------------------------------------------------------- the CLIs: one line, cheap

CLI_CASES = [  # (script, attack); the flags follow in _cli_args
    ("detect.py", "deflated storage"),
    ("detect.py", "official, yaml asks nn.Linear(20000, 20000)"),
    ("detect.py", "official, self-containing dict"),
    ("detect.py", "ours, repeating view"),
    ("val.py", "ours, 200000 repeats"),
    ("export.py", "ours, yaml asks nn.Linear(20000, 20000)"),
]


def _cli_args(script: str, weights: Path, image: Path, tmp_path: Path, data: Path) -> list:
    if script == "detect.py":
        return ["--weights", weights, "--source", image, "--img", 64, "--project", tmp_path / "runs", "--nosave"]
    if script == "val.py":
        return ["--weights", weights, "--data", data, "--img", 64, "--project", tmp_path / "runs"]
    return ["--weights", weights, "--include", "onnx", "--img", 64, "--out-dir", tmp_path / "export"]


@pytest.mark.parametrize("script,attack", CLI_CASES)
def test_cli_refuses_in_one_line_cheaply(tmp_path, image, data_yaml, script, attack):
    build, says = ATTACKS[attack]
    f = build(tmp_path / "bad.pt")
    r = run_script(script, *_cli_args(script, f, image, tmp_path, data_yaml), timeout=120)
    baseline = import_baseline(script)
    print(f"\n{script} {attack}: exit {r.rc}, {r.seconds:.1f} s, peak {r.peak / MiB:.0f} MiB "
          f"({(r.peak - baseline) / MiB:+.0f} MiB over the script's imports)")
    assert r.rc == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.error_lines) == 1 and says in r.error_lines[0] and str(f) in r.error_lines[0], r.stderr[-3000:]
    assert r.seconds < 60
    assert baseline > 0 and r.peak > 0 and r.peak - baseline < 256 * MiB and r.peak < 1536 * MiB
