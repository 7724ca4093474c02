"""End-to-end speed of val.py: wall time of the whole command, images per second, and its own
pre-process / inference / NMS split, plus the metrics it printed (so speed never hides a mAP change).

Usage:
    python benchmarks/val_speed.py --weights ../shared/weights/yolov5n.pt --data data/coco128.yaml
    python benchmarks/val_speed.py --runs 3 --img 320 -- --device cpu      # args after -- go to val.py

The machine's load average is printed before and after each run: on a shared machine the figures
are only comparable between runs taken under similar load.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEED = re.compile(r"Speed: ([\d.]+)ms pre-process, ([\d.]+)ms inference, ([\d.]+)ms NMS per image")
ALL_ROW = re.compile(r"^\s*all\s+(\d+)\s+(\d+)\s+([\d.e-]+)\s+([\d.e-]+)\s+([\d.e-]+)\s+([\d.e-]+)", re.M)


def one_run(cmd: list[str]) -> dict:
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    if proc.returncode:
        raise RuntimeError(f"val.py failed ({proc.returncode}):\n{text[-3000:]}")
    speed, row = SPEED.search(text), ALL_ROW.search(text)
    if not (speed and row):
        raise RuntimeError(f"could not find the Speed line or the 'all' row in val.py's output:\n{text[-3000:]}")
    images = int(row.group(1))
    return dict(wall=wall, images=images, ips=images / wall, split=tuple(float(x) for x in speed.groups()),
                metrics=tuple(float(x) for x in row.groups()[2:]), load=(load_before, os.getloadavg()[0]))


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(ROOT.parent / "shared" / "weights" / "yolov5n.pt"))
    p.add_argument("--data", default=str(ROOT / "data" / "coco128.yaml"))
    p.add_argument("--img", type=int, default=640)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--runs", type=int, default=1, help="repeat and report each run and the fastest")
    p.add_argument("--project", default="/tmp/val_speed_runs", help="where val.py writes its run folders")
    opt = p.parse_args(argv)
    cmd = [sys.executable, str(ROOT / "val.py"), "--weights", opt.weights, "--data", opt.data, "--img", str(opt.img),
           "--batch", str(opt.batch), "--project", opt.project, *extra]
    print("command:", " ".join(cmd))
    results = []
    for i in range(opt.runs):
        r = one_run(cmd)
        results.append(r)
        print(f"run {i + 1}: {r['wall']:.1f} s end to end, {r['ips']:.2f} images/s; per image "
              f"{r['split'][0]:.1f} ms pre-process, {r['split'][1]:.1f} ms inference, {r['split'][2]:.1f} ms NMS; "
              f"P {r['metrics'][0]:.3g} R {r['metrics'][1]:.3g} mAP50 {r['metrics'][2]:.3g} "
              f"mAP50-95 {r['metrics'][3]:.3g}; load average {r['load'][0]:.1f} -> {r['load'][1]:.1f}")
    best = min(results, key=lambda r: r["wall"])
    print(f"fastest: {best['wall']:.1f} s ({best['ips']:.2f} images/s) on {os.cpu_count()} CPU cores")
    return results


if __name__ == "__main__":
    main()
