"""TEST HOOK: kill this process with SIGKILL at a named point, to test what a `kill -9` there leaves behind.

Only tests set the environment variable YOLOV5_TEST_KILL_AT, to `<point>` or `<point>@<n>` (die the n-th
time this process reaches the point; default the first). Unset, as always outside tests, kill_point() reads
one environment variable and returns. Points:

    results-row                after an epoch's results.csv row is written, before its checkpoints
    temp-written:<file name>   inside an atomic write (utils/checkpoint.py) of <file name>, e.g. last.pt:
                               the temp file is complete and synced, it has not yet replaced the file
    epoch-saved                after an epoch's checkpoints are written (last.pt the last of them)
"""
from __future__ import annotations

import os
import signal

KILL_ENV = "YOLOV5_TEST_KILL_AT"
_reached: dict[str, int] = {}


def kill_point(name: str) -> None:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
