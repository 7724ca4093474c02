"""--resume: the run folder a checkpoint belongs to, the options the run continues with, and its tidying.

A run folder, as train.py writes it:  <run>/opt.yaml  <run>/hyp.yaml  <run>/results.csv  <run>/weights/last.pt
Resuming takes its options from <run>/opt.yaml (YOLOv5 reads opt.yaml two levels above the checkpoint) and its
hyperparameters from <run>/hyp.yaml, and writes only into <run>. The `opt` and `hyp` entries stored in the
checkpoint are never used: a checkpoint is a file that travels, and a path inside it (data, hyp, project) could
point anywhere. They are only compared with the run folder's, for a warning.

--epochs given together with --resume is honoured: the run is extended or shortened to that many epochs (the
learning-rate schedule follows the new total from the resumed epoch on), and the log says so. Other options
given with --resume are ignored, with a warning naming them.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from utils.atomic_files import remove_stale_temps_in
from utils.cli import InputError
from utils.log import LOGGER
from utils.train.results import keep_rows_through

RUN_OPTIONS, RUN_HYP, WEIGHTS_DIR, RESULTS = "opt.yaml", "hyp.yaml", "weights", "results.csv"
# Options a checkpoint's copy may record differently from opt.yaml without anything being wrong: those a resume
# rewrites, and imgsz, settled to a multiple of the stride after opt.yaml is written.
VOLATILE_OPTIONS = {"resume", "weights", "cfg", "hyp", "epochs", "save_dir", "project", "name", "exist_ok",
                    "local_rank", "imgsz"}


def run_folder_of(ckpt: str | Path) -> Path:
    """<run> for a checkpoint at <run>/weights/<file> beside <run>/opt.yaml and <run>/hyp.yaml; else one line."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"--resume checkpoint {ckpt} does not exist")
    run = ckpt.parent.parent
    if ckpt.parent.name != WEIGHTS_DIR or not (run / RUN_OPTIONS).is_file():
        raise InputError(f"cannot resume: {ckpt} is not a resumable last.pt of this project: it is not inside a run "
                         f"folder (<run>/{WEIGHTS_DIR}/last.pt with <run>/{RUN_OPTIONS}); start a new run with "
                         f"--weights {ckpt} instead")
    if not (run / RUN_HYP).is_file():
        raise InputError(f"cannot resume {ckpt}: its run folder {run} has no {RUN_HYP} (the hyperparameters it "
                         f"trained with); put it back, or start a new run with --weights {ckpt} --hyp <file>")
    return run


def read_run_options(run: Path) -> dict:
    f = Path(run) / RUN_OPTIONS
    try:
        saved = yaml.safe_load(f.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{f}:{mark.line + 1}" if mark is not None else str(f)
        raise InputError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e}); cannot resume") from None
    if not isinstance(saved, dict):
        raise InputError(f"{f}: expected the run's options (a mapping), got {type(saved).__name__}; cannot resume")
    if isinstance(saved.get("epochs"), bool) or not isinstance(saved.get("epochs"), int):
        raise InputError(f"{f}: 'epochs' must be a whole number, got {saved.get('epochs')!r}; cannot resume")
    return saved


def resume_options(ckpt: str | Path, defaults: dict, given: dict) -> dict:
    """The options to resume `ckpt` with: `defaults` (train.py's), updated by the options <run>/opt.yaml knows,
    then pointed at the run's own files. `given`: options set explicitly beside --resume (see the module doc)."""
    ckpt = Path(ckpt)
    run = run_folder_of(ckpt)
    saved = read_run_options(run)
    opts = {**defaults, **{k: v for k, v in saved.items() if k in defaults}}
    opts.update(cfg="", weights=str(ckpt), resume=True, hyp=str(run / RUN_HYP), save_dir=str(run),
                project=str(run.parent), name=run.name, exist_ok=True)
    epochs = given.get("epochs")
    if epochs is not None and epochs != saved["epochs"]:
        LOGGER.info(f"--epochs {epochs} given with --resume: the run now ends after {epochs} epochs instead of the "
                    f"{saved['epochs']} in {run / RUN_OPTIONS} ({'extended' if epochs > saved['epochs'] else 'shortened'}"
                    f"); the learning-rate schedule follows {epochs} epochs from the resumed epoch on")
        opts["epochs"] = epochs
    ignored = sorted(k for k in given if k != "epochs")
    if ignored:
        LOGGER.warning(f"WARNING: --resume continues {run} with the options in its {RUN_OPTIONS}; ignored: "
                       + ", ".join(f"--{k.replace('_', '-')} {given[k]}" for k in ignored)
                       + " (only --epochs can change a resumed run; start a new run to change the others)")
    return opts


def check_epochs_left(ckpt_epoch: int, epochs: int, ckpt: str | Path) -> None:
    """A resumed run must not end before the epochs its checkpoint has already trained."""
    if ckpt_epoch + 1 > epochs:
        raise InputError(f"--epochs {epochs}: {ckpt} has already trained {ckpt_epoch + 1} epochs, nothing to resume; "
                         f"give --epochs above {ckpt_epoch + 1} with --resume to train it further")


def stored_option_differences(stored, opts: dict) -> list[str]:
    """Options the checkpoint's own (ignored) copy records differently from the run folder's."""
    if not isinstance(stored, dict):
        return []
    return sorted(k for k in stored if k in opts and k not in VOLATILE_OPTIONS and stored[k] != opts[k])


def tidy_run_for_resume(run: str | Path, ckpt_epoch: int) -> None:
    """Undo what a kill left in the run folder after the checkpoint being resumed: temp files of interrupted
    writes, and results.csv rows past the checkpoint's epoch (the resumed run writes those epochs again)."""
    run = Path(run)
    removed = remove_stale_temps_in(run / WEIGHTS_DIR) + remove_stale_temps_in(run)
    if removed:
        LOGGER.info(f"Removed {len(removed)} temp files of interrupted writes: {', '.join(p.name for p in removed)}")
    dropped = keep_rows_through(run / RESULTS, ckpt_epoch)
    if dropped:
        LOGGER.info(f"{run / RESULTS}: dropped {len(dropped)} rows past the checkpoint's epoch {ckpt_epoch} "
                    f"(written before the checkpoint when the run was stopped); those epochs are trained again")
