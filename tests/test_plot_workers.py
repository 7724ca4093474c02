"""utils/plot_workers.py: plots drawn in worker processes or in place; a failing, unsendable, dead or hung
plot is one warning line and never an exception; the pool leaves no process behind."""
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from utils.plot_workers import PlotWorkers, fork_available


def write_text(path: Path, text: str) -> None:
    path.write_text(text)


def fail(path: Path) -> None:
    raise ValueError("bad data")


def die(path: Path) -> None:
    os._exit(3)  # a worker killed mid-plot (OOM, segfault in a native library)


def hang(path: Path) -> None:
    time.sleep(60)


def _warnings(log_lines):
    return [line for line in log_lines if line.startswith("WARNING")]


@pytest.mark.parametrize("processes", [0, 2])
def test_plots_are_written_and_failures_are_warnings(tmp_path, processes, log_lines):
    with PlotWorkers(processes=processes, warm_up=False) as workers:
        workers.submit(write_text, tmp_path / "a.txt", "a")
        workers.submit(fail, tmp_path / "b.png")
        workers.submit(write_text, tmp_path / "c.txt", "c")
        workers.submit(write_text, tmp_path / "d.txt", lambda: 0)  # not picklable (with processes): a warning too
    assert (tmp_path / "a.txt").read_text() == "a" and (tmp_path / "c.txt").read_text() == "c"
    warnings = _warnings(log_lines)
    assert any(str(tmp_path / "b.png") in w and "ValueError: bad data" in w for w in warnings), warnings
    assert any(str(tmp_path / "d.txt") in w for w in warnings), warnings
    assert not multiprocessing.active_children()  # reaped: no zombies


@pytest.mark.skipif(not fork_available(), reason="worker processes only where fork is")
def test_a_dead_or_hung_worker_costs_a_warning_not_the_validation(tmp_path, log_lines):
    t0 = time.monotonic()
    with PlotWorkers(processes=2, timeout_s=5, warm_up=False) as workers:
        assert workers.pool is not None
        workers.submit(write_text, tmp_path / "ok.txt", "ok")
        workers.submit(die, tmp_path / "dead.png")
        workers.submit(hang, tmp_path / "hung.png")
    assert time.monotonic() - t0 < 30
    assert (tmp_path / "ok.txt").read_text() == "ok"
    warnings = _warnings(log_lines)
    for name in ("dead.png", "hung.png"):
        assert any(str(tmp_path / name) in w and "did not finish" in w for w in warnings), warnings
    assert not multiprocessing.active_children()


def test_an_exception_in_the_caller_stops_the_pool(tmp_path):
    with pytest.raises(RuntimeError):
        with PlotWorkers(processes=2):  # warming up: terminated mid-import
            raise RuntimeError("validation failed")
    assert not multiprocessing.active_children()
