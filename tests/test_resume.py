"""--resume trusts nothing stored in the checkpoint: options come from the run folder (<run>/opt.yaml, hyp.yaml)
or the resume is refused; --epochs given with --resume extends or shortens the run; the run folder is tidied
after a kill (results.csv rows past the checkpoint, temp files). Also train.py --epochs 0."""
import importlib
import math
from pathlib import Path

import pytest
import torch
import yaml

import train
from utils.atomic_files import remove_stale_temps_in, write_text_atomic
from utils.checkpoint import load_checkpoint
from utils.cli import InputError
from utils.data.dataset import DEFAULT_HYP
from utils.data.shapes import NAMES, generate_shapes
from utils.train.results import STEP0_EPOCH, append_results, keep_rows_through, read_results

from conftest import run_script
from utils.callbacks import Callbacks

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
TINY = dict(imgsz=64, batch_size=4, workers=0, cfg="yolov5n.yaml", weights="", noautoanchor=True, seed=3)
QUICK = dict(TINY, noplots=True, noval=True)


class CrashAfterFirstSave(RuntimeError):
    pass


def crash_after_epoch(at: int = 0) -> Callbacks:
    def crash(last, epoch, *args):
        if epoch == at:
            raise CrashAfterFirstSave
    cb = Callbacks()
    cb.register_action("on_model_save", callback=crash)
    return cb


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = generate_shapes(tmp_path_factory.mktemp("data") / "shapes", n_train=8, n_val=4, imgsz=64, seed=1)
    return {"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}


def crashed_run(tiny_data, project: Path, name: str, epochs: int = 2, **opts) -> Path:
    """A run stopped after epoch 0's checkpoint: its weights/last.pt (resumable)."""
    with pytest.raises(CrashAfterFirstSave):
        train.run(data=tiny_data, epochs=epochs, project=str(project), name=name, callbacks=crash_after_epoch(),
                  **{**QUICK, **opts})
    return project / name / "weights" / "last.pt"


def epochs_in(run: Path) -> list[int]:
    return [int(e) for e in read_results(run / "results.csv")[1][:, 0]]


def edit_stored_options(last: Path, **changes) -> None:
    """What a hostile sender can do: the stored options are plain data, so the edited file still loads."""
    raw = torch.load(last, weights_only=True)
    raw["opt"].update(changes)
    torch.save(raw, last)


@pytest.fixture
def hostile(tmp_path):
    """A victim folder (someone's data) and a private yaml, named by the edited options of a checkpoint."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("years of work")
    private = tmp_path / "private.yaml"
    private.write_text("lr0: 0.01\nsecret_token: hunter2-do-not-leak\n")
    data = {"generate": "shapes", "path": str(victim), "train": "images/train", "val": "images/val", "names": NAMES}
    return victim, private, dict(data=data, hyp=str(private), project=str(tmp_path / "elsewhere"))


def test_edited_options_of_a_last_pt_outside_its_run_folder_are_refused(tiny_data, tmp_path, hostile):
    """The attack: a last.pt alone, its options pointing at a victim folder and a private file. Refused before
    anything is read or written; the victim survives and nothing lands two levels up."""
    victim, private, changes = hostile
    last = crashed_run(tiny_data, tmp_path / "runs", "exp")
    edit_stored_options(last, **changes)
    outside = tmp_path / "downloads" / "sub"
    outside.mkdir(parents=True)
    lone = outside / "last.pt"
    lone.write_bytes(last.read_bytes())
    with pytest.raises(InputError, match=rf"cannot resume: {lone} is not a resumable last.pt.*not inside a run "
                                         rf"folder.*--weights {lone}"):
        train.run(resume=str(lone))
    assert (victim / "thesis.txt").read_text() == "years of work" and len(list(victim.iterdir())) == 1
    assert sorted(p.name for p in (tmp_path / "downloads").rglob("*")) == ["last.pt", "sub"]
    assert not (tmp_path / "elsewhere").exists()


def test_edited_options_inside_a_run_folder_are_ignored_for_the_run_folders(tiny_data, tmp_path, hostile,
                                                                              monkeypatch, log_lines):
    victim, private, changes = hostile
    last = crashed_run(tiny_data, tmp_path / "runs", "exp")
    run = last.parent.parent
    hyp_before = (run / "hyp.yaml").read_text()
    edit_stored_options(last, **changes)
    read = []
    setup_module = importlib.import_module("engine.trainer.setup")  # (the package exports a function of that name)
    real_load_hyp = setup_module.load_hyp
    monkeypatch.setattr(setup_module, "load_hyp", lambda f: read.append(str(f)) or real_load_hyp(f))
    train.run(resume=str(last))
    assert read == [str(run / "hyp.yaml")]  # the private file is never read
    assert (run / "hyp.yaml").read_text() == hyp_before and "hunter2" not in "\n".join(log_lines)
    assert (victim / "thesis.txt").read_text() == "years of work" and len(list(victim.iterdir())) == 1
    assert not (tmp_path / "elsewhere").exists() and epochs_in(run) == [0, 1]
    warning = [ln for ln in log_lines if "stores other options than" in ln]
    assert len(warning) == 1 and "data" in warning[0] and "ignored" in warning[0]


def test_a_last_pt_outside_a_run_folder_is_one_line_without_traceback(tmp_path):
    f = tmp_path / "a" / "b" / "last.pt"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"not even read")
    r = run_script("train.py", "--resume", f)
    assert r.rc == 2 and "Traceback" not in r.stderr and len(r.error_lines) == 1, r.stderr[-2000:]
    assert f"cannot resume: {f} is not a resumable last.pt" in r.error_lines[0] and f"--weights {f}" in r.error_lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "last.pt"]  # nothing written two levels up


def test_a_run_folder_without_hyp_yaml_is_refused(tiny_data, tmp_path):
    last = crashed_run(tiny_data, tmp_path, "exp")
    (tmp_path / "exp" / "hyp.yaml").unlink()
    with pytest.raises(InputError, match="has no hyp.yaml"):
        train.run(resume=str(last))


def test_epochs_with_resume_extends_the_run_as_if_started_with_them(tiny_data, tmp_path, log_lines):
    """3 epochs stopped after epoch 1, resumed with --epochs 4 == a straight 4-epoch run: epochs 0 and 1 run at
    lf(0) = 1 on any schedule (v6.1's schedule lags one epoch), and from epoch 2 on the 4-epoch schedule is
    followed, not the 3-epoch one the checkpoint's optimizer holds. No warm-up, which sets the LRs itself."""
    hyp = tmp_path / "no_warmup.yaml"
    hyp.write_text(yaml.safe_dump({**yaml.safe_load(DEFAULT_HYP.read_text()), "warmup_epochs": 0}))
    train.run(data=tiny_data, epochs=4, project=str(tmp_path), name="straight", hyp=str(hyp), **QUICK)
    with pytest.raises(CrashAfterFirstSave):
        train.run(data=tiny_data, epochs=3, project=str(tmp_path), name="extended", hyp=str(hyp),
                  callbacks=crash_after_epoch(at=1), **QUICK)
    last = tmp_path / "extended" / "weights" / "last.pt"
    train.run(resume=str(last), epochs=4)
    assert any("--epochs 4 given with --resume" in ln and "extended" in ln for ln in log_lines)
    assert epochs_in(tmp_path / "extended") == [0, 1, 2, 3]
    assert yaml.safe_load((tmp_path / "extended" / "opt.yaml").read_text())["epochs"] == 4
    a = load_checkpoint(tmp_path / "straight" / "weights" / "last.pt")["state_dict"]
    b = load_checkpoint(last)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_results(tmp_path / "straight" / "results.csv")[1].tolist() == \
        read_results(tmp_path / "extended" / "results.csv")[1].tolist()


def test_epochs_with_resume_shortens_the_run_or_is_refused_below_what_was_trained(tiny_data, tmp_path, log_lines):
    last = crashed_run(tiny_data, tmp_path, "exp", epochs=4, imgsz=60)  # epoch 0 trained; --img settled to 64
    with pytest.raises(InputError, match=r"--epochs 0: .* has already trained 1 epochs.*above 1"):
        train.run(resume=str(last), epochs=0)
    train.run(resume=str(last), epochs=2)
    assert any("shortened" in ln for ln in log_lines) and epochs_in(tmp_path / "exp") == [0, 1]
    assert not any("stores other options" in ln for ln in log_lines)  # an ordinary resume: no false alarm
    assert load_checkpoint(last)["optimizer"] is None  # finished and stripped
    assert yaml.safe_load((tmp_path / "exp" / "opt.yaml").read_text())["epochs"] == 2


def test_other_options_given_with_resume_are_ignored_with_a_warning(tiny_data, tmp_path, log_lines):
    last = crashed_run(tiny_data, tmp_path, "exp")
    train.run(resume=str(last), batch_size=2, data="elsewhere.yaml")
    warning = [ln for ln in log_lines if "ignored:" in ln]
    assert len(warning) == 1 and "--batch-size 2" in warning[0] and "--data elsewhere.yaml" in warning[0]
    assert yaml.safe_load((tmp_path / "exp" / "opt.yaml").read_text())["batch_size"] == TINY["batch_size"]


# ----------------------------------------------------------------------------- the run folder after a kill

def test_results_rows_past_the_checkpoint_and_a_torn_line_are_dropped(tmp_path):
    f = tmp_path / "results.csv"
    for e in range(4):
        append_results(f, e, [0.5] * 13)
    with open(f, "a") as fh:
        fh.write("                   4,     0.1")  # killed mid-append
    assert len(keep_rows_through(f, 1)) == 3
    assert [int(e) for e in read_results(f)[1][:, 0]] == [0, 1]
    assert keep_rows_through(f, 1) == [] and keep_rows_through(tmp_path / "none.csv", 0) == []
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # rewritten in place, no temp left


def test_stale_temps_of_any_file_in_a_folder_are_removed(tmp_path):
    stale = [tmp_path / ".last.pt.abcd_123.tmp", tmp_path / ".results.csv.zz99aa00.tmp"]
    for p in stale:
        p.write_bytes(b"x")
    keep = [tmp_path / "notes.tmp", tmp_path / ".notes.tmp", tmp_path / "last.pt"]
    for p in keep:
        p.write_bytes(b"mine")
    write_text_atomic(tmp_path / "opt.yaml", "epochs: 3\n")
    assert sorted(remove_stale_temps_in(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in keep] + ["opt.yaml"])


# ----------------------------------------------------------------------------- --epochs 0

def test_epochs_zero_scores_the_starting_model(tiny_data, tmp_path, log_lines):
    """Built, validated, one results.csv row (epoch -1, NaN train losses), best.pt/last.pt of the model as built."""
    result = train.run(data=tiny_data, epochs=0, project=str(tmp_path), name="e0", **{**TINY, "noplots": True})
    d = tmp_path / "e0"
    names, rows = read_results(d / "results.csv")
    assert rows.shape[0] == 1 and rows[0, 0] == STEP0_EPOCH
    assert all(math.isnan(v) for v in rows[0, 1:4]) and rows[0, 8] > 0  # no train loss; a val box loss
    assert result[4] == pytest.approx(rows[0, 8], rel=1e-2)  # the final validation of best.pt, on the same model
    assert any(ln.lstrip().startswith("all ") for ln in log_lines)
    best, last = load_checkpoint(d / "weights" / "best.pt"), load_checkpoint(d / "weights" / "last.pt")
    assert best["epoch"] == last["epoch"] == -1 and best["optimizer"] is None
    built = torch.load(d / "weights" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(built[k], v) for k, v in last["state_dict"].items())
    with pytest.raises(ValueError, match="nothing to resume"):
        train.run(resume=str(d / "weights" / "last.pt"))


def test_negative_epochs_are_one_line(tiny_data, tmp_path):
    with pytest.raises(InputError, match="--epochs -1: must be a whole number >= 0"):
        train.run(data=tiny_data, epochs=-1, project=str(tmp_path), **QUICK)
