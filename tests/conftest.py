"""Shared fixtures: where ../shared lives (skip cleanly when absent), the repo root."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _shared_dir() -> Path | None:
    env = os.getenv("YOLOV5_SHARED")
    for cand in ([Path(env)] if env else []) + [ROOT.parent / "shared"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    d = _shared_dir()
    if d is None:
        pytest.skip("../shared is not present")
    return d


@pytest.fixture(scope="session")
def official_weights(shared_dir) -> Path:
    p = shared_dir / "weights" / "yolov5n.pt"
    if not p.is_file():
        pytest.skip(f"{p} is not present")
    return p


@pytest.fixture(scope="session")
def coco128_dir(shared_dir) -> Path:
    p = shared_dir / "datasets" / "coco128"
    if not (p / "images").is_dir():
        pytest.skip(f"{p} is not present")
    return p


@pytest.fixture
def one_thread():
    """One intra-op thread: two OpenMP threads on 2 shared cores can stall badly; one is also deterministic."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def log_lines():
    """Messages the project's LOGGER emits during the test, as plain strings."""
    import logging

    from utils.log import LOGGER

    class Capture(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    handler = Capture()
    LOGGER.addHandler(handler)
    yield handler.lines
    LOGGER.removeHandler(handler)


def pytest_configure(config):
    # Under pytest-xdist each worker is a process of its own: one intra-op thread each keeps the
    # 2-core CI machine from oversubscribing (tests that want more threads set them themselves).
    if os.getenv("PYTEST_XDIST_WORKER"):
        import torch
        torch.set_num_threads(1)


# ----------------------------------------------------------------------------- CLI runs with their cost
class ScriptRun:
    """One finished run of a repository script: exit status, output, peak RSS (bytes) and wall time (s)."""

    def __init__(self, rc: int, stdout: str, stderr: str, peak: int, seconds: float):
        self.rc, self.stdout, self.stderr, self.peak, self.seconds = rc, stdout, stderr, peak, seconds

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith("ERROR:")]


# Forks the script and reports its own peak RSS. Linux records the RSS of the process that exec()s into a child's
# ru_maxrss, so measuring a child forked from the (large) test process would report the test process's size; this
# launcher is small when it forks.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_script(script: str, *args, cwd=None, env=None, timeout: float = 120) -> ScriptRun:
    """`python <repo>/<script> args...` as a child process, with its exit status, output, peak RSS and time."""
    import signal
    import subprocess
    import tempfile
    import time

    full_env = {k: v for k, v in os.environ.items() if k != "YOLOV5_TRACEBACK"}  # the default: no tracebacks
    full_env.update(PYTHONUNBUFFERED="1", **(env or {}))
    with tempfile.TemporaryDirectory() as d:
        report = Path(d) / "peak"
        cmd = [sys.executable, "-c", _LAUNCHER, str(report), str(ROOT / script), *map(str, args)]
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd or ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        seconds = time.perf_counter() - t0
        peak = int(report.read_text()) if report.is_file() else -1
    return ScriptRun(p.returncode, out.decode(errors="replace"), err.decode(errors="replace"), peak, seconds)


_BASELINES: dict[str, int] = {}


def import_baseline(script: str) -> int:
    """Peak RSS of `script --help`: the script's imports (torch alone maps ~0.7 GB), before any input is read."""
    if script not in _BASELINES:
        r = run_script(script, "--help")
        assert r.rc == 0, r.stderr[-2000:]
        _BASELINES[script] = r.peak
    return _BASELINES[script]


def both_formulations(m, x):
    """(output, input grad, {param: grad}) with every block's `explicit_attention` switch on, then off (the fused
    or query-blocked kernels), same weights and the same output gradient."""
    import torch

    runs = []
    for explicit in (True, False):
        for sub in m.modules():
            if hasattr(type(sub), "explicit_attention"):
                sub.explicit_attention = explicit
        m.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_(True)
        y = m(xg)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(5)))
        runs.append((y.detach(), xg.grad, {n: p.grad for n, p in m.named_parameters()}))
    return runs
