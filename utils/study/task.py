"""One study run = one `python train.py ...` subprocess, its output appended to <run_dir>/train.log.

Standard library only: a Ray worker receives this function by value (executors.py), so it must not need the
project importable on the worker. A crash of the training process stays in that process; what comes back is
its exit code, the seconds it took and, on failure, the error line from its log.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

LOG_NAME = "train.log"
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*")


def error_from_log(log: Path, max_len: int = 300) -> str:
    """The last exception line of the log (e.g. 'ValueError: ...'), else its last non-empty line."""
    try:
        lines = [ln.strip() for ln in Path(log).read_text(errors="replace").splitlines()[-200:] if ln.strip()]
    except OSError:
        return "no log"
    for ln in reversed(lines):
        if _ERROR_LINE.match(ln):
            return ln[:max_len]
    return lines[-1][:max_len] if lines else "no output"


def _die_with_parent():  # Linux: a killed study (or Ray worker) takes its training process with it
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001  (not Linux: the child simply outlives a killed parent)
        pass


def run_training(cmd: list[str], run_dir: str, env: dict | None = None) -> dict:
    """Run `cmd` (a train.py command line) with stdout and stderr appended to run_dir/train.log.

    Returns {'returncode', 'seconds', 'error', 'host'}. `cmd[0]` may be 'python': it becomes this process's
    interpreter (a Ray worker's own).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable if i == 0 and c == "python" else str(c) for i, c in enumerate(cmd)]
    log = run_dir / LOG_NAME
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"\n==== {datetime.now().isoformat(timespec='seconds')} on {os.uname().nodename}: "
                f"{shlex.join(cmd)}\n")
        f.flush()
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                                          **(env or {})},
                           preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    seconds = time.time() - t0
    return {"returncode": p.returncode, "seconds": seconds, "host": os.uname().nodename,
            "error": "" if p.returncode == 0 else error_from_log(log)}
