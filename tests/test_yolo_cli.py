"""python models/yolo.py: --profile (YOLOv5's per-layer table), --test (every yaml at each declared scale),
--batch-size, --device, and one-line errors."""
import shutil
from pathlib import Path

import pytest
import torch

import models.yolo_tools as tools
from models.yolo import Model, main
from utils.flops import count_flops

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_profile_layers_covers_every_layer(log_lines, one_thread):
    torch.manual_seed(0)
    model = Model("yolov5n_TripletAttention.yaml")
    im = torch.rand(1, 3, 64, 96)
    rows = tools.profile_layers(model, im, runs=2)
    assert [r.index for r in rows] == list(range(len(model.model)))
    assert [r.type for r in rows][3] == "TripletAttention" and rows[-1].type == "Detect"
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters())
    assert all(r.ms > 0 for r in rows) and model.training  # left in the mode it was in
    total = count_flops(model, im) / 1e9
    assert sum(r.gflops for r in rows) == pytest.approx(total, rel=1e-6)  # every FLOP happens in some layer
    assert log_lines[1].split() == ["time", "(ms)", "GFLOPs", "params", "module"]
    assert log_lines[-1].endswith("Total") and "(1, 3, 64, 96)" in log_lines[0]


def test_cli_profile_batch_size_and_device(log_lines, one_thread):
    model = main(["--cfg", "yolov5n.yaml", "--profile", "--imgsz", "64", "--batch-size", "2", "--device", "cpu"])
    assert isinstance(model, Model) and next(model.parameters()).device.type == "cpu"
    assert any("per-layer cost at input (2, 3, 64, 64) on cpu" in line for line in log_lines)
    assert sum(line.endswith("Total") for line in log_lines) == 1


def test_build_every_yaml_reports_each_scale_and_errors(tmp_path):
    bad = tmp_path / "yolov5_Broken.yaml"
    bad.write_text((MODELS / "yolov5_CBAM.yaml").read_text().replace("CBAM", "CBAMM"))
    results = tools.build_every_yaml([MODELS / "yolov5n.yaml", MODELS / "yolov5_CBAM.yaml", bad], letters="ns")
    got = {(r.file, r.scale): r for r in results}
    assert set(got) == {("yolov5n.yaml", ""), ("yolov5_CBAM.yaml", "n"), ("yolov5_CBAM.yaml", "s"),
                        ("yolov5_Broken.yaml", "n"), ("yolov5_Broken.yaml", "s")}
    assert got["yolov5_CBAM.yaml", "s"].params == sum(p.numel() for p in Model("yolov5s_CBAM.yaml").parameters())
    assert got["yolov5n.yaml", ""].layers == 25 and not got["yolov5n.yaml", ""].error
    err = got["yolov5_Broken.yaml", "n"].error
    assert err.startswith("ModelConfigError: layer ") and "unknown module 'CBAMM'" in err and "at scale n" in err


def test_cli_test_exit_code(tmp_path, monkeypatch, log_lines):
    shutil.copy(MODELS / "yolov5n.yaml", tmp_path / "yolov5n.yaml")
    monkeypatch.setattr(tools, "MODELS_DIR", tmp_path)
    assert main(["--test"]) is None
    assert log_lines[-1] == "1/1 builds ok"
    (tmp_path / "yolov5_bad.yaml").write_text("nc: 80\nscales: {n: [0.33, 0.25]}\nbackbone: [[-1, 1, Nope, []]]\nhead: []\n")
    with pytest.raises(SystemExit) as e:
        main(["--test"])
    assert e.value.code == 1 and log_lines[-1] == "1/2 builds ok, 1 failed"


def test_cli_bad_cfg_is_one_line(capsys):
    from utils.cli import run_cli
    with pytest.raises(SystemExit) as e:
        run_cli(main, ["--cfg", "yolov5n_NoSuchBlock.yaml"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("ERROR: model yaml 'yolov5n_NoSuchBlock.yaml'")
