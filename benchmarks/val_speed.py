"""End-to-end speed of val.py: wall time of the whole command, images per second, and its own
pre-process / inference / NMS split, plus the metrics it printed (so speed never hides a mAP change).

Usage:
    python benchmarks/val_speed.py --weights ../shared/weights/yolov5n.pt --data data/coco128.yaml
    python benchmarks/val_speed.py --runs 3 --img 320 -- --device cpu      # args after -- go to val.py
    python benchmarks/val_speed.py --runs 3 --official ../yolov5-v7.0      # side by side, alternating
    python benchmarks/val_speed.py --runs 3 --bf16 --official ../yolov5-v7.0   # + ours with --bf16 (CPU autocast)

The speed of this 2-core VM drifts by +-20% within minutes, so the official figure quoted in issue 6
is no reference for a run on another day. --official runs an official YOLOv5 checkout's val.py
(through benchmarks/official_yolov5.py) on a private copy of the dataset, alternating with ours run
by run, and the ratio of the medians is printed. The load average is printed with each run.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
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
    p.add_argument("--official", nargs="*", default=[], help="official YOLOv5 checkouts to time side by side")
    p.add_argument("--bf16", action="store_true", help="also time ours with val.py --bf16 (CPU autocast)")
    opt = p.parse_args(argv)
    args = ["--weights", opt.weights, "--img", str(opt.img), "--batch", str(opt.batch), "--project", opt.project, *extra]
    commands = {"ours": [sys.executable, str(ROOT / "val.py"), "--data", opt.data, *args]}
    if opt.bf16:
        commands["ours-bf16"] = [*commands["ours"], "--bf16"]
    with tempfile.TemporaryDirectory() as tmp:
        if opt.official:
            data = private_dataset_copy(opt.data, Path(tmp))
            for repo in opt.official:
                commands[Path(repo).name] = [sys.executable, str(ROOT / "benchmarks" / "official_yolov5.py"),
                                             "--repo", str(Path(repo).resolve()), "val.py", "--data", str(data), *args]
        for name, cmd in commands.items():
            print(f"{name}: {' '.join(cmd)}")
        results = {name: [] for name in commands}
        for i in range(opt.runs):
            for name, cmd in commands.items():
                r = one_run(cmd)
                results[name].append(r)
                print(f"run {i + 1} {name}: {r['wall']:.1f} s end to end, {r['ips']:.2f} images/s; per image "
                      f"{r['split'][0]:.1f} ms pre-process, {r['split'][1]:.1f} ms inference, {r['split'][2]:.1f} ms "
                      f"NMS; P {r['metrics'][0]:.4g} R {r['metrics'][1]:.4g} mAP50 {r['metrics'][2]:.4g} mAP50-95 "
                      f"{r['metrics'][3]:.4g}; load average {r['load'][0]:.1f} -> {r['load'][1]:.1f}", flush=True)
    medians = {name: statistics.median(r["wall"] for r in rs) for name, rs in results.items()}
    print(f"\nmedian end to end over {opt.runs} run(s) on {os.cpu_count()} CPU cores:")
    for name, wall in medians.items():
        ratios = "".join(f", {medians[ref] / wall:.2f}x vs {ref}" for ref in medians if not ref.startswith("ours") and name.startswith("ours"))
        print(f"  {name:>12}: {wall:5.1f} s ({results[name][0]['images'] / wall:.2f} images/s){ratios}")
    return results


def private_dataset_copy(data_yaml: str, tmp: Path) -> Path:
    """The dataset yaml with its root copied under tmp: official code writes label caches beside the labels."""
    from benchmarks.official_yolov5 import copy_dataset
    from utils.data.dataset_yaml import check_dataset
    data = check_dataset(data_yaml)
    root = Path(data["path"])
    copy = copy_dataset(root, tmp)
    out = {k: data[k] for k in ("train", "val", "nc", "names") if k in data}
    for split in ("train", "val"):
        out[split] = str(copy / Path(out[split]).relative_to(root))
    path = tmp / "data.yaml"
    path.write_text(yaml.safe_dump(out))
    return path


if __name__ == "__main__":
    main()
