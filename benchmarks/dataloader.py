"""Images per second of the training loader (mosaic on, the hyp's augmentation) at one or more sizes.

    python benchmarks/dataloader.py --path ../shared/datasets/coco128/images/train2017 --imgsz 640 320 --workers 2

Counts images delivered to the main process after a warm-up (the workers start and every image is read
once, so the OS file cache is warm), over several epochs of persistent workers. Prints a markdown table.
Also prints images per CPU-second (all loader processes together) and what that gives on min(workers,
cores) idle cores: on a machine shared with other jobs, wall-clock img/s only measures the load.
"""
import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from utils.data.dataset_yaml import check_dataset  # noqa: E402
from utils.data.loader import create_dataloader  # noqa: E402


def cpu_seconds(pids):
    """User+system CPU time of processes (Linux /proc); NaN where unavailable."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")
    return total


def measure(path, imgsz, batch, workers, hyp, epochs, seconds):
    loader, dataset = create_dataloader(path, imgsz, batch, 32, hyp=hyp, augment=True, workers=workers,
                                        shuffle=True, prefix="bench: ")
    for _ in loader:  # warm-up epoch: start workers, fill the page cache
        pass
    pids = [os.getpid()] + [w.pid for w in loader._iterator._workers] if loader.num_workers else [os.getpid()]
    n, t0, c0 = 0, time.perf_counter(), cpu_seconds(pids)
    for e in range(epochs):
        for imgs, *_ in loader:
            n += imgs.shape[0]
        if time.perf_counter() - t0 > seconds:
            break
    dt, cpu = time.perf_counter() - t0, cpu_seconds(pids) - c0
    return n / dt, n, dt, loader.num_workers, n / cpu


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="", help="dataset yaml (its train split is used)")
    p.add_argument("--path", default=str(ROOT.parent / "shared" / "datasets" / "coco128" / "images" / "train2017"))
    p.add_argument("--imgsz", type=int, nargs="+", default=[640, 320])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--hyp", default=str(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"))
    p.add_argument("--epochs", type=int, default=5, help="timed epochs (at most)")
    p.add_argument("--seconds", type=float, default=20, help="stop after the epoch that passes this time")
    opt = p.parse_args()
    path = check_dataset(opt.data)["train"] if opt.data else opt.path
    hyp = yaml.safe_load(Path(opt.hyp).read_text())
    rows = []
    for s in opt.imgsz:
        ips, n, dt, nw, per_cpu_s = measure(path, s, opt.batch, opt.workers, hyp, opt.epochs, opt.seconds)
        bound = per_cpu_s * min(max(nw, 1), os.cpu_count() or 1)
        rows.append(f"| {s} | {opt.batch} | {nw} | {n} | {dt:.2f} | {ips:.1f} | {per_cpu_s:.1f} | {bound:.0f} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nDataloader throughput, mosaic on ({Path(opt.hyp).name}), {path}")
    print(f"(cpu_count={os.cpu_count()}, 1-min load average at the end {load:.2f})\n")
    print("| imgsz | batch | workers | images | seconds | img/s | img per CPU-s | img/s if idle cores |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
