"""Training inputs checked up front, each failing with one line that names the flag or file and the fix,
instead of deep inside the data loader or the optimizer step."""
from __future__ import annotations

import torch

from utils.checkpoint import CheckpointError
from utils.cli import InputError


def check_batch_size(batch_size, world_size: int = 1) -> int:
    """--batch-size: a positive total over all processes, divisible by the process count; or -1 (AutoBatch,
    utils/train/autobatch.py), for a single process."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise InputError(f"--batch-size {batch_size!r}: must be a whole number of images, such as 16")
    if batch_size == -1:
        if world_size > 1:
            raise InputError(f"--batch-size -1 (AutoBatch) works in a single process, not with {world_size} "
                             "training processes; pass a total batch size such as 16")
        return batch_size
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1 image, such as 16")
    if batch_size % world_size:
        raise InputError(f"--batch-size {batch_size} must be a multiple of the {world_size} training processes")
    return batch_size


def _state_mismatch(optimizer: torch.optim.Optimizer, saved: dict) -> str:
    """'' when `saved` (an optimizer.state_dict()) fits `optimizer`, else what does not fit."""
    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list) \
            or not isinstance(saved.get("state"), dict):
        return "it is not an optimizer state (no 'state' and 'param_groups')"
    groups = optimizer.param_groups
    if len(saved["param_groups"]) != len(groups):
        return f"{len(saved['param_groups'])} parameter groups saved, {len(groups)} in this run"
    params = {}
    for i, (sg, g) in enumerate(zip(saved["param_groups"], groups)):
        if not isinstance(sg, dict) or not isinstance(sg.get("params"), list):
            return f"parameter group {i} is malformed"
        if len(sg["params"]) != len(g["params"]):
            return f"parameter group {i} has {len(sg['params'])} parameters saved, {len(g['params'])} in this run"
        if ("betas" in sg) != ("betas" in g):  # Adam/AdamW keep betas, SGD does not
            return f"it was saved by {'Adam/AdamW' if 'betas' in sg else 'SGD'}, this run uses {type(optimizer).__name__}"
        params.update(zip(sg["params"], g["params"]))
    for pid, state in saved["state"].items():
        if pid not in params:
            return f"state for parameter {pid!r}, which no saved group lists"
        p = params[pid]
        for name, v in (state.items() if isinstance(state, dict) else ()):
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                return f"'{name}' of parameter {pid} has shape {tuple(v.shape)}, the parameter {tuple(p.shape)}"
    return ""


def check_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict, source: str) -> dict:
    """`saved` if optimizer.load_state_dict(saved) can take it and step afterwards; else CheckpointError naming
    the file (load_state_dict itself only compares group sizes, and SGD then crashes in its first step)."""
    why = _state_mismatch(optimizer, saved)
    if why:
        raise CheckpointError(f"{source}: its optimizer state does not fit this run's optimizer ({why}); it was "
                              f"saved with another model or --optimizer. Resume with the run's own options, or start "
                              f"a new run with --weights {source}")
    return saved
