"""DDP smoke: two gloo processes on CPU train one short epoch through torch.distributed.run."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from utils.data.shapes import NAMES, generate_shapes

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_gloo_epoch(tmp_path):
    root = generate_shapes(tmp_path / "shapes", n_train=8, n_val=4, imgsz=64, seed=2)
    data = tmp_path / "tiny.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(ROOT / "train.py"), "--device", "cpu", "--data", str(data), "--cfg", "yolov5n.yaml", "--imgsz", "64",
           "--epochs", "1", "--batch-size", "4", "--workers", "0", "--project", str(tmp_path / "runs"),
           "--name", "ddp", "--noplots", "--noautoanchor"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    run = tmp_path / "runs" / "ddp"
    assert (run / "weights" / "last.pt").is_file() and (run / "weights" / "best.pt").is_file()
    assert not (tmp_path / "runs" / "ddp2").exists()  # only rank 0 creates the run directory
    with open(run / "results.csv") as f:
        assert len(list(csv.reader(f))) == 2  # header + one epoch, written once
    assert out.count("Starting training for 1 epochs") == 1  # rank-0-only logging
    assert "all" in out  # the final validation table
