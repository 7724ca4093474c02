"""Does this block help on my data? Train each model variant with the same seeds and settings, then report
mean ± 95% intervals over seeds and the paired difference from the baseline (the first --cfg) with a verdict.

Usage:
    python compare.py --data coco128.yaml --weights yolov5n.pt --cfg yolov5n.yaml yolov5n_TripletAttention.yaml \\
        --seeds 3 --epochs 10 --img 320 --batch-size 16
    python compare.py ... --epochs 0 --seeds 1          # step 0 only: does each inserted block start as the identity?
    python compare.py ... --attn-init plain            # insert the blocks plainly (default: as the identity)
    python compare.py ... --executor ray [--ray-address HOST:6379] [--ray-cpus-per-run 4] [--ray-gpus-per-run 1]
    import compare; rows = compare.run(data=..., weights=..., cfg=[...], seeds=3, epochs=10, imgsz=320)

Writes <project>/<name>/: runs.csv (one row per run), summary.csv and summary.md (one row per variant),
summary.png, study.yaml, and runs/<variant>_s<seed>/, an ordinary train.py run folder per run with its
train.log. Re-running the same command reuses finished runs, resumes unfinished ones from their last.pt, and
rebuilds the summary. A run that fails is recorded with its error and the study goes on.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (as train.py): the latency measurement shares the CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from models.measure import load_for_cost, model_cost  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.checkpoint import load_checkpoint  # noqa: E402
from utils.data.dataset_yaml import check_dataset  # noqa: E402
from utils.log import LOGGER, colorstr  # noqa: E402
from utils.study.executors import EXECUTORS, run_local, run_ray  # noqa: E402
from utils.study.plan import STUDY_FILE, StudyError, earlier_seconds, plan_jobs, run_name, study_dir  # noqa: E402
from utils.study.plots import plot_study  # noqa: E402
from utils.study.records import load_record, write_marker, write_runs_csv  # noqa: E402
from utils.study.summary import Cost, markdown_table, summarize, verdict_sentence, write_summary_csv, write_summary_md  # noqa: E402


def parse_opt(argv=None, known: bool = False) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Compare model variants over seeds (mean ± 95% interval, paired deltas)")
    p.add_argument("--data", type=str, default=str(ROOT / "data" / "coco128.yaml"), help="dataset yaml")
    p.add_argument("--weights", type=str, default="", help="pretrained weights every variant starts from ('' = scratch)")
    p.add_argument("--cfg", type=str, nargs="+", default=None, help="model yamls; the first is the baseline")
    p.add_argument("--seeds", type=int, default=3, help="runs per variant, seeds 0..N-1")
    p.add_argument("--epochs", type=int, default=10, help="epochs per run; 0 scores every variant's starting model")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="train, val image size (pixels)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=None, help="dataloader workers per run (train.py's default)")
    p.add_argument("--device", default="", help="device of every run: cpu, 0, 0,1 ...")
    p.add_argument("--hyp", type=str, default=None, help="hyperparameters yaml (train.py's default)")
    p.add_argument("--attn-init", choices=["identity", "plain"], default=None,
                   help="inserted attention layers start as the identity or plain (train.py's default: identity "
                        "with --weights, plain from scratch)")
    p.add_argument("--project", default=str(ROOT / "runs" / "compare"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="use project/name even if it exists")
    p.add_argument("--executor", choices=EXECUTORS, default="local", help="run here one by one, or as Ray tasks")
    p.add_argument("--ray-address", default=None, help="address of an existing Ray cluster (default: a local instance)")
    p.add_argument("--ray-cpus-per-run", type=float, default=1.0, help="CPUs a Ray task reserves (its thread count)")
    p.add_argument("--ray-gpus-per-run", type=float, default=0.0, help="GPUs a Ray task reserves")
    p.add_argument("--latency-repeats", type=int, default=20, help="timed batch-1 forward passes per variant")
    p.add_argument("--plots", action="store_true", help="let every run save its plots (train.py --noplots otherwise)")
    return p.parse_known_args(argv)[0] if known else p.parse_args(argv)


# ----------------------------------------------------------------------------------------- input checks
def _existing(path: str) -> str:
    return str(Path(path).resolve()) if Path(path).is_file() else path


def check_variants(cfgs, nc: int) -> dict[str, str]:
    """{variant name (cfg stem): cfg as train.py gets it}; each yaml must build for the dataset's classes."""
    if not cfgs:
        raise StudyError("--cfg: give at least one model yaml (the first is the baseline)")
    variants: dict[str, str] = {}
    for cfg in cfgs:
        name = Path(cfg).stem
        if name in variants:
            raise StudyError(f"--cfg {cfg}: variant {name!r} is given twice")
        try:
            Model(cfg, nc=nc)
        except (FileNotFoundError, ValueError, TypeError, RuntimeError) as e:
            raise StudyError(f"--cfg {cfg}: {e}") from None
        variants[name] = _existing(cfg)
    return variants


