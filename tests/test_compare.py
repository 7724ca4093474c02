"""compare.py: statistics on hand-made numbers, the files a study writes, reuse and resume of runs, a failing run,
bad input before any training, and a tiny real study through a local Ray instance."""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest
import yaml

import compare
from utils.study import executors
from utils.study.plan import StudyError
from utils.study.records import MARKER, RunRecord
from utils.study.stats import betainc, interval, paired_deltas, t_cdf, t_quantile, verdict
from utils.study.summary import SUMMARY_COLUMNS, Cost, summarize
from utils.study.task import error_from_log, run_training
from utils.data.shapes import NAMES, generate_shapes


# ----------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("df,want", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)])
def test_t_quantile_matches_tables(df, want):
    assert abs(t_quantile(0.975, df) - want) < 5e-5


def test_t_quantile_matches_closed_forms():
    for p in (0.6, 0.9, 0.975, 0.995):
        assert math.isclose(t_quantile(p, 1), math.tan(math.pi * (p - 0.5)), rel_tol=1e-9)  # Cauchy
        assert math.isclose(t_quantile(p, 2), (2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel_tol=1e-9)
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4))
    assert t_cdf(0.0, 7) == pytest.approx(0.5)


def test_incomplete_beta_identities():
    for x in (0.1, 0.37, 0.8):
        assert betainc(1, 1, x) == pytest.approx(x)
        assert betainc(3, 1, x) == pytest.approx(x ** 3)
        assert betainc(2.5, 0.5, x) == pytest.approx(1 - betainc(0.5, 2.5, 1 - x))
    assert betainc(4, 4, 0.5) == pytest.approx(0.5)


def test_interval_on_hand_numbers():
    iv = interval([0.30, 0.32, 0.34])
    assert iv.n == 3 and iv.mean == pytest.approx(0.32) and iv.sd == pytest.approx(0.02)
    assert iv.ci95 == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    one = interval([0.5])
    assert one.mean == 0.5 and math.isnan(one.ci95)


def test_paired_deltas_and_verdicts():
    base = {0: 0.30, 1: 0.31, 2: 0.32}
    better = {0: 0.33, 1: 0.335, 2: 0.35}
    d = paired_deltas(better, base)
    assert d == pytest.approx([0.03, 0.025, 0.03])
    iv = interval(d)
    assert iv.ci95 == pytest.approx(4.302653 * 0.0028868 / math.sqrt(3), rel=1e-4)
    assert verdict(iv) == "better"
    assert verdict(interval(paired_deltas(base, better))) == "worse"
    assert verdict(interval(paired_deltas({0: 0.31, 1: 0.30, 2: 0.34}, base))) == "inconclusive"
    assert paired_deltas({0: 0.4, 2: 0.5, 7: 0.9}, base) == pytest.approx([0.1, 0.18])  # common seeds only
    assert verdict(interval([0.05])) == "inconclusive"  # one seed: no interval
    assert verdict(iv, is_baseline=True) == "baseline"


def test_paired_delta_sees_a_gain_that_unpaired_intervals_hide():
    """Seeds move both models together: the paired interval excludes 0 while the per-variant ones overlap."""
    base = {0: 0.28, 1: 0.31, 2: 0.34}
    var = {s: v + 0.004 + 0.001 * s for s, v in base.items()}
    a, b = interval(base.values()), interval(var.values())
    assert a.mean + a.ci95 > b.mean - b.ci95  # overlapping
    assert verdict(interval(paired_deltas(var, base))) == "better"


def _rec(v, s, m, status="finished"):
    return RunRecord(v, s, Path(f"runs/{v}_s{s}"), status, map50=m + 0.2, map=m)


def test_summary_rows_on_hand_made_runs():
    records = [_rec("base", s, m) for s, m in enumerate([0.30, 0.31, 0.32])]
    records += [_rec("good", s, m) for s, m in enumerate([0.33, 0.335, 0.35])]
    records += [_rec("flaky", 0, 0.40), _rec("flaky", 1, math.nan, "failed"), _rec("flaky", 2, 0.10)]
    rows = summarize(records, ["base", "good", "flaky"], {"good": Cost(10, 1.5, 3.0)})
    assert list(rows[0])[:12] == SUMMARY_COLUMNS
    base, good, flaky = rows
    assert base["verdict"] == "baseline" and base["delta_map_mean"] == 0.0 and base["runs"] == 3
    assert good["verdict"] == "better" and good["delta_map_mean"] == pytest.approx(0.085 / 3)
    assert good["params"] == 10 and good["gflops"] == 1.5 and base["params"] is None
    assert flaky["runs"] == 2 and flaky["failed"] == 1 and flaky["paired_seeds"] == 2
    assert flaky["verdict"] == "inconclusive"
    assert flaky["map_mean"] == pytest.approx(0.25)


