"""What `python models/yolo.py --profile / --test` runs: time per layer, and a build of every model yaml.

profile_layers   YOLOv5's per-layer table (time in ms, GFLOPs, params, module) for one input batch. Each layer is
                 timed on the very input it gets inside the model (captured by forward pre-hooks), averaged over
                 `runs` calls after one warm-up call, in eval mode without gradients (inference cost).
                 GFLOPs come from torch's FLOP counter (utils/flops), per layer, at that input.
build_every_yaml every yaml in models/, at each scale its `scales:` table declares (else its own multiples),
                 built and probed; a report row per build, errors included (never skipped).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from models.config import MODELS_DIR, apply_scale
from utils.export_checks import layer_inputs
from utils.flops import count_flops
from utils.log import LOGGER


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _copy(x):
    return list(x) if isinstance(x, list) else x  # Detect writes into its input list


@dataclass
class LayerCost:
    index: int
    ms: float
    gflops: float | None
    params: int
    type: str


def profile_layers(model: nn.Module, im: torch.Tensor, runs: int = 10) -> list[LayerCost]:
    """Per-layer cost of `model` on the batch `im` (see module doc); prints YOLOv5's table."""
    was_training = model.training
    model.eval()
    rows = []
    try:
        inputs = layer_inputs(model, im)  # {layer index: its forward args}
        for m in model.model:
            x = inputs[m.i][0]
            try:
                gflops = count_flops(m, (_copy(x),)) / 1e9
            except Exception as e:  # reported in the row, the timing still runs
                LOGGER.warning(f"WARNING: layer {m.i} ({m.type}): FLOPs not counted ({type(e).__name__}: {e})")
                gflops = None
            with torch.no_grad():
                m(_copy(x))  # warm-up
                _sync(im.device)
                t = time.perf_counter()
                for _ in range(runs):
                    m(_copy(x))
                _sync(im.device)
            rows.append(LayerCost(m.i, (time.perf_counter() - t) / runs * 1e3, gflops,
                                  sum(p.numel() for p in m.parameters()), m.type))
    finally:
        model.train(was_training)
    _print_profile(rows, im)
    return rows


def _print_profile(rows: list[LayerCost], im: torch.Tensor) -> None:
    LOGGER.info(f"per-layer cost at input {tuple(im.shape)} on {im.device} (eval, no grad, mean of timed calls)")
    LOGGER.info(f"{'time (ms)':>10s} {'GFLOPs':>10s} {'params':>10s}  {'module'}")
    for r in rows:
        g = f"{r.gflops:10.2f}" if r.gflops is not None else f"{'?':>10s}"
        LOGGER.info(f"{r.ms:10.2f} {g} {r.params:10.0f}  {r.type}")
    known = [r.gflops for r in rows if r.gflops is not None]
    total_g = f"{sum(known):10.2f}" if len(known) == len(rows) else f"{'?':>10s}"
    LOGGER.info(f"{sum(r.ms for r in rows):10.2f} {total_g} {sum(r.params for r in rows):10.0f}  Total")


@dataclass
class BuildResult:
    file: str
    scale: str  # letter, or '' for the file's own multiples
    params: int | None
    layers: int | None
    seconds: float
    error: str = ""


def _scales_of(path: Path) -> tuple[dict | None, list[str | None]]:
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        return None, [f"not valid yaml: {e}"]
    if not isinstance(d, dict):
        return None, ["not a mapping"]
    return d, list(d.get("scales") or {}) or [None]


def build_one(path: Path, d: dict, letter: str | None, model_cls) -> BuildResult:
    t = time.perf_counter()
    try:
        cfg = apply_scale(dict(d), letter, str(path))
        cfg["yaml_file"] = path.name
        model = model_cls(cfg)
        return BuildResult(path.name, letter or "", sum(p.numel() for p in model.parameters()), len(model.model),
                           time.perf_counter() - t)
    except Exception as e:  # every failure is a report row (--test is a check of all yamls)
        return BuildResult(path.name, letter or "", None, None, time.perf_counter() - t, f"{type(e).__name__}: {e}")


def build_every_yaml(files: list[Path] | None = None, letters: str | None = None, model_cls=None) -> list[BuildResult]:
    """Build each model yaml (default: every *.yaml in models/) at each declared scale (or only `letters`).

    model_cls: models.yolo.Model by default; `python models/yolo.py` passes its own (its __main__ copy)."""
    if model_cls is None:
        from models.yolo import Model as model_cls
    results = []
    for path in sorted(files or MODELS_DIR.glob("*.yaml")):
        d, scales = _scales_of(path)
        if d is None:
            results.append(BuildResult(path.name, "", None, None, 0.0, scales[0]))
            continue
        for letter in scales:
            if letters and letter is not None and letter not in letters:
                continue
            r = build_one(path, d, letter, model_cls)
            results.append(r)
            status = f"{r.params:>12,d} params {r.layers:>3d} layers" if not r.error else f"ERROR {r.error}"
            LOGGER.info(f"{r.file:<32} {r.scale or '-':>2} {r.seconds:6.1f}s  {status}")
    failed = [r for r in results if r.error]
    LOGGER.info(f"{len(results) - len(failed)}/{len(results)} builds ok" + (f", {len(failed)} failed" if failed else ""))
    return results
