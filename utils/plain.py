"""Plain data: what a weights-only checkpoint (and a yaml) can hold, converted from what the code uses."""
from __future__ import annotations

import argparse
import dataclasses
import types
from pathlib import PurePath
from typing import Callable

import numpy as np
import torch


def to_plain(obj, where: str = "checkpoint", unknown: Callable | None = None):
    """Convert to what `torch.load(weights_only=True)` accepts. Anything else goes through `unknown(obj)` when
    given (e.g. a stand-in's description), else is a TypeError naming its place."""
    if isinstance(obj, np.generic):  # first: np.float64 is also a float, and would pickle as a numpy global
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj).copy()) if obj.dtype != object else to_plain(obj.tolist(), where, unknown)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    if isinstance(obj, (argparse.Namespace, types.SimpleNamespace)):
        obj = vars(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {to_plain(k, where, unknown): to_plain(v, f"{where}[{k!r}]", unknown) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_plain(v, f"{where}[{i}]", unknown) for i, v in enumerate(obj))
    if isinstance(obj, (list, set, frozenset)):
        return [to_plain(v, f"{where}[{i}]", unknown) for i, v in enumerate(obj)]
    if unknown is not None:
        return unknown(obj)
    raise TypeError(f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot go in a weights-only "
                    f"checkpoint; convert it to plain data first")