# ----------------------------------------------------------------------------- the subprocess of one run

def test_run_training_logs_and_reports_the_error(tmp_path):
    ok = run_training([sys.executable, "-c", "print('hello')"], str(tmp_path / "a"))
    assert ok["returncode"] == 0 and ok["error"] == "" and "hello" in (tmp_path / "a" / "train.log").read_text()
    bad = run_training(["python", "-c", "import sys; print('x'); raise ValueError('boom at layer 3')"],
                       str(tmp_path / "b"))
    assert bad["returncode"] == 1 and bad["error"] == "ValueError: boom at layer 3"
    (tmp_path / "c.log").write_text("line\nlast words\n")
    assert error_from_log(tmp_path / "c.log") == "last words"


# ----------------------------------------------------------------------------- the study, with a stand-in trainer

FAKE_MAP = {"yolov5n": 0.30, "yolov5n_SE": 0.32}


def _arg(cmd, flag):
    return cmd[cmd.index(flag) + 1]


@pytest.fixture
def fake_train(monkeypatch):
    """Stands in for train.py: writes the results.csv a run would write (mAP by variant and seed)."""
    calls = []

    def fake(cmd, run_dir, env=None):
        calls.append(list(cmd))
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if "--resume" in cmd:
            seed, variant = int(run_dir.name.rsplit("_s", 1)[1]), run_dir.name.rsplit("_s", 1)[0]
        else:
            seed, variant = int(_arg(cmd, "--seed")), Path(_arg(cmd, "--cfg")).stem
        if variant == "yolov5n_SE" and seed == 1 and fake.fail:
            (run_dir / "train.log").write_text("Traceback ...\nRuntimeError: out of memory at layer 9\n")
            return {"returncode": 1, "seconds": 2.0, "host": "", "error": "RuntimeError: out of memory at layer 9"}
        m = FAKE_MAP[variant] + 0.01 * seed
        cols = ["epoch", "metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"]
        rows = [[e, 0.5, 0.4, m + 0.2, m - 0.01 * (1 - e)] for e in range(2)]
        with open(run_dir / "results.csv", "w", newline="") as f:
            csv.writer(f).writerows([[f"{c:>20}" for c in cols]] + rows)
        return {"returncode": 0, "seconds": 3.0, "host": "", "error": ""}

    fake.fail = False
    monkeypatch.setattr(executors, "run_training", fake)
    return fake, calls


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    root = generate_shapes(d / "shapes", n_train=4, n_val=2, imgsz=64, seed=1)
    f = d / "tiny.yaml"
    f.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}))
    return str(f)


def _study(tiny_data, tmp_path, **kw):
    args = dict(data=tiny_data, cfg=["yolov5n.yaml", "yolov5n_SE.yaml"], seeds=2, epochs=2, imgsz=64, batch_size=4,
                workers=0, project=str(tmp_path), name="study", latency_repeats=1)
    return compare.run(**{**args, **kw})


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_study_files_then_reuse_of_finished_runs(tiny_data, tmp_path, fake_train):
    fake, calls = fake_train
    rows = _study(tiny_data, tmp_path)
    d = tmp_path / "study"
    assert len(calls) == 4
    for f in ("runs.csv", "summary.csv", "summary.md", "summary.png", "study.yaml"):
        assert (d / f).is_file(), f
    runs = _read(d / "runs.csv")
    assert list(runs[0])[:9] == ["variant", "seed", "map50", "map", "precision", "recall", "epochs", "seconds", "run_dir"]
    assert {r["variant"] for r in runs} == {r["variant"] for r in _read(d / "summary.csv")} == set(FAKE_MAP)
    assert float(runs[1]["map"]) == pytest.approx(0.31) and runs[1]["epochs"] == "2" and runs[1]["seconds"] == "3"
    with open(d / "summary.csv") as f:
        assert next(csv.reader(f))[:12] == SUMMARY_COLUMNS
    assert rows[1]["verdict"] == "better" and rows[1]["delta_map_mean"] == pytest.approx(0.02)
    assert rows[0]["gflops"] > 0 and rows[0]["latency_ms"] > 0 and rows[0]["params"] > 1e6
    md = (d / "summary.md").read_text()
    assert "| yolov5n_SE |" in md and "excludes 0" in md and "Student-t" in md
    assert all((d / "runs" / f"{v}_s{s}" / MARKER).is_file() for v in FAKE_MAP for s in (0, 1))
    # the same command again: nothing trains, the same folder is reused, the summary is rebuilt
    (d / "summary.csv").unlink()
    again = _study(tiny_data, tmp_path)
    assert len(calls) == 4 and (d / "summary.csv").is_file() and not (tmp_path / "study2").exists()
    assert [r["map_mean"] for r in again] == [r["map_mean"] for r in rows]
    # other settings make another study in a numbered folder
    _study(tiny_data, tmp_path, epochs=3)
    assert len(calls) == 8 and (tmp_path / "study2" / "runs.csv").is_file()


