"""Files written so that a crash or `kill -9` at any moment leaves the old content or the new, never a mix:
a temp file beside the target (`.<name>.<random>.tmp`), fsync, os.replace. A killed write leaves its temp
file behind (nothing runs at SIGKILL): the next write of the same file removes it, and a resumed training run
removes those of its run folder."""
from __future__ import annotations

import contextlib
import glob
import os
import re
import tempfile
import time
from pathlib import Path

from utils.kill_points import kill_point

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """`path.write_text(text)` that a kill never leaves half written (opt.yaml, hyp.yaml, results.csv)."""
    return write_atomic(path, lambda f: f.write(text.encode()))


def write_atomic(path: str | Path, write) -> Path:
    """Call write(binary file) on a temp file beside `path`, fsync it, then os.replace it over `path`."""
    path = Path(path)
    started = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        kill_point(f"temp-written:{path.name}")  # test hook (utils/kill_points.py): a kill inside the save
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    remove_stale_temps(path, older_than=started)
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def remove_stale_temps(path: str | Path, older_than: float | None = None) -> list[Path]:
    """Delete the temp files killed writes of `path` left (`.<name>.*.tmp` beside it) last modified before
    `older_than` (default: now); a write still in progress elsewhere keeps touching its own. Returns them."""
    path = Path(path)
    return _remove_old(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"), older_than)


# mkstemp's names: the prefix, 8 characters from [a-z0-9_], the suffix
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temps_in(folder: str | Path, older_than: float | None = None) -> list[Path]:
    """Delete every temp file that a killed atomic write left in `folder` (not below it); for a resumed run,
    whose earlier process may have died inside any save."""
    folder = Path(folder)
    return _remove_old((p for p in folder.glob(".*.tmp") if _TEMP_NAME.match(p.name)), older_than)


def _remove_old(paths, older_than: float | None) -> list[Path]:
    cutoff = time.time() if older_than is None else older_than
    removed = []
    for tmp in paths:
        with contextlib.suppress(OSError):
            if tmp.is_file() and not tmp.is_symlink() and tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed.append(tmp)
    return removed
