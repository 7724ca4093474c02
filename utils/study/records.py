"""One study run on disk: its state (new, resumable, finished), its metrics, and runs.csv.

A run folder is an ordinary train.py run folder (results.csv, opt.yaml, weights/last.pt, train.log) plus
`study_run.yaml`, written by the study when train.py exits: status (finished/failed), seconds spent in
train.py over all attempts, the error of a failed attempt, the command. A run counts as finished when that
marker says so, or, if the study was stopped before writing it, when results.csv already holds the last epoch.

The metrics of a run are those of its last results.csv row: the EMA model after the final epoch, validated
by train.py. Not best.pt's: picking the best epoch on the set that is also scored adds the same upward
selection bias to every variant, and the question is "what does E epochs of fine-tuning give".
"""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

MARKER = "study_run.yaml"
LOG = "train.log"
RUNS_COLUMNS = ["variant", "seed", "map50", "map", "precision", "recall", "epochs", "seconds", "run_dir",
                "status", "error"]
METRIC_COLUMNS = {"precision": "metrics/precision", "recall": "metrics/recall", "map50": "metrics/mAP_0.5",
                  "map": "metrics/mAP_0.5:0.95"}


@dataclass
class RunRecord:
    variant: str
    seed: int
    run_dir: Path
    status: str = "pending"  # pending | finished | failed
    map50: float = math.nan
    map: float = math.nan
    precision: float = math.nan
    recall: float = math.nan
    epochs: int = 0  # trained epochs in results.csv (its step-0 row of --epochs 0 is not one)
    seconds: float = math.nan  # time spent in train.py (all attempts the study saw)
    error: str = ""
    curve: list = field(default_factory=list)  # mAP50-95 per epoch, for the plot


def read_results(run_dir: Path) -> list[dict]:
    """results.csv rows as {column: float} (columns are space-padded in the file)."""
    f = Path(run_dir) / "results.csv"
    if not f.is_file():
        return []
    with open(f, newline="") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        return []
    head = [c.strip() for c in rows[0]]
    out = []
    for r in rows[1:]:
        try:
            out.append({k: float(v) for k, v in zip(head, r)})
        except ValueError:  # a torn last line of a killed run
            break
    return out


def read_marker(run_dir: Path) -> dict:
    f = Path(run_dir) / MARKER
    try:
        return (yaml.safe_load(f.read_text()) or {}) if f.is_file() else {}
    except yaml.YAMLError:
        return {}


def write_marker(run_dir: Path, status: str, seconds: float, error: str = "", cmd=None) -> None:
    body = {"status": status, "seconds": round(float(seconds), 1), "error": error, "cmd": list(cmd or [])}
    (Path(run_dir) / MARKER).write_text(yaml.safe_dump(body, sort_keys=False))


def run_state(run_dir: Path, epochs: int) -> str:
    """'finished', 'resumable' (weights/last.pt of an unfinished run) or 'new' (nothing usable)."""
    run_dir = Path(run_dir)
    if read_marker(run_dir).get("status") == "finished":
        return "finished"
    rows = read_results(run_dir)
    if rows and int(rows[-1]["epoch"]) >= epochs - 1:
        return "finished"
    return "resumable" if (run_dir / "weights" / "last.pt").is_file() else "new"


def load_record(variant: str, seed: int, run_dir: Path, epochs: int) -> RunRecord:
    """The run's record as the folder shows it now."""
    rec = RunRecord(variant, seed, Path(run_dir))
    marker = read_marker(run_dir)
    rows = read_results(run_dir)
    rec.epochs = sum(r.get("epoch", 0) >= 0 for r in rows)  # train.py --epochs 0 writes one row numbered -1
    rec.curve = [r.get(METRIC_COLUMNS["map"], math.nan) for r in rows]
    rec.seconds = float(marker.get("seconds", math.nan))
    state = run_state(run_dir, epochs)
    if state == "finished" and rows:
        rec.status = "finished"
        for key, col in METRIC_COLUMNS.items():
            setattr(rec, key, rows[-1].get(col, math.nan))
    elif marker.get("status") == "failed":
        rec.status, rec.error = "failed", str(marker.get("error", ""))
    return rec


def _cell(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def write_runs_csv(path: Path, records: list[RunRecord]) -> Path:
    """One row per run; run_dir relative to the study folder (the folder can be moved)."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RUNS_COLUMNS)
        for r in records:
            d = asdict(r)
            try:
                d["run_dir"] = Path(r.run_dir).relative_to(path.parent).as_posix()
            except ValueError:
                d["run_dir"] = str(r.run_dir)
            w.writerow([_cell(d[c]) for c in RUNS_COLUMNS])
    return Path(path)