def test_interrupted_run_resumes_from_last_pt_and_new_seeds_add_runs(tiny_data, tmp_path, fake_train):
    fake, calls = fake_train
    _study(tiny_data, tmp_path)
    cut = tmp_path / "study" / "runs" / "yolov5n_SE_s0"  # stopped after epoch 0's checkpoint
    (cut / MARKER).unlink()
    lines = (cut / "results.csv").read_text().splitlines()
    (cut / "results.csv").write_text("\n".join(lines[:2]) + "\n")
    (cut / "weights").mkdir()
    (cut / "weights" / "last.pt").write_bytes(b"x")
    dead = tmp_path / "study" / "runs" / "yolov5n_s1"  # died before its first checkpoint
    for f in dead.iterdir():
        f.unlink()
    (dead / "junk.txt").write_text("partial")
    _study(tiny_data, tmp_path)
    resumed = [c for c in calls[4:] if "--resume" in c]
    assert resumed == [["python", str(compare.ROOT / "train.py"), "--resume", str(cut / "weights" / "last.pt")]]
    assert len(calls) == 6 and [_arg(c, "--name") for c in calls[4:] if "--resume" not in c] == ["yolov5n_s1"]
    assert not (dead / "junk.txt").exists()  # started over in a clean folder
    _study(tiny_data, tmp_path, seeds=3)  # one more seed: only those runs train
    assert len(calls) == 8 and all(_arg(c, "--seed") == "2" for c in calls[6:])


def test_a_failing_run_is_recorded_and_the_study_goes_on(tiny_data, tmp_path, fake_train):
    fake, calls = fake_train
    fake.fail = True
    rows = _study(tiny_data, tmp_path)
    assert len(calls) == 4
    runs = {(r["variant"], r["seed"]): r for r in _read(tmp_path / "study" / "runs.csv")}
    bad = runs[("yolov5n_SE", "1")]
    assert bad["status"] == "failed" and bad["error"] == "RuntimeError: out of memory at layer 9" and bad["map"] == ""
    assert runs[("yolov5n_SE", "0")]["status"] == "finished"
    assert rows[1]["runs"] == 1 and rows[1]["failed"] == 1 and rows[1]["verdict"] == "inconclusive"
    assert "out of memory at layer 9" in (tmp_path / "study" / "summary.md").read_text()
    fake.fail = False
    _study(tiny_data, tmp_path)  # a failed run is tried again; the finished ones are kept
    assert len(calls) == 5 and _arg(calls[-1], "--seed") == "1"


@pytest.mark.parametrize("kw,match", [
    (dict(cfg=["yolov5n.yaml", "yolov5n_Nope.yaml"]), r"--cfg yolov5n_Nope.yaml: model yaml .* not found"),
    (dict(cfg=["yolov5n.yaml", "models/yolov5n.yaml"]), "given twice"),
    (dict(data="no/such/data.yaml"), "--data no/such/data.yaml"),
    (dict(weights="no/such.pt"), "--weights no/such.pt"),
    (dict(seeds=0), "--seeds 0: must be at least 1"),
    (dict(epochs=-1), "--epochs -1: must be at least 0"),
    (dict(cfg=[]), "--cfg: give at least one"),
])
def test_bad_input_fails_before_any_training(tiny_data, tmp_path, fake_train, kw, match):
    fake, calls = fake_train
    with pytest.raises(StudyError, match=match):
        _study(tiny_data, tmp_path, **kw)
    assert calls == [] and not (tmp_path / "study").exists()


