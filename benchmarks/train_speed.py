"""Training throughput: images/s of a training epoch and peak memory, fp32 and CPU bf16 autocast.

Setting as the reference measurement of official YOLOv5 v6.1 on this machine (6.0-6.5 s per epoch of
8 batches): yolov5n, --img 320, --batch-size 16, 2 workers, coco128, hyp.scratch-low (mosaic on), no
validation. Each mode runs in its own process (clean peak RSS); the first epoch is a warm-up (worker
start, caches) and the median of the remaining epochs is reported.

Usage:
    python benchmarks/train_speed.py                      # fp32 and bf16, 3 epochs each
    python benchmarks/train_speed.py --modes fp32 --epochs 4 --coco128 ../shared/datasets/coco128
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

OFFICIAL_EPOCH_S = (6.0, 6.5)  # official YOLOv5 v6.1, same setting, this machine


class _Done(Exception):
    """Raised after the last timed epoch so no final validation is run."""


def child(args) -> dict:
    """One mode in this process: time each training epoch through the epoch callbacks."""
    import torch
    import yaml

    import train
    from utils.callbacks import Callbacks

    data = yaml.safe_load((ROOT / "data" / "coco128.yaml").read_text())
    data["path"] = str(Path(args.coco128).resolve())
    times, cpu, starts = [], [], {}
    cb = Callbacks()
    cb.register_action("on_train_epoch_start", lambda e: starts.__setitem__(e, (time.perf_counter(), time.process_time())))

    def end(e):
        times.append(time.perf_counter() - starts[e][0])
        cpu.append(time.process_time() - starts[e][1])  # main process only: load-independent compute
        if len(times) == args.epochs + 1:  # warm-up epoch + the timed ones
            raise _Done
    cb.register_action("on_train_epoch_end", end)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            train.run(callbacks=cb, data=data, cfg=args.cfg, weights="", imgsz=args.imgsz, batch_size=args.batch,
                      workers=args.workers, epochs=args.epochs + 2, noval=True, nosave=True, noplots=True,
                      noautoanchor=True, bf16=args.mode == "bf16", project=tmp, name="bench", device="cpu")
        except _Done:
            pass
    n_img = 128
    timed = times[1:] if len(times) > 1 else times
    epoch_s = statistics.median(timed)
    cpu_s = statistics.median(cpu[1:] if len(cpu) > 1 else cpu)
    return {"mode": args.mode, "threads": torch.get_num_threads(), "epoch_s": epoch_s, "cpu_s": cpu_s, "epochs_s": times, "img_per_s": n_img / epoch_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    p.add_argument("--cfg", default="yolov5n.yaml")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--coco128", default=str(ROOT.parent / "shared" / "datasets" / "coco128"))
    p.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one mode in this process
    args = p.parse_args(argv)
    if args.mode:
        print("RESULT " + json.dumps(child(args)))
        return None
    if not (Path(args.coco128) / "images" / "train2017").is_dir():
        sys.exit(f"coco128 not found at {args.coco128} (pass --coco128)")
    rows = []
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--mode", mode, *[f"--{k}={v}" for k, v in
               dict(epochs=args.epochs, cfg=args.cfg, imgsz=args.imgsz, batch=args.batch, workers=args.workers,
                    coco128=args.coco128).items()]]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ))
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not line:
            sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(line[-1][7:]))
    load = os.getloadavg()
    print(f"\n{args.cfg} train epoch, coco128 (128 images), --img {args.imgsz} --batch {args.batch} "
          f"--workers {args.workers}, no val; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"{'mode':>6} {'threads':>7} {'main CPU s':>10} {'epoch s':>9} {'img/s':>8} {'vs official':>12} {'peak RSS MB':>12} {'workers MB':>11}  epochs")
    ref = sum(OFFICIAL_EPOCH_S) / 2
    for r in rows:
        print(f"{r['mode']:>6} {r['threads']:>7} {r['cpu_s']:10.2f} {r['epoch_s']:9.2f} {r['img_per_s']:8.1f} {ref / r['epoch_s']:11.2f}x "
              f"{r['peak_rss_mb']:12.0f} {r['workers_peak_rss_mb']:11.0f}  " + " ".join(f"{t:.2f}" for t in r["epochs_s"]))
    return rows


if __name__ == "__main__":
    main()
