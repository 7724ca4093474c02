"""Run directories: runs/train/exp, exp2, ... and the newest last.pt for --resume."""
from __future__ import annotations

import glob
import os
import re
from pathlib import Path


def increment_path(path: Path | str, exist_ok: bool = False, sep: str = "", mkdir: bool = False) -> Path:
    """runs/train/exp -> runs/train/exp2, exp3, ... (the first free one) unless exist_ok."""
    path = Path(path)
    if path.exists() and not exist_ok:
        stem, suffix = (path.with_suffix(""), path.suffix) if path.is_file() else (path, "")
        taken = [re.search(rf"{re.escape(stem.name)}{re.escape(sep)}(\d+)$", Path(d).stem) for d in glob.glob(f"{stem}{sep}*")]
        n = max([int(m.group(1)) for m in taken if m] + [1]) + 1
        path = Path(f"{stem}{sep}{n}{suffix}")
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def latest_run(search_dir: Path | str = "runs") -> Path:
    """The most recently written */last.pt below search_dir (for a bare --resume)."""
    found = glob.glob(f"{search_dir}/**/last*.pt", recursive=True)
    if not found:
        raise FileNotFoundError(f"--resume: no last.pt found under {Path(search_dir).resolve()}; pass the path of one")
    return Path(max(found, key=os.path.getctime))
