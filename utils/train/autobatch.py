"""AutoBatch (`--batch-size -1`): the largest training batch that fits a fraction of the free GPU memory.

As YOLOv5's: the training step (forward + backward, under the run's autocast) is profiled at a few batch sizes,
memory is fitted as a straight line over the batch size, and the batch whose predicted memory is `fraction`
of what was free is used. Unlike YOLOv5 the measure is the peak the step reserves above what was reserved
before it (not the cache left after it), and free memory is the driver's figure, which counts other processes.
On CPU there is nothing to measure against: the default batch is used, with a message.
"""
from __future__ import annotations

from copy import deepcopy
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from utils.log import LOGGER, colorstr

AUTO = -1  # --batch-size -1
PROFILE_SIZES = (1, 2, 4, 8, 16)
PREFIX = colorstr("AutoBatch: ")
GIB = 1 << 30


def fit_batch_size(measured: dict[int, float | None], free: float, fraction: float, default: int,
                   largest: int = 1024) -> tuple[int, str]:
    """Batch size for `fraction` of `free` bytes from {batch: bytes the step needs, None where it ran out of
    memory}: a least-squares line through the measured points, capped below the first size that failed.
    Returns (batch, '' or why the default was used instead)."""
    ok = sorted(b for b, m in measured.items() if m is not None)
    if len(ok) < 2:
        return default, f"only {len(ok)} batch size(s) could be profiled"
    slope, intercept = np.polyfit(ok, [measured[b] for b in ok], deg=1)
    if not slope > 0:
        return default, f"memory did not grow with the batch size (slope {slope:.3g} bytes/image)"
    batch = int(np.floor((free * fraction - intercept) / slope + 1e-6))  # the fit's rounding: 61.9999... is 62
    failed = sorted(b for b, m in measured.items() if m is None)
    if failed and batch >= failed[0]:  # the line is too optimistic where the GPU already ran out
        batch = max(b for b in ok if b < failed[0]) if any(b < failed[0] for b in ok) else 1
    if not 1 <= batch <= largest:
        return default, f"the fit gave batch {batch}, outside 1..{largest}"
    return batch, ""


def _training_step_memory(model: nn.Module, imgsz: int, device: torch.device, amp: bool) -> Callable:
    """measure(batch) -> bytes one forward+backward of `model` at that batch reserves above the start (None:
    out of memory)."""
    def measure(batch: int) -> float | None:
        torch.cuda.empty_cache()
        base = torch.cuda.memory_reserved(device)
        torch.cuda.reset_peak_memory_stats(device)
        x = out = loss = None
        try:
            x = torch.zeros(batch, 3, imgsz, imgsz, device=device)
            with torch.autocast("cuda", enabled=amp):
                out = model(x)
                loss = sum(o.float().sum() for o in (out if isinstance(out, (list, tuple)) else [out]))
            loss.backward()
            return float(torch.cuda.max_memory_reserved(device) - base)
        except torch.cuda.OutOfMemoryError:
            return None
        finally:
            model.zero_grad(set_to_none=True)
            del x, out, loss
            torch.cuda.empty_cache()
    return measure


def _free_memory(device: torch.device) -> tuple[float, float]:
    free, total = torch.cuda.mem_get_info(device)
    return float(free), float(total)


def autobatch(model: nn.Module, imgsz: int, device: torch.device, fraction: float = 0.8, default: int = 16,
              amp: bool = True, measure: Callable | None = None, free_memory: Callable | None = None) -> int:
    """The training batch for `model` at `imgsz` on `device` (see the module docstring). `measure(batch)` and
    `free_memory() -> (free, total)` default to the CUDA device's; tests pass their own."""
    if device.type != "cuda" and measure is None:
        LOGGER.info(f"{PREFIX}--batch-size -1 needs a CUDA device to measure; using batch size {default} on "
                    f"{device.type.upper()}")
        return default
    LOGGER.info(f"{PREFIX}Computing the largest batch size for --imgsz {imgsz} in {fraction:.0%} of free memory")
    free, total = (free_memory or (lambda: _free_memory(device)))()
    if measure is None:
        probe = deepcopy(model).train()  # its BatchNorm statistics and gradients are thrown away afterwards
        measure = _training_step_memory(probe, imgsz, device, amp)
    measured = {}
    for b in PROFILE_SIZES:
        measured[b] = measure(b)
        if measured[b] is None:
            break  # larger ones fail too
    batch, why = fit_batch_size(measured, free, fraction, default)
    if why:
        LOGGER.warning(f"{PREFIX}WARNING: {why}; using batch size {default}")
        return batch
    LOGGER.info(f"{PREFIX}Using batch size {batch}: {free / GIB:.2f}G of {total / GIB:.2f}G free, "
                f"profiled at batch {', '.join(str(b) for b in measured)}")
    return batch
