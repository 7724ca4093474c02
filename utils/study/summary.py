"""summary.csv and summary.md of a study: per variant its cost, its mAP interval over seeds, and its paired
difference from the baseline (the first --cfg) with a verdict."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from utils.study.records import RunRecord
from utils.study.stats import Interval, interval, paired_deltas, verdict

SUMMARY_COLUMNS = ["variant", "params", "gflops", "latency_ms", "runs", "map50_mean", "map50_ci95", "map_mean",
                   "map_ci95", "delta_map_mean", "delta_map_ci95", "verdict"]
EXTRA_COLUMNS = ["map50_sd", "map_sd", "delta_map50_mean", "delta_map50_ci95", "paired_seeds", "failed"]


@dataclass
class Cost:
    """What a variant costs at the study's image size (from models/measure.py)."""
    params: int | None = None
    gflops: float | None = None
    latency_ms: float | None = None


def _by_seed(records: list[RunRecord], variant: str, key: str) -> dict[int, float]:
    return {r.seed: getattr(r, key) for r in records if r.variant == variant and r.status == "finished"}


def summarize(records: list[RunRecord], variants: list[str], costs: dict[str, Cost]) -> list[dict]:
    """One row per variant, in --cfg order; the first variant is the baseline."""
    base = variants[0]
    base_map, base_map50 = _by_seed(records, base, "map"), _by_seed(records, base, "map50")
    rows = []
    for v in variants:
        m, m50 = _by_seed(records, v, "map"), _by_seed(records, v, "map50")
        im, im50 = interval(m.values()), interval(m50.values())
        d, d50 = interval(paired_deltas(m, base_map)), interval(paired_deltas(m50, base_map50))
        cost = costs.get(v, Cost())
        rows.append({
            "variant": v, "params": cost.params, "gflops": cost.gflops, "latency_ms": cost.latency_ms,
            "runs": im.n, "map50_mean": im50.mean, "map50_ci95": im50.ci95, "map_mean": im.mean, "map_ci95": im.ci95,
            "delta_map_mean": 0.0 if v == base else d.mean, "delta_map_ci95": 0.0 if v == base else d.ci95,
            "verdict": verdict(d, is_baseline=v == base),
            "map50_sd": im50.sd, "map_sd": im.sd,
            "delta_map50_mean": 0.0 if v == base else d50.mean, "delta_map50_ci95": 0.0 if v == base else d50.ci95,
            "paired_seeds": d.n, "failed": sum(r.variant == v and r.status == "failed" for r in records),
        })
    return rows


def _cell(v, digits: int = 6) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def write_summary_csv(path: Path, rows: list[dict]) -> Path:
    cols = SUMMARY_COLUMNS + EXTRA_COLUMNS
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([_cell(r[c]) for c in cols])
    return Path(path)


def _pm(mean, half, fmt="{:.4f}") -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    return fmt.format(mean) + ("" if half is None or math.isnan(half) else f" ± {half:.4f}")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| variant | params (M) | GFLOPs | CPU ms/img | runs | mAP50 | mAP50-95 | Δ mAP50-95 vs baseline | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = "n/a" if r["params"] is None else f"{r['params'] / 1e6:.2f}"
        gflops = "n/a" if r["gflops"] is None else f"{r['gflops']:.2f}"
        lat = "n/a" if r["latency_ms"] is None else f"{r['latency_ms']:.1f}"
        delta = "—" if r["verdict"] == "baseline" else _pm(r["delta_map_mean"], r["delta_map_ci95"], "{:+.4f}")
        lines.append(f"| {r['variant']} | {params} | {gflops} | {lat} | {r['runs']} | "
                     f"{_pm(r['map50_mean'], r['map50_ci95'])} | {_pm(r['map_mean'], r['map_ci95'])} | {delta} | "
                     f"{r['verdict']} |")
    return "\n".join(lines)


def verdict_sentence(r: dict) -> str:
    if r["verdict"] == "baseline":
        return f"- {r['variant']} is the baseline."
    d = Interval(r["paired_seeds"], r["delta_map_mean"], math.nan, r["delta_map_ci95"])
    if d.n < 2 or math.isnan(d.ci95):
        return f"- {r['variant']}: fewer than 2 paired seeds, so no interval can be given ({_pm(d.mean, None, '{:+.4f}')})."
    lo, hi = d.mean - d.ci95, d.mean + d.ci95
    span = f"Δ mAP50-95 {d.mean:+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}] over {d.n} paired seeds"
    if r["verdict"] == "inconclusive":
        return f"- {r['variant']}: {span}. The interval includes 0: no difference can be claimed."
    return f"- {r['variant']}: {span}. The interval excludes 0: {r['verdict']} than the baseline."


def method_paragraph(settings: dict) -> str:
    seeds = settings.get("seeds")
    return (
        f"Each variant was trained with seeds {', '.join(map(str, seeds))}; every run shares the dataset "
        f"({settings.get('data')}), the starting weights ({settings.get('weights') or 'none: from scratch'}), "
        f"hyperparameters, {settings.get('epochs')} epochs, image size {settings.get('imgsz')} and batch size "
        f"{settings.get('batch_size')}, so only the architecture differs (attention insertion: "
        f"{settings.get('attn_init') or 'train.py default'}). A run's metrics are its final epoch's validation "
        "(the last row of its results.csv). `mean ± ci95` is the Student-t 95% interval of the mean over seeds "
        "(t quantile at n-1 degrees of freedom times the sample standard deviation over √n). Δ is paired by seed: "
        "the mean of the per-seed differences from the baseline (the first --cfg) with its own t interval; the "
        "verdict is better or worse only when that interval excludes 0, otherwise inconclusive. GFLOPs are counted "
        "by torch's FlopCounterMode at the study's image size (batch 1, fused model, identity gates included); "
        f"latency is the median CPU time of {settings.get('latency_repeats')} batch-1 forward passes of the fused "
        f"model ({settings.get('latency_threads')} threads), every variant measured in one process."
    )


def write_summary_md(path: Path, rows: list[dict], settings: dict, notes: list[str], plot: str = "") -> Path:
    parts = [f"# Study: {settings.get('name', '')}", "", markdown_table(rows), "",
             "\n".join(verdict_sentence(r) for r in rows), "", "## Method", "", method_paragraph(settings)]
    if settings.get("command"):
        parts += ["", "Command:", "", f"    {settings['command']}"]
    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    if plot:
        parts += ["", f"![mAP50-95 against GFLOPs; per-epoch curves]({plot})"]
    Path(path).write_text("\n".join(parts) + "\n")
    return Path(path)
