"""Images per second of the training loader (mosaic on, the hyp's augmentation) at one or more sizes.

    python benchmarks/dataloader.py --path ../shared/datasets/coco128/images/train2017 --imgsz 640 320 --workers 2

Counts images delivered to the main process after a warm-up (the workers start and every image is read
once, so the OS file cache is warm), over several epochs of persistent workers. Prints a markdown table.
"""
import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from utils.dataset_yaml import check_dataset  # noqa: E402
from utils.loader import create_dataloader  # noqa: E402


def measure(path, imgsz, batch, workers, hyp, epochs, seconds):
    loader, dataset = create_dataloader(path, imgsz, batch, 32, hyp=hyp, augment=True, workers=workers,
                                        shuffle=True, prefix="bench: ")
    for _ in loader:  # warm-up epoch: start workers, fill the page cache
        pass
    n, t0 = 0, time.perf_counter()
    for e in range(epochs):
        for imgs, *_ in loader:
            n += imgs.shape[0]
        if time.perf_counter() - t0 > seconds:
            break
    dt = time.perf_counter() - t0
    return n / dt, n, dt, loader.num_workers


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
        ips, n, dt, nw = measure(path, s, opt.batch, opt.workers, hyp, opt.epochs, opt.seconds)
        rows.append(f"| {s} | {opt.batch} | {nw} | {n} | {dt:.2f} | {ips:.1f} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nDataloader throughput, mosaic on ({Path(opt.hyp).name}), {path}")
    print(f"(cpu_count={os.cpu_count()}, 1-min load average at the end {load:.2f})\n")
    print("| imgsz | batch | workers | images | seconds | img/s |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
