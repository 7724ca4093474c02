"""The hyperparameters a run trains with, settled once from the hyp file (v6.1's three rewrites in one place)."""
from __future__ import annotations

from pathlib import Path

import yaml

from utils.train.optim import NOMINAL_BATCH, scaled_weight_decay


def load_hyp(source) -> dict:
    """A hyp yaml path, or a dict (train.run(hyp={...})), -> a fresh dict."""
    return dict(source) if isinstance(source, dict) else yaml.safe_load(Path(source).read_text())


def nominal_batch(hyp: dict) -> int:
    """Batch size gradients are accumulated to: 64 as v6.1 unless the hyp file sets 'nbs'."""
    return int(hyp.get("nbs", NOMINAL_BATCH))


def scale_hyp_gains(hyp: dict, nc: int, nl: int, imgsz: int) -> dict:
    """v6.1 train.py's rescaling of the loss gains to the number of levels, classes and image size."""
    hyp = dict(hyp)
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    return hyp


def settle_hyp(source: dict, *, nc: int, nl: int, imgsz: int, batch_size: int, label_smoothing: float) -> dict:
    """What training uses: the file's values with the loss gains scaled to the detection layers, classes and
    image size, --label-smoothing added, and weight decay scaled to the batch actually accumulated (all as
    v6.1). A new dict; `source` is left as loaded."""
    hyp = scale_hyp_gains(source, nc, nl, imgsz)
    hyp["label_smoothing"] = label_smoothing
    hyp["weight_decay"] = scaled_weight_decay(hyp["weight_decay"], batch_size, nominal_batch(hyp))
    return hyp