def test_cli_bad_input_is_one_line_and_exit_1(tiny_data, tmp_path, fake_train, log_lines):
    with pytest.raises(SystemExit) as e:
        compare.main(["--data", tiny_data, "--cfg", "yolov5n_Nope.yaml", "--project", str(tmp_path)])
    assert e.value.code == 1 and any(line.startswith("compare: --cfg yolov5n_Nope.yaml") for line in log_lines)


def test_one_seed_warns_that_no_interval_can_be_given(tiny_data, tmp_path, fake_train, log_lines):
    rows = _study(tiny_data, tmp_path, seeds=1)
    assert any("--seeds 1" in line and "no interval" in line for line in log_lines)
    assert rows[1]["verdict"] == "inconclusive" and math.isnan(rows[1]["map_ci95"])


def test_attn_init_and_train_options_reach_every_run(tiny_data, tmp_path, fake_train):
    fake, calls = fake_train
    _study(tiny_data, tmp_path, attn_init="plain", device="cpu", seeds=1)
    assert all(_arg(c, "--attn-init") == "plain" and _arg(c, "--device") == "cpu" and "--noplots" in c for c in calls)
    assert {_arg(c, "--name") for c in calls} == {"yolov5n_s0", "yolov5n_SE_s0"}


# ----------------------------------------------------------------------------- Ray

def test_tiny_study_through_a_local_ray_instance(tiny_data, tmp_path):
    """Real train.py subprocesses as Ray tasks: 2 variants x 2 seeds x 1 epoch at 64 px on 6 synthetic images."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        rows = _study(tiny_data, tmp_path, epochs=1, executor="ray", ray_cpus_per_run=1)
    finally:
        ray.shutdown()
    runs = _read(tmp_path / "study" / "runs.csv")
    assert len(runs) == 4 and all(r["status"] == "finished" and r["epochs"] == "1" for r in runs), runs
    for r in runs:
        run_dir = tmp_path / "study" / r["run_dir"]
        assert (run_dir / "weights" / "last.pt").is_file() and "Starting training" in (run_dir / "train.log").read_text()
    assert [r["variant"] for r in rows] == ["yolov5n", "yolov5n_SE"] and all(r["runs"] == 2 for r in rows)
    assert (tmp_path / "study" / "summary.md").is_file()


# ----------------------------------------------------------------------------- --epochs 0: step 0 of every variant

def _val_losses(study: Path, runs: list[dict]) -> list[list[float]]:
    """Each run's one results.csv row (the step-0 row, epoch -1): its validation losses."""
    out = []
    for r in runs:
        with open(study / r["run_dir"] / "results.csv", newline="") as f:
            table = [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]
        assert [row["epoch"] for row in table] == [-1]
        out.append([table[0][k] for k in ("val/box_loss", "val/obj_loss", "val/cls_loss")])
    return out


def test_epochs_zero_study_scores_every_starting_model(tiny_data, tmp_path):
    """Real train.py runs at --epochs 0: every run finishes with its one step-0 row and counts 0 epochs."""
    rows = _study(tiny_data, tmp_path, epochs=0, seeds=1)
    runs = _read(tmp_path / "study" / "runs.csv")
    assert [(r["variant"], r["status"], r["epochs"]) for r in runs] == \
        [("yolov5n", "finished", "0"), ("yolov5n_SE", "finished", "0")]
    assert [r["runs"] for r in rows] == [1, 1] and all(v[0] > 0 for v in _val_losses(tmp_path / "study", runs))


def test_epochs_zero_study_shows_identity_insertion(tiny_data, tmp_path, official_weights):
    """From a real pretrained model (a random one answers nearly the same to every input, so any block would
    pass): with the inserted SE block starting as the identity, its step-0 losses equal the baseline's. 80 class
    names, so the whole head transfers too (a new head is drawn from an RNG the inserted layers also draw from)."""
    coco_sized = yaml.safe_load(Path(tiny_data).read_text())
    coco_sized["names"] = NAMES + [f"class{i}" for i in range(len(NAMES), 80)]
    data = tmp_path / "tiny80.yaml"
    data.write_text(yaml.safe_dump(coco_sized))
    _study(str(data), tmp_path, weights=str(official_weights), epochs=0, seeds=1)
    losses = _val_losses(tmp_path / "study", _read(tmp_path / "study" / "runs.csv"))
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