def check_inputs(opt: argparse.Namespace) -> tuple[dict, dict]:
    """(variants, settings); every bad flag or file is a StudyError here, before any training starts."""
    for flag, value, low in (("--seeds", opt.seeds, 1), ("--epochs", opt.epochs, 0), ("--batch-size", opt.batch_size, 1),
                             ("--imgsz", opt.imgsz, 32), ("--latency-repeats", opt.latency_repeats, 1)):
        if value < low:
            raise StudyError(f"{flag} {value}: must be at least {low}")
    if opt.ray_cpus_per_run <= 0 or opt.ray_gpus_per_run < 0:
        raise StudyError("--ray-cpus-per-run must be > 0 and --ray-gpus-per-run >= 0")
    try:
        data = check_dataset(opt.data)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise StudyError(f"--data {opt.data}: {e}") from None
    if opt.weights:
        try:
            load_checkpoint(opt.weights)
        except Exception as e:  # noqa: BLE001  (missing, foreign or hostile: one line either way)
            raise StudyError(f"--weights {opt.weights}: {e}") from None
    if opt.hyp and not Path(opt.hyp).is_file():
        raise StudyError(f"--hyp {opt.hyp}: file not found")
    if opt.executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise StudyError("--executor ray needs Ray: pip install -r requirements-ray.txt") from None
    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)  # building each variant once must not print its nc override
    try:
        variants = check_variants(opt.cfg, data["nc"])
    finally:
        LOGGER.setLevel(level)
    imgsz = max(math.ceil(opt.imgsz / 32) * 32, 64)
    if imgsz != opt.imgsz:
        LOGGER.warning(f"WARNING: --imgsz {opt.imgsz} is not a multiple of 32; every run uses {imgsz}")
    settings = {"data": _existing(opt.data), "weights": str(Path(opt.weights).resolve()) if opt.weights else "",
                "epochs": opt.epochs, "imgsz": imgsz, "batch_size": opt.batch_size,
                "hyp": str(Path(opt.hyp).resolve()) if opt.hyp else "", "attn_init": opt.attn_init,
                "train_py": str(ROOT / "train.py"), "plots": opt.plots, "nc": data["nc"]}
    return variants, settings


# ----------------------------------------------------------------------------------------- execution
def execute(jobs, opt, finished: int, total: int) -> None:
    from tqdm import tqdm

    pbar = tqdm(total=total, initial=finished, desc="study", unit="run", file=sys.stderr,
                bar_format="{l_bar}{bar:20}| {n_fmt}/{total_fmt} runs [{elapsed}<{remaining}]")

    def on_done(job, result):
        seconds = earlier_seconds(job) + (0.0 if math.isnan(result["seconds"]) else result["seconds"])
        ok = result["returncode"] == 0
        job.run_dir.mkdir(parents=True, exist_ok=True)
        write_marker(job.run_dir, "finished" if ok else "failed", seconds, result["error"], job.cmd)
        rec = load_record(job.variant, job.seed, job.run_dir, opt.epochs)
        pbar.update(1)
        what = (f"mAP50-95 {rec.map:.4f} after {rec.epochs} epochs, {seconds:.0f} s" if ok else
                f"FAILED ({result['error']}); log: {job.run_dir / 'train.log'}")
        pbar.write(f"{run_name(job.variant, job.seed)}: {what}", file=sys.stderr)

    try:
        if opt.executor == "ray":
            run_ray(jobs, on_done, opt.ray_address, opt.ray_cpus_per_run, opt.ray_gpus_per_run)
        else:
            run_local(jobs, on_done)
    finally:
        pbar.close()


