"""Read a YOLOv5 dataset yaml, resolve its paths and validate it (check_dataset).

Accepted like YOLOv5: `path` (dataset root), `train`/`val`/`test` each a folder, a .txt list of images, or
a list of those (relative entries are relative to `path`); `names` a list or an {id: name} map; `nc`
optional but must agree with `names`. Extra keys: `generate: shapes` (+ optional `generate_args:`) renders
the synthetic set on first use; `hint:` is printed when the dataset cannot be found (nothing is downloaded).
A relative `path` is looked for from the working directory, beside the yaml, in the repo, then by its last part
in $YOLOV5_SHARED/datasets/, ../datasets/ and ../shared/datasets/ (read-only material shared between checkouts).
"""
import os
from pathlib import Path

import yaml

from utils.cli import InputError

ROOT = Path(__file__).resolve().parents[2]


def _find_yaml(data) -> Path:
    """The yaml as given, else under <repo>/data/ (so `--data coco128.yaml` works from anywhere)."""
    p = Path(data)
    tried = [p, ROOT / "data" / p.name]
    for cand in tried:
        if cand.is_file():
            return cand.resolve()
    raise FileNotFoundError(f"Dataset yaml '{data}' not found; looked at: {', '.join(str(t) for t in tried)}")


def _load_yaml(data) -> tuple[dict, Path | None]:
    if isinstance(data, dict):
        return dict(data), None
    file = _find_yaml(data)
    try:
        with open(file, errors="ignore") as f:
            d = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise InputError(f"{file}: not valid YAML ({e})") from e
    if not isinstance(d, dict):
        raise InputError(f"{file}: expected a mapping with 'train', 'val' and 'names', got {type(d).__name__}")
    return d, file


def _parse_names(d: dict, where: str) -> list[str]:
    names, nc = d.get("names"), d.get("nc")
    if names is None:
        if nc is None:
            raise InputError(f"{where}: needs 'names' (a list or an {{id: name}} map) or at least 'nc'")
        names = [f"class{i}" for i in range(int(nc))]
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError) as e:
            raise InputError(f"{where}: 'names' map keys must be integer class ids ({e})") from e
        if ids != list(range(len(ids))):
            raise InputError(f"{where}: 'names' ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        names = [names[k] if k in names else names[str(k)] for k in ids]
    if not isinstance(names, (list, tuple)) or not names:
        raise InputError(f"{where}: 'names' must be a non-empty list or {{id: name}} map")
    if nc is not None and int(nc) != len(names):
        raise InputError(f"{where}: nc={nc} disagrees with names ({len(names)} entries)")
    return [str(n) for n in names]


def _path_candidates(p: Path, yaml_file: Path | None) -> list[Path]:
    """Where a relative `path` may live, in YOLOv5's spirit (../datasets/<name> next to the repo)."""
    if p.is_absolute():
        return [p]
    cands = [Path.cwd() / p]
    if yaml_file is not None:
        cands.append(yaml_file.parent / p)
    shared = [Path(os.environ["YOLOV5_SHARED"])] if os.getenv("YOLOV5_SHARED") else []
    cands += [ROOT / p, *[d / "datasets" / p.name for d in shared], ROOT.parent / "datasets" / p.name,
              ROOT.parent / "shared" / "datasets" / p.name]
    seen, out = set(), []
    for c in cands:
        c = c.resolve()
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def _resolve_root(d: dict, yaml_file: Path | None, where: str) -> Path:
    if d.get("generate"):
        from utils.data.shapes import ensure_generated  # only needed for synthetic sets

        p = Path(d.get("path") or f"datasets/{d['generate']}")
        root = p if p.is_absolute() else ROOT / p
        ensure_generated(str(d["generate"]), root, **(d.get("generate_args") or {}))
        return root
    p = Path(d.get("path") or (yaml_file.parent if yaml_file else Path.cwd()))
    cands = _path_candidates(p, yaml_file)
    for c in cands:
        if c.is_dir():
            return c
    hint = f"\n{d['hint']}" if d.get("hint") else ""
    raise FileNotFoundError(f"{where}: dataset path '{p}' not found; looked in:\n  "
                            + "\n  ".join(str(c) for c in cands) + hint)


def _resolve_split(value, root: Path, split: str, where: str, hint: str):
    """Resolve one split entry (str or list) against the root and check each entry exists."""
    if value is None or value == "":
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    resolved = []
    for item in items:
        q = Path(str(item))
        q = q if q.is_absolute() else root / q
        if not q.exists():
            raise FileNotFoundError(f"{where}: '{split}' entry '{item}' not found at {q}{hint}")
        resolved.append(str(q))
    return resolved if isinstance(value, (list, tuple)) else resolved[0]


def check_dataset(data) -> dict:
    """Parse, resolve and validate a dataset yaml (path or dict); returns a new dict.

    Keys: 'path' (Path), 'train'/'val'/'test' (resolved str, list of str, or None), 'names' (list[str]),
    'nc' (int), 'yaml_file' (str or None), plus any other keys of the yaml unchanged.
    """
    d, yaml_file = _load_yaml(data)
    where = str(yaml_file) if yaml_file else "dataset dict"
    names = _parse_names(d, where)
    for split in ("train", "val"):
        if not d.get(split):
            raise InputError(f"{where}: missing '{split}' (a folder, a .txt list of images, or a list of them)")
    root = _resolve_root(d, yaml_file, where)
    hint = f"\n{d['hint']}" if d.get("hint") else ""
    out = dict(d)
    out.update(path=root, names=names, nc=len(names), yaml_file=str(yaml_file) if yaml_file else None)
    for split in ("train", "val", "test"):
        out[split] = _resolve_split(d.get(split), root, split, where, hint)
    return out


def dataset_names(data) -> list[str]:
    """Only the class names of a dataset yaml (detect.py --data): its image folders need not exist."""
    d, yaml_file = _load_yaml(data)
    return _parse_names(d, str(yaml_file) if yaml_file else "dataset dict")
