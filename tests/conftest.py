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
