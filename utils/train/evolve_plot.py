"""evolve.png: one panel per hyperparameter, every generation's value against its fitness (coloured by
generation, so the search's drift shows), the fittest marked with a cross and named in the title."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from utils.eval.metrics import fitness
from utils.train.evolve_math import RESULT_COLUMNS, read_generations

COLUMNS = 5


def plot_evolve(csv: Path | str) -> Path:
    """evolve.png beside evolve.csv."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv = Path(csv)
    keys, rows = read_generations(csv)
    hyp_keys = keys[len(RESULT_COLUMNS):]
    f = fitness(rows)
    best = int(np.argmax(f))
    nrows = max(math.ceil(len(hyp_keys) / COLUMNS), 1)
    fig, axes = plt.subplots(nrows, COLUMNS, figsize=(2.4 * COLUMNS, 2.2 * nrows), tight_layout=True, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i >= len(hyp_keys):
            ax.axis("off")
            continue
        v = rows[:, len(RESULT_COLUMNS) + i]
        ax.scatter(v, f, c=np.arange(len(v)), cmap="viridis", alpha=0.8, edgecolors="none", s=14)
        ax.plot(v[best], f[best], "k+", markersize=15)
        ax.set_title(f"{hyp_keys[i]} = {v[best]:.3g}", fontsize=9)
        if i % COLUMNS:
            ax.set_yticklabels([])
        ax.tick_params(labelsize=7)
    out = csv.with_suffix(".png")
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out
