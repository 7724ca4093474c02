"""`train.py --evolve [N]`: YOLOv5's hyperparameter evolution. Each generation is a normal training run with a
hyp mutated from the fittest generations so far (utils/train/evolve_math.py), scored by its final epoch's
validation. Runs as YOLOv5's: only the final epoch validated, no plots; the generation's run folder (with the
final checkpoints the trainer writes) is removed after its row is recorded.

Writes to the run folder (runs/evolve/exp by default): evolve.csv (7 result columns + every hyperparameter,
one row per generation), hyp_evolve.yaml (the fittest generation's hyp, usable as --hyp) and evolve.png.
An evolve.csv already in the folder (--resume or --exist-ok) is continued. Mutations are drawn from --seed and
the generation number: parallel evolutions into one folder need different seeds.
"""
from __future__ import annotations

import argparse
import shutil
from copy import copy
from pathlib import Path

import numpy as np

from engine.trainer import train
from utils.callbacks import Callbacks
from utils.log import LOGGER, colorstr
from utils.train.evolve_math import (RESULT_COLUMNS, append_generation, best_generation, next_hyperparameters,
                                     read_generations, write_best_yaml)
from utils.train.evolve_plot import plot_evolve
from utils.train.hyp import load_hyp
from utils.train.results import RESULT_KEYS

PREFIX = colorstr("evolve: ")
GENERATION_DIR = "generation"  # each generation's scratch run folder inside the evolve folder


def base_hyperparameters(opt: argparse.Namespace) -> dict:
    """The --hyp file's values; with 'anchors' (anchors per level, recomputed by AutoAnchor) added as YOLOv5
    does, unless --noautoanchor (then the model yaml's anchors are kept and not evolved)."""
    hyp = load_hyp(opt.hyp)
    if opt.noautoanchor:
        hyp.pop("anchors", None)
    else:
        hyp.setdefault("anchors", 3)
    return hyp


def final_epoch_results(callbacks: Callbacks) -> list:
    """A list that on_fit_epoch_end keeps filled with the latest epoch's 7 result columns."""
    latest: list = []
    columns = [RESULT_KEYS.index(k) for k in RESULT_COLUMNS]

    def record(values, epoch, *args):
        latest[:] = [float(values[i]) for i in columns]
    callbacks.register_action("on_fit_epoch_end", name="evolve.final_epoch_results", callback=record)
    return latest


def train_generation(opt: argparse.Namespace, hyp: dict, device, callbacks: Callbacks, save_dir: Path) -> list:
    """One training run with `hyp` in a scratch folder; its final epoch's 7 result columns."""
    gen = copy(opt)
    gen.hyp, gen.evolve = dict(hyp), None
    gen.noval, gen.nosave, gen.noplots = True, True, True
    gen.save_dir = str(save_dir / GENERATION_DIR)
    shutil.rmtree(gen.save_dir, ignore_errors=True)
    cb = callbacks.copy()  # the user's actions; the run's own loggers attach to this copy only
    results = final_epoch_results(cb)
    try:
        train(gen, device, cb)
    finally:
        shutil.rmtree(gen.save_dir, ignore_errors=True)
    return results


def evolve(opt: argparse.Namespace, device, callbacks: Callbacks | None = None) -> tuple:
    """opt.evolve generations into opt.save_dir; returns the fittest generation's 7 results."""
    save_dir = Path(opt.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    csv, best_yaml = save_dir / "evolve.csv", save_dir / "hyp_evolve.yaml"
    base = base_hyperparameters(opt)
    callbacks = callbacks or Callbacks()
    for _ in range(opt.evolve):
        done = len(read_generations(csv)[1]) if csv.exists() else 0
        hyp = next_hyperparameters(csv, base, np.random.default_rng([int(opt.seed), done]))
        LOGGER.info(f"{PREFIX}generation {done}: " + ", ".join(f"{k}={v:g}" for k, v in hyp.items()))
        results = train_generation(opt, hyp, device, callbacks, save_dir)
        append_generation(csv, results, hyp)
        write_best_yaml(csv, best_yaml)
        LOGGER.info(f"{PREFIX}generation {done}: " + ", ".join(f"{k}={v:.5g}" for k, v in zip(RESULT_COLUMNS, results)))
    if not opt.noplots:
        plot_evolve(csv)
    i, best, _ = best_generation(csv)
    LOGGER.info(f"{PREFIX}finished {opt.evolve} generations; the fittest is generation {i}\n"
                f"Results saved to {colorstr('bold', str(save_dir))}\n"
                f"Usage example: python train.py --hyp {best_yaml}")
    return tuple(best.values())
