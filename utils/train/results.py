"""results.csv (YOLOv5's columns and fixed-width format) and results.png (its 2x5 grid of curves)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from utils.atomic_files import write_text_atomic

# results.csv's columns (YOLOv5's names and order), in the groups that fill them.
TRAIN_LOSS_KEYS = ["train/box_loss", "train/obj_loss", "train/cls_loss"]
METRIC_KEYS = ["metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"]
VAL_LOSS_KEYS = ["val/box_loss", "val/obj_loss", "val/cls_loss"]
LR_KEYS = ["x/lr0", "x/lr1", "x/lr2"]  # learning rate per parameter group
RESULT_KEYS = TRAIN_LOSS_KEYS + METRIC_KEYS + VAL_LOSS_KEYS + LR_KEYS
# The epoch number of the row `train.py --epochs 0` writes: the starting model, before any epoch (YOLOv5 numbers
# trained epochs from 0, so 0 would read as "after one epoch"). Its train losses are NaN: nothing was trained.
STEP0_EPOCH = -1
# Panel order of results.png: top row train losses + P + R, bottom row val losses + mAPs (as v6.1).
PLOT_ORDER = [1, 2, 3, 4, 5, 8, 9, 10, 6, 7]


def csv_header(keys=RESULT_KEYS) -> str:
    cols = ["epoch", *keys]
    return ("%20s," * len(cols) % tuple(cols)).rstrip(",") + "\n"


def csv_row(epoch: int, values) -> str:
    vals = [epoch, *[float(v) for v in values]]
    return ("%20.5g," * len(vals) % tuple(vals)).rstrip(",") + "\n"


def row_values(row: dict, keys=RESULT_KEYS) -> list[float]:
    """{column name: value} -> values in column order; a missing column is an error, not a shifted row."""
    missing = [k for k in keys if k not in row]
    if missing:
        raise KeyError(f"results row lacks columns {missing}")
    return [float(row[k]) for k in keys]


def append_results(path: Path | str, epoch: int, values, keys=RESULT_KEYS) -> None:
    """Append one epoch's row; writes the header first when the file is new."""
    if len(values) != len(keys):
        raise ValueError(f"results row has {len(values)} values but {len(keys)} columns")
    path = Path(path)
    head = "" if path.exists() else csv_header(keys)
    with open(path, "a") as f:
        f.write(head + csv_row(epoch, values))


def keep_rows_through(path: Path | str, last_epoch: int) -> list[str]:
    """Drop the rows a resumed run will write again: those past `last_epoch` (the checkpoint's epoch; written
    before a kill let the checkpoint follow) and a torn last line. Rewritten atomically; returns what was dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    if lines and not lines[0].endswith("\n"):  # killed while writing the header: nothing else can follow it
        path.unlink()
        return [lines[0].strip()]
    keep, dropped = lines[:1], []
    for line in lines[1:]:
        try:
            complete = line.endswith("\n") and float(line.split(",", 1)[0]) <= last_epoch
        except ValueError:
            complete = False
        (keep if complete else dropped).append(line)
    if dropped:
        write_text_atomic(path, "".join(keep))
    return [ln.strip() for ln in dropped]


def read_results(path: Path | str) -> tuple[list[str], np.ndarray]:
    """(column names, (epochs, columns) float array) from a results.csv."""
    with open(path) as f:
        rows = [[c.strip() for c in r] for r in csv.reader(f) if r]
    if not rows:
        raise ValueError(f"{path}: empty results file")
    data = np.array([[float(x) for x in r] for r in rows[1:]], dtype=np.float64).reshape(-1, len(rows[0]))
    return rows[0], data


def validated_rows(names: list[str], data: np.ndarray) -> np.ndarray:
    """Which epochs were validated: as YOLOv5 writes an epoch it did not validate (--noval, all but the last),
    its metrics and val losses are all exactly 0, which no validation produces (its val losses are positive)."""
    cols = [names.index(k) for k in METRIC_KEYS + VAL_LOSS_KEYS if k in names]
    return np.ones(len(data), bool) if not cols else (data[:, cols] != 0).any(1)


def _smooth(y: np.ndarray, n: int = 3) -> np.ndarray:
    """Centred moving average (edges padded) so the trend shows through noisy epochs."""
    if len(y) < n:
        return y
    padded = np.pad(y, n // 2, mode="edge")
    return np.convolve(padded, np.ones(n) / n, mode="valid")


def panel_series(names: list[str], data: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(title, epochs, values) of each results.png panel, in panel order; validation panels keep only the
    epochs that were validated."""
    validated = validated_rows(names, data)
    val_cols = {names.index(k) for k in METRIC_KEYS + VAL_LOSS_KEYS if k in names}
    out = []
    for col in PLOT_ORDER:
        keep = validated if col in val_cols else np.ones(len(data), bool)
        out.append((names[col], data[keep, 0], data[keep, col]))
    return out


def plot_results(file: Path | str = "results.csv", save_path: Path | str | None = None) -> Path:
    """Draw results.png next to results.csv: 10 panels, points plus a smoothed line each. Validation panels
    leave the epochs that were not validated empty (instead of drawing them as zeros)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    file = Path(file)
    names, data = read_results(file)
    fig, axes = plt.subplots(2, 5, figsize=(12, 6), tight_layout=True)
    for ax, (title, x, y) in zip(axes.ravel(), panel_series(names, data)):
        ax.plot(x, y, marker=".", label=file.parent.name or "results", linewidth=2, markersize=8)
        ax.plot(x, _smooth(y), ":", label="smooth", linewidth=2)
        ax.set_title(title, fontsize=12)
    axes.ravel()[1].legend()
    out = Path(save_path) if save_path else file.with_suffix(".png")
    fig.savefig(out, dpi=200)
    plt.close(fig)
    return out
