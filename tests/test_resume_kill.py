"""kill -9 at three moments of an epoch's end, then `train.py --resume`: every epoch exactly once in results.csv,
no temp files left, and the same weights and results as a run that was never interrupted.

Real train.py processes killed by a real SIGKILL, sent by the process to itself at a named point
(the YOLOV5_TEST_KILL_AT test hook, utils/kill_points.py), so each window is hit exactly, not by timing.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from utils.checkpoint import load_checkpoint
from utils.data.shapes import NAMES, generate_shapes
from utils.kill_points import KILL_ENV
from utils.train.results import read_results

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 2  # the kills come in epoch 1 (the 2nd time a point is reached), the last one: its ending is resumed too


def train_py(*args, kill_at: str = "", cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")  # one thread: deterministic, and gentle on 2 cores
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The dataset yaml, the command of a tiny run, and that run done without interruption."""
    d = tmp_path_factory.mktemp("kill")
    root = generate_shapes(d / "shapes", n_train=8, n_val=4, imgsz=64, seed=1)
    data = d / "tiny.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}))
    args = ["--data", data, "--cfg", "yolov5n.yaml", "--weights", "", "--img", 64, "--batch-size", 4, "--workers", 0,
            "--noautoanchor", "--seed", 3, "--epochs", EPOCHS, "--project", d, "--noplots", "--noval"]
    r = train_py(*args, "--name", "straight", cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    return d, args, d / "straight"


def epochs_in(run: Path) -> list[int]:
    return [int(e) for e in read_results(run / "results.csv")[1][:, 0]]


def temps_in(run: Path) -> list[str]:
    return sorted(p.name for p in run.rglob("*.tmp"))


# point of the kill, last.pt's epoch after it, whether a temp file is left
TRIALS = [
    ("results-row", 0, False),  # the csv row of epoch 1 is written, its checkpoints are not
    ("temp-written:last.pt", 0, True),  # inside the save: the new last.pt is complete in its temp file
    ("epoch-saved", 1, False),  # after the save of the last epoch, before the run's ending
]


@pytest.mark.parametrize("point,saved_epoch,temp_left", TRIALS)
def test_kill_then_resume_gives_every_epoch_once_and_the_same_run(study, point, saved_epoch, temp_left):
    d, args, straight = study
    name = "killed_" + point.split(":")[0]
    r = train_py(*args, "--name", name, kill_at=f"{point}@2", cwd=d)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
    run = d / name
    last = run / "weights" / "last.pt"
    # the window was hit: the row of epoch 1 is in results.csv, last.pt is where the kill left it
    assert epochs_in(run) == [0, 1] and load_checkpoint(last)["epoch"] == saved_epoch
    assert bool(temps_in(run)) == temp_left, temps_in(run)

    r = train_py("--resume", last, cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    assert epochs_in(run) == list(range(EPOCHS))  # every epoch once, in order
    assert temps_in(run) == []
    assert read_results(run / "results.csv")[1].tolist() == read_results(straight / "results.csv")[1].tolist()
    for f in ("last.pt", "best.pt"):
        a = load_checkpoint(straight / "weights" / f)["state_dict"]
        b = load_checkpoint(run / "weights" / f)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
