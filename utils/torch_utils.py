"""Small torch helpers: conv+BN fusion, YOLOv5's weight init, image scaling for TTA, devices, seeds,
the channels-last probe."""
from __future__ import annotations

import math
import random
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.cli import InputError
from utils.log import LOGGER


def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Fold an inference-mode BatchNorm into the preceding conv (returns a new conv with bias)."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).requires_grad_(False).to(conv.weight.device)
    scale = bn.weight.div(torch.sqrt(bn.running_var + bn.eps))
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


IN_PLACE_ACTIVATIONS = (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU)


def initialize_weights(modules) -> None:
    """YOLOv5's init: BN eps 1e-3 / momentum 0.03, in-place activations (conv weights keep torch's init)."""
    for m in modules:
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
            m.momentum = 0.03
        elif isinstance(m, IN_PLACE_ACTIVATIONS):
            m.inplace = True


def out_of_place_activations(model: nn.Module) -> None:
    """For training: autograd must keep an in-place activation's input, so it copies it first; out of
    place the input is kept as it is. Same memory, one pass over each activation less (~3% of a CPU
    step). initialize_weights() makes them in place, which is what inference wants."""
    for m in model.modules():
        if isinstance(m, IN_PLACE_ACTIVATIONS):
            m.inplace = False


def scale_img(img: torch.Tensor, ratio: float = 1.0, same_shape: bool = False, gs: int = 32) -> torch.Tensor:
    """Resize a (B,C,H,W) batch by `ratio` and pad to a multiple of gs (test-time augmentation)."""
    if ratio == 1.0:
        return img
    h, w = img.shape[2:]
    s = (int(h * ratio), int(w * ratio))
    img = F.interpolate(img, size=s, mode="bilinear", align_corners=False)
    if not same_shape:
        h, w = (math.ceil(x * ratio / gs) * gs for x in (h, w))
    return F.pad(img, [0, w - s[1], 0, h - s[0]], value=0.447)


def select_device(device: str | int | torch.device = "", batch_size: int = 0) -> torch.device:
    """'' -> cuda:0 if available else cpu; 'cpu'; '0' or '0,1' (CUDA indices); a clear error otherwise."""
    if isinstance(device, torch.device):
        return device
    spec = str(device).strip().lower().replace("cuda:", "")
    if spec == "cpu":
        return torch.device("cpu")
    if spec in ("", "none"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        raise InputError(f"--device {device!r} asks for CUDA but no CUDA device is available; use --device cpu")
    ids = [int(x) for x in spec.split(",") if x != ""]
    bad = [i for i in ids if i >= torch.cuda.device_count()]
    if bad:
        raise InputError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    if len(ids) > 1 and batch_size and batch_size % len(ids):
        raise InputError(f"--batch-size {batch_size} is not a multiple of the {len(ids)} devices")
    return torch.device(f"cuda:{ids[0]}")


def derive_seed(*parts: int) -> int:
    """One 32-bit seed from (purpose, run seed, epoch, rank or index, ...), the project's one way to make
    seeds: well mixed (nearby inputs give unrelated seeds) and a function of its parts alone, so what an
    epoch or an item draws never depends on what ran before it (a resumed run draws what an uninterrupted
    one would). Trailing zeros do not change the result, so callers lead with a purpose tag."""
    return derive_seeds(*parts, n=1)[0]


def derive_seeds(*parts: int, n: int) -> list[int]:
    """n independent seeds from the same parts; the first is derive_seed(*parts)."""
    return [int(s) for s in np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(n)]


def seed_rngs(seed: int) -> None:
    """Seed Python's random, numpy's global generator and torch's (all devices) from one seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def de_parallel(model: nn.Module) -> nn.Module:
    """The bare model behind DataParallel / DistributedDataParallel."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def check_img_size(imgsz, stride: int = 32, floor: int = 0):
    """Round an image size (int or [h, w]) up to a multiple of the model stride, saying so when it changes."""
    def fit(x: int) -> int:
        if int(x) < 1:
            raise InputError(f"--imgsz {imgsz}: image sizes must be positive, such as --imgsz 640")
        return max(math.ceil(int(x) / stride) * stride, floor)

    new = fit(imgsz) if isinstance(imgsz, int) else [fit(x) for x in imgsz]
    if new != imgsz:
        LOGGER.warning(f"WARNING: --img-size {imgsz} must be a multiple of max stride {stride}, updating to {new}")
    return new


@contextmanager
def cpu_threads(n: int, device: torch.device):
    """Run a block with n CPU threads (then restore). NMS and matching are many small ops: on CPU one
    thread does them as fast as two on an idle machine and ~8x faster on a busy one, where every
    parallel op waits for a descheduled worker thread."""
    if device.type != "cpu" or torch.get_num_threads() <= n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def try_channels_last(model: nn.Module, probe: torch.Tensor) -> bool:
    """Switch `model` to channels-last (NHWC) memory order if it runs `probe` that way, else leave it NCHW.

    NHWC convolutions run ~25-30% faster on CPU (oneDNN), but a block that .view()s flattened spatial dims
    cannot take NHWC activations; the probe finds out before any real batch does. The model's train/eval
    mode is kept."""
    model.to(memory_format=torch.channels_last)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(probe.contiguous(memory_format=torch.channels_last))
        return True
    except RuntimeError as e:
        LOGGER.info(f"channels_last not used ({type(e).__name__}: {str(e)[:80]}); using NCHW")
        model.to(memory_format=torch.contiguous_format)
        return False
    finally:
        model.train(was_training)


def autocast_for(device: torch.device, bf16: bool = False, cuda_amp: bool = False):
    """The autocast context of a run, one rule for train/val/detect: fp16 AMP on CUDA when cuda_amp (training on
    a GPU, as YOLOv5), bfloat16 on CPU when bf16 (--bf16), else a disabled context (fp32 or the model's dtype)."""
    if cuda_amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(bf16) and device.type == "cpu")


def check_bf16(device: torch.device, pt: bool, half: bool) -> None:
    """--bf16 for inference (val/detect) is CPU autocast over PyTorch weights; anything else is one clear line."""
    if device.type != "cpu":
        raise InputError(f"--bf16 is bfloat16 autocast on CPU; on {device.type} use --half (fp16), or --device cpu")
    if half:
        raise InputError("--half and --bf16 exclude each other: --bf16 for CPU, --half (fp16) for CUDA")
    if not pt:
        raise InputError("--bf16 runs PyTorch weights (.pt) only; an exported model runs in its own precision "
                         "(export with --half for fp16)")
