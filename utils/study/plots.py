"""The study figure: mAP50-95 against GFLOPs with 95% interval bars, and per-epoch mAP50-95 curves (mean over
seeds with a band of ± one 95% t half-width)."""
from __future__ import annotations

import math
from pathlib import Path

from utils.study.records import RunRecord
from utils.study.stats import interval


def epoch_band(records: list[RunRecord], variant: str) -> tuple[list[int], list[float], list[float]]:
    """(epochs, mean, half-width) over the finished runs of a variant, for epochs every run reached."""
    curves = [r.curve for r in records if r.variant == variant and r.status == "finished" and r.curve]
    if not curves:
        return [], [], []
    n = min(len(c) for c in curves)
    stats = [interval([c[e] for c in curves]) for e in range(n)]
    return list(range(n)), [s.mean for s in stats], [0.0 if math.isnan(s.ci95) else s.ci95 for s in stats]


def plot_study(rows: list[dict], records: list[RunRecord], path: Path) -> Path | None:
    """Write the two-panel figure; None when no variant has a finished run."""
    if not any(r["runs"] for r in rows):
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), tight_layout=True)
    for i, r in enumerate(rows):
        color = f"C{i % 10}"
        if r["runs"] and r["gflops"] is not None:
            err = 0.0 if math.isnan(r["map_ci95"]) else r["map_ci95"]
            ax1.errorbar(r["gflops"], r["map_mean"], yerr=err, fmt="o", capsize=4, color=color, label=r["variant"])
        x, mean, half = epoch_band(records, r["variant"])
        if x:
            ax2.plot(x, mean, "o-" if len(x) <= 30 else "-", ms=3, color=color, label=r["variant"])
            ax2.fill_between(x, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)],
                             color=color, alpha=0.2)
    ax1.set(xlabel="GFLOPs", ylabel="mAP50-95 (mean ± 95% t interval over seeds)", title="accuracy against cost")
    ax2.set(xlabel="epoch", ylabel="val mAP50-95", title="per-epoch mean ± 95% band over seeds")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return Path(path)
