"""Planning a study: its folder (reused when the same study was run there before), one train.py command per
(variant, seed), and which runs are already finished, which resume from their last.pt and which start anew."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from utils.run_dirs import increment_path
from utils.study.executors import Job
from utils.study.records import read_marker, run_state

STUDY_FILE = "study.yaml"
# Settings every run of a study shares; a folder made with other values is another study.
SHARED_KEYS = ("data", "weights", "epochs", "imgsz", "batch_size", "hyp", "attn_init")


class StudyError(ValueError):
    """Bad input to a study; the message names the flag or file and the fix."""


def run_name(variant: str, seed: int) -> str:
    return f"{variant}_s{seed}"


def _differences(saved: dict, settings: dict) -> list[str]:
    return [f"{k}: {saved.get(k)!r} there, {settings.get(k)!r} now" for k in SHARED_KEYS if saved.get(k) != settings.get(k)]


def _candidates(base: Path) -> list[Path]:
    """base, base2, base3, ... that exist, in numeric order."""
    found = [base] if base.is_dir() else []
    pattern = re.compile(rf"^{re.escape(base.name)}(\d+)$")
    if base.parent.is_dir():
        numbered = [(int(m.group(1)), p) for p in base.parent.iterdir() if (m := pattern.match(p.name)) and p.is_dir()]
        found += [p for _, p in sorted(numbered)]
    return found


def study_dir(project: str | Path, name: str, settings: dict, exist_ok: bool) -> tuple[Path, bool]:
    """(folder, reused). The first of name, name2, ... made with the same shared settings is reused, so re-running
    a command continues its study; otherwise a new numbered folder (YOLOv5's increment), or with --exist-ok the
    named folder itself, which must not hold a study made with other settings."""
    base = Path(project) / name
    for d in _candidates(base):
        f = d / STUDY_FILE
        saved = yaml.safe_load(f.read_text()) if f.is_file() else None
        if saved is not None and not _differences(saved, settings):
            return d, True
    if exist_ok:
        f = base / STUDY_FILE
        if f.is_file():
            diff = _differences(yaml.safe_load(f.read_text()) or {}, settings)
            raise StudyError(f"--exist-ok: {base} holds a study made with other settings ({'; '.join(diff)}); "
                             f"use another --name, or drop --exist-ok for a new numbered folder")
        return base, base.is_dir()
    return increment_path(base), False


def train_command(settings: dict, cfg: str, seed: int, runs_dir: Path, variant: str, extra: dict) -> list[str]:
    """The train.py command line of one fresh run ('python' is replaced by the running interpreter)."""
    cmd = ["python", str(settings["train_py"]), "--data", settings["data"], "--cfg", cfg,
           "--epochs", str(settings["epochs"]), "--imgsz", str(settings["imgsz"]),
           "--batch-size", str(settings["batch_size"]), "--seed", str(seed), "--project", str(runs_dir),
           "--name", run_name(variant, seed), "--exist-ok", "--no-noval"]  # every epoch validated: the curves
    if settings.get("weights"):
        cmd += ["--weights", settings["weights"]]
    for flag, key in (("--hyp", "hyp"), ("--attn-init", "attn_init")):
        if settings.get(key):
            cmd += [flag, str(settings[key])]
    for flag, value in extra.items():  # --workers, --device as given to the study
        if value not in (None, ""):
            cmd += [flag, str(value)]
    if not settings.get("plots"):
        cmd.append("--noplots")
    return cmd


def plan_jobs(variants: dict[str, str], seeds: list[int], runs_dir: Path, settings: dict,
              extra: dict) -> tuple[list[Job], list[tuple[str, int]]]:
    """(jobs to run, (variant, seed) already finished). An unfinished run with a last.pt resumes from it; one
    without starts over in a cleaned folder."""
    jobs, finished = [], []
    for variant, cfg in variants.items():
        for seed in seeds:
            run_dir = runs_dir / run_name(variant, seed)
            state = run_state(run_dir, settings["epochs"])
            if state == "finished":
                finished.append((variant, seed))
            elif state == "resumable":
                last = run_dir / "weights" / "last.pt"
                jobs.append(Job(variant, seed, run_dir, ["python", str(settings["train_py"]), "--resume", str(last)],
                                resume=True))
            else:
                if run_dir.exists():
                    shutil.rmtree(run_dir)  # a run that died before its first checkpoint: nothing to keep
                jobs.append(Job(variant, seed, run_dir, train_command(settings, cfg, seed, runs_dir, variant, extra)))
    return jobs, finished


def earlier_seconds(job: Job) -> float:
    """Seconds of earlier attempts of a resumed run (as its marker recorded them)."""
    return float(read_marker(job.run_dir).get("seconds") or 0.0) if job.resume else 0.0
