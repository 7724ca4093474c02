"""Training throughput: images/s of a training epoch and peak memory, fp32 and CPU bf16 autocast,
optionally side by side with an official YOLOv5 checkout.

Setting of issue 5: yolov5n, --img 320, --batch-size 16, 2 workers, coco128, hyp.scratch-low
(mosaic on), no validation, no autoanchor. Each mode runs in its own process (clean peak RSS). An
epoch is timed from the end of the previous one to its own end (the only hooks v6.1 offers), the
first epoch is a warm-up (worker start, caches) and the median of the others is reported.

The speed of this 2-core VM drifts by +-20% within minutes, so a figure measured another day is no
reference. With --official the official code (see benchmarks/official_yolov5.py) runs in the same
invocation, and with --rounds > 1 all modes alternate round by round; the ratio column compares
medians taken side by side. Without --official the ratio is to the 6.0-6.5 s quoted in the issue.

Usage:
    python benchmarks/train_speed.py                      # fp32 and bf16, 3 timed epochs each
    python benchmarks/train_speed.py --official ../yolov5-v6.1 ../yolov5-v7.0 --rounds 2
Do not run it next to other heavy jobs: on 2 shared cores the figures then measure the load, not the code.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.official_yolov5 import copy_dataset, enter  # noqa: E402

QUOTED_EPOCH_S = (6.0, 6.5)  # issue 5: official YOLOv5 on this machine, same setting


class _Done(Exception):
    """Raised after the last timed epoch so no final validation is run."""


class EpochClock:
    """Wall and main-process CPU seconds between consecutive epoch ends; stops training when enough."""

    def __init__(self, wanted: int):
        self.wanted, self.wall, self.cpu = wanted, [], []
        self.last = (time.perf_counter(), time.process_time())

    def start(self, *args, **kwargs):  # the clock of the first epoch starts when training starts
        self.last = (time.perf_counter(), time.process_time())

    def end(self, *args, **kwargs):
        now = (time.perf_counter(), time.process_time())
        self.wall.append(now[0] - self.last[0])
        self.cpu.append(now[1] - self.last[1])
        self.last = now
        if len(self.wall) == self.wanted:
            raise _Done


def data_dict(coco128: Path) -> dict:
    import yaml
    data = yaml.safe_load((ROOT / "data" / "coco128.yaml").read_text())
    data["path"] = str(coco128.resolve())
    return data


def run_ours(args, clock: EpochClock, tmp: str) -> None:
    import train
    from utils.callbacks import Callbacks
    cb = Callbacks()
    cb.register_action("on_train_start", callback=clock.start)
    cb.register_action("on_train_epoch_end", callback=clock.end)
    train.run(callbacks=cb, data=data_dict(Path(args.coco128)), cfg=args.cfg, weights="", imgsz=args.imgsz,
              batch_size=args.batch, workers=args.workers, epochs=args.epochs + 2, noval=True, nosave=True,
              noplots=True, noautoanchor=True, bf16=args.mode == "bf16", project=tmp, name="bench", device="cpu")


def run_official(args, clock: EpochClock, tmp: str) -> None:
    """The official train.py of the checkout in --repo, same flags, timed by its own epoch-end hook."""
    import yaml

    repo = enter(args.repo)
    data = Path(tmp) / "coco128.yaml"
    data.write_text(yaml.safe_dump(data_dict(Path(args.coco128))))
    sys.argv = [str(repo / "train.py")]
    import train as official
    from utils.callbacks import Callbacks
    opt = official.parse_opt(True)
    for k, v in dict(data=str(data), cfg=str(repo / "models" / args.cfg), weights="", imgsz=args.imgsz,
                     batch_size=args.batch, workers=args.workers, epochs=args.epochs + 2, noval=True, nosave=True,
                     noautoanchor=True, project=tmp, name="bench", device="cpu", noplots=True).items():
        setattr(opt, k, v)
    cb = Callbacks()
    cb.register_action("on_pretrain_routine_end", callback=clock.start)
    cb.register_action("on_train_epoch_end", callback=clock.end)
    official.main(opt, cb)


def child(args) -> dict:
    """One mode in this process."""
    import torch
    clock = EpochClock(args.epochs + 1)  # warm-up epoch + the timed ones
    with tempfile.TemporaryDirectory() as tmp:
        try:
            (run_official if args.mode == "official" else run_ours)(args, clock, tmp)
        except _Done:
            pass
    timed = clock.wall[1:] or clock.wall
    epoch_s = statistics.median(timed)
    return {"mode": args.mode, "repo": args.repo, "threads": torch.get_num_threads(), "epoch_s": epoch_s,
            "cpu_s": statistics.median(clock.cpu[1:] or clock.cpu), "epochs_s": clock.wall, "img_per_s": 128 / epoch_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def launch(args, mode: str, repo: str, coco128: Path) -> dict:
    cmd = [sys.executable, __file__, "--mode", mode, "--repo", repo, *[f"--{k}={v}" for k, v in
           dict(epochs=args.epochs, cfg=args.cfg, imgsz=args.imgsz, batch=args.batch, workers=args.workers,
                coco128=coco128).items()]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not line:
        sys.exit(f"{mode} {repo} run failed:\n{out.stderr[-3000:]}")
    return json.loads(line[-1][7:])


def label(row: dict) -> str:
    return row["mode"] if row["mode"] != "official" else Path(row["repo"]).name


def print_table(args, rows: list[dict]) -> None:
    """One line per run, then per mode the median over rounds with its ratio to each reference."""
    load = os.getloadavg()
    print(f"\n{args.cfg} train epoch, coco128 (128 images), --img {args.imgsz} --batch {args.batch} "
          f"--workers {args.workers}, no val; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"{'run':>16} {'main CPU s':>10} {'epoch s':>8} {'img/s':>7} {'peak RSS MB':>12} {'workers MB':>11}  "
          f"epochs (first = warm-up)")
    for r in rows:
        print(f"{label(r):>16} {r['cpu_s']:10.2f} {r['epoch_s']:8.2f} {r['img_per_s']:7.1f} {r['peak_rss_mb']:12.0f} "
              f"{r['workers_peak_rss_mb']:11.0f}  " + " ".join(f"{t:.2f}" for t in r["epochs_s"]))
    medians = {}
    for r in rows:
        medians.setdefault(label(r), []).append(r["epoch_s"])
    medians = {k: statistics.median(v) for k, v in medians.items()}
    refs = {k: v for k, v in medians.items() if k not in ("fp32", "bf16")}
    if not refs:
        refs = {"quoted 6.0-6.5 s": sum(QUOTED_EPOCH_S) / 2}
    print(f"\nmedian epoch over {args.rounds} round(s); speed-up = reference epoch / this epoch")
    print(f"{'run':>16} {'epoch s':>8} {'img/s':>7}" + "".join(f" {'vs ' + k:>20}" for k in refs))
    for name, ep in medians.items():
        print(f"{name:>16} {ep:8.2f} {128 / ep:7.1f}" + "".join(f" {ref / ep:19.2f}x" for ref in refs.values()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--official", nargs="*", default=[], help="official YOLOv5 checkouts to time side by side")
    p.add_argument("--rounds", type=int, default=1, help="alternate all modes this many times")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    p.add_argument("--cfg", default="yolov5n.yaml")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--coco128", default=str(ROOT.parent / "shared" / "datasets" / "coco128"))
    p.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one mode in this process
    p.add_argument("--repo", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mode:
        print("RESULT " + json.dumps(child(args)))
        return None
    if not (Path(args.coco128) / "images" / "train2017").is_dir():
        sys.exit(f"coco128 not found at {args.coco128} (pass --coco128)")
    runs = [(m, "") for m in args.modes] + [("official", str(Path(r).resolve())) for r in args.official]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        coco128 = copy_dataset(args.coco128, Path(tmp))  # every mode reads the same files
        for _ in range(args.rounds):
            for mode, repo in runs:
                rows.append(launch(args, mode, repo, coco128))
                print(f"{mode} {Path(repo).name}: {rows[-1]['epoch_s']:.2f} s/epoch", flush=True)
    print_table(args, rows)
    return rows


if __name__ == "__main__":
    main()