def measure_costs(variants: dict[str, str], records, settings: dict, repeats: int) -> dict[str, Cost]:
    """Per variant, from one of its trained checkpoints (gates as trained) or else its yaml; one process."""
    costs = {}
    for v, cfg in variants.items():
        runs = [r for r in records if r.variant == v]
        weights = next((w for r in sorted(runs, key=lambda r: r.status != "finished")
                        for w in (r.run_dir / "weights" / "best.pt", r.run_dir / "weights" / "last.pt") if w.is_file()),
                       None)
        costs[v] = Cost()
        for source in ([weights] if weights else []) + [None]:  # a checkpoint that will not load: the yaml
            try:
                costs[v] = model_cost(load_for_cost(source, cfg, settings["nc"]), settings["imgsz"], repeats)
                break
            except Exception as e:  # noqa: BLE001  (a cost that cannot be measured leaves its cells empty, said here)
                LOGGER.warning(f"WARNING: {v}: cost not measured from {source or cfg} ({type(e).__name__}: {e})")
    return costs


# ----------------------------------------------------------------------------------------- entry points
def run(command: str | None = None, **kwargs) -> list[dict]:
    """compare.run(data=..., weights=..., cfg=[...], seeds=3, epochs=10, imgsz=320) -> summary rows."""
    opt = parse_opt(argv=[], known=True)
    unknown = [k for k in kwargs if not hasattr(opt, k)]
    if unknown:
        raise TypeError(f"compare.run() got unknown options {unknown}")
    for k, v in kwargs.items():
        setattr(opt, k, [v] if k == "cfg" and isinstance(v, str) else v)
    variants, settings = check_inputs(opt)
    if opt.seeds == 1:
        LOGGER.warning("WARNING: --seeds 1: one run per variant gives no interval, so every verdict will be "
                       "'inconclusive'; use --seeds 3 or more to tell a gain from seed noise")
    save_dir, reused = study_dir(opt.project, opt.name, settings, opt.exist_ok)
    seeds = list(range(opt.seeds))
    settings.update(name=save_dir.name, seeds=seeds, cfgs=list(variants.values()), latency_repeats=opt.latency_repeats,
                    latency_threads=torch.get_num_threads(), command=command or "")
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / STUDY_FILE).write_text(yaml.safe_dump(settings, sort_keys=False))
    runs_dir = save_dir / "runs"
    jobs, finished = plan_jobs(variants, seeds, runs_dir, settings, {"--workers": opt.workers, "--device": opt.device})
    n_resume = sum(j.resume for j in jobs)
    LOGGER.info(f"{colorstr('compare:')} {save_dir}: {len(variants)} variants x {len(seeds)} seeds; "
                f"{len(finished)} finished runs reused, {n_resume} to resume, {len(jobs) - n_resume} to start "
                f"({opt.executor} executor)")
    if jobs:
        execute(jobs, opt, len(finished), len(variants) * len(seeds))
    records = [load_record(v, s, runs_dir / run_name(v, s), opt.epochs) for v in variants for s in seeds]
    write_runs_csv(save_dir / "runs.csv", records)
    rows = summarize(records, list(variants), measure_costs(variants, records, settings, opt.latency_repeats))
    write_summary_csv(save_dir / "summary.csv", rows)
    plot = plot_study(rows, records, save_dir / "summary.png")
    notes = [f"{r.variant} seed {r.seed} failed: {r.error} (log: {r.run_dir / 'train.log'})"
             for r in records if r.status == "failed"]
    if opt.seeds == 1:
        notes.append("one seed per variant: no interval can be given, every verdict is inconclusive")
    write_summary_md(save_dir / "summary.md", rows, settings, notes, plot.name if plot else "")
    LOGGER.info("\n" + markdown_table(rows) + "\n\n" + "\n".join(verdict_sentence(r) for r in rows))
    LOGGER.info(f"Results saved to {colorstr('bold', str(save_dir))}")
    return rows


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    opt = parse_opt(argv)
    try:
        return run(command=shlex.join(["python", "compare.py", *argv]), **vars(opt))
    except StudyError as e:
        LOGGER.error(f"compare: {e}")
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        LOGGER.warning("\ncompare: interrupted; run the same command again to reuse the finished runs and resume "
                       "the others from their last.pt")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
