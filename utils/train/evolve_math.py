"""The pure parts of YOLOv5's hyperparameter evolution (`train.py --evolve`): the mutation table, parent
selection, gaussian mutation, limits, fitness and evolve.csv / hyp_evolve.yaml. The loop around training runs
is engine/evolve.py.

A generation's parent is drawn from the 5 fittest generations so far, with probability growing with fitness
above the 5th's; each hyperparameter in META is multiplied by a factor near 1 (with probability 0.8: a gaussian
step of sigma 0.2 scaled by the key's gain and one random scale per generation, clipped to 0.3..3), then clipped
to the key's limits and rounded to 5 decimals. Multiplicative: a value of 0 stays 0, as in YOLOv5.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from utils.eval.metrics import fitness
from utils.train.results import METRIC_KEYS, VAL_LOSS_KEYS

# key: (mutation gain 0..1, lower limit, upper limit), YOLOv5 v6.1's table. Gain 0: never mutated.
META = {
    "lr0": (1, 1e-5, 1e-1), "lrf": (1, 0.01, 1.0), "momentum": (0.3, 0.6, 0.98), "weight_decay": (1, 0.0, 0.001),
    "warmup_epochs": (1, 0.0, 5.0), "warmup_momentum": (1, 0.0, 0.95), "warmup_bias_lr": (1, 0.0, 0.2),
    "box": (1, 0.02, 0.2), "cls": (1, 0.2, 4.0), "cls_pw": (1, 0.5, 2.0), "obj": (1, 0.2, 4.0),
    "obj_pw": (1, 0.5, 2.0), "iou_t": (0, 0.1, 0.7), "anchor_t": (1, 2.0, 8.0), "anchors": (2, 2.0, 10.0),
    "fl_gamma": (0, 0.0, 2.0), "hsv_h": (1, 0.0, 0.1), "hsv_s": (1, 0.0, 0.9), "hsv_v": (1, 0.0, 0.9),
    "degrees": (1, 0.0, 45.0), "translate": (1, 0.0, 0.9), "scale": (1, 0.0, 0.9), "shear": (1, 0.0, 10.0),
    "perspective": (0, 0.0, 0.001), "flipud": (1, 0.0, 1.0), "fliplr": (0, 0.0, 1.0), "mosaic": (1, 0.0, 1.0),
    "mixup": (1, 0.0, 1.0), "copy_paste": (1, 0.0, 1.0),
}
RESULT_COLUMNS = METRIC_KEYS + VAL_LOSS_KEYS  # evolve.csv's first 7 columns: P, R, mAP50, mAP50-95, val losses
TOP, MUTATION_PROBABILITY, SIGMA = 5, 0.8, 0.2


def select_parent(rows: np.ndarray, rng: np.random.Generator, top: int = TOP) -> np.ndarray:
    """One row of the `top` fittest, drawn with weight (its fitness - the lowest of them + 1e-6)."""
    f = fitness(rows)
    best = np.argsort(-f, kind="stable")[:top]
    w = f[best] - f[best].min() + 1e-6
    return np.asarray(rows)[best[rng.choice(len(best), p=w / w.sum())]]


def mutate(parent: dict, rng: np.random.Generator, meta: dict = META, probability: float = MUTATION_PROBABILITY,
           sigma: float = SIGMA) -> dict:
    """`parent` with every key of `meta` multiplied by its own random factor; drawn again until at least one
    factor differs from 1 (a generation never repeats its parent exactly)."""
    keys = [k for k in parent if k in meta]
    gains = np.array([meta[k][0] for k in keys], dtype=np.float64)
    child = dict(parent)
    if not gains.any():
        return child
    v = np.ones(len(keys))
    while (v == 1).all():
        step = (rng.random(len(keys)) < probability) * rng.standard_normal(len(keys)) * rng.random() * sigma
        v = (gains * step + 1).clip(0.3, 3.0)
    for k, factor in zip(keys, v):
        child[k] = float(parent[k]) * float(factor)
    return child


def constrain(hyp: dict, meta: dict = META) -> dict:
    """Each key of `meta` clipped to its limits and rounded to 5 decimals (the other keys as they are)."""
    out = dict(hyp)
    for k, (_, low, high) in meta.items():
        if k in out:
            out[k] = round(min(max(float(out[k]), low), high), 5)
    return out


# ----------------------------------------------------------------------------------- evolve.csv / yaml --

def append_generation(csv: Path, results, hyp: dict) -> None:
    """One row: the 7 result columns, then every hyperparameter; a header first when the file is new. Fixed
    width fields as YOLOv5 ('%20s,' / '%20.5g,')."""
    keys, values = [*RESULT_COLUMNS, *hyp], [*map(float, results), *map(float, hyp.values())]
    if len(values) != len(keys):
        raise ValueError(f"{len(results)} results given, {len(RESULT_COLUMNS)} expected")
    csv = Path(csv)
    if csv.exists():
        have = read_generations(csv)[0]
        if have != keys:
            raise ValueError(f"{csv} has the columns {have[len(RESULT_COLUMNS):]}, this run's hyp {list(hyp)}; "
                             f"continue it with the same --hyp file or evolve into a new folder")
    head = "" if csv.exists() else ("%20s," * len(keys) % tuple(keys)).rstrip(",") + "\n"
    with open(csv, "a") as f:
        f.write(head + ("%20.5g," * len(values) % tuple(values)).rstrip(",") + "\n")


def read_generations(csv: Path) -> tuple[list[str], np.ndarray]:
    """(column names, (generations, columns) array) of an evolve.csv."""
    lines = [ln for ln in Path(csv).read_text().splitlines() if ln.strip()]
    if not lines:
        return [], np.zeros((0, 0))
    keys = [k.strip() for k in lines[0].split(",")]
    rows = np.array([[float(x) for x in ln.split(",")] for ln in lines[1:]], dtype=np.float64)
    return keys, rows.reshape(-1, len(keys))


def next_hyperparameters(csv: Path, base: dict, rng: np.random.Generator) -> dict:
    """The next generation's hyp: `base` for the first generation, else a mutation of a parent drawn from
    evolve.csv's fittest rows; always within META's limits."""
    keys, rows = read_generations(csv) if Path(csv).exists() else ([], np.zeros((0, 0)))
    if not len(rows):
        return constrain(base)
    parent_row = dict(zip(keys, select_parent(rows, rng)))
    parent = {k: parent_row.get(k, v) for k, v in base.items()}
    return constrain(mutate(parent, rng))


def best_generation(csv: Path) -> tuple[int, dict, dict]:
    """(index, results by column name, hyp) of the fittest row of an evolve.csv."""
    keys, rows = read_generations(csv)
    i = int(np.argmax(fitness(rows)))
    n = len(RESULT_COLUMNS)
    return i, dict(zip(keys[:n], rows[i, :n].tolist())), dict(zip(keys[n:], rows[i, n:].tolist()))


def write_best_yaml(csv: Path, out: Path) -> Path:
    """hyp_evolve.yaml: the fittest generation's hyperparameters (usable as --hyp), its results as comments."""
    i, results, hyp = best_generation(csv)
    generations = len(read_generations(csv)[1])
    head = ["# YOLOv5 hyperparameter evolution: the fittest generation's hyperparameters",
            f"# Best generation: {i}", f"# Last generation: {generations - 1}",
            "# " + ", ".join(f"{k:>20s}" for k in results), "# " + ", ".join(f"{v:>20.5g}" for v in results.values())]
    out.write_text("\n".join(head) + "\n\n" + yaml.safe_dump(hyp, sort_keys=False))
    return out
