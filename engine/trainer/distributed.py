"""DistributedDataParallel plumbing: this process's rank, process-group set-up and the few collective calls the
trainer makes (all ranks agree on a skipped step, on stopping early, on rank 0's anchors)."""
from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from utils.cli import InputError
from utils.torch_utils import de_parallel, select_device

LOCAL_RANK = int(os.getenv("LOCAL_RANK", -1))  # set by torchrun / torch.distributed.run
RANK = int(os.getenv("RANK", -1))
WORLD_SIZE = int(os.getenv("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that validates, logs and writes."""
    return RANK in (-1, 0)


def init_distributed(opt: argparse.Namespace) -> torch.device:
    """The device this process trains on; under torchrun also the process group (nccl on CUDA, gloo on CPU)."""
    if LOCAL_RANK == -1:
        return select_device(opt.device, batch_size=max(opt.batch_size, 0))  # -1: AutoBatch decides later
    if opt.image_weights:
        raise InputError("--image-weights is not supported with DDP training")
    if opt.batch_size % WORLD_SIZE:
        raise InputError(f"--batch-size {opt.batch_size} must be a multiple of WORLD_SIZE {WORLD_SIZE}")
    use_cuda = torch.cuda.is_available() and str(opt.device).lower() != "cpu"
    if use_cuda:
        if torch.cuda.device_count() <= LOCAL_RANK:
            raise InputError(f"LOCAL_RANK {LOCAL_RANK} has no CUDA device ({torch.cuda.device_count()} visible)")
        torch.cuda.set_device(LOCAL_RANK)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return torch.device(f"cuda:{LOCAL_RANK}") if use_cuda else torch.device("cpu")


def close_distributed() -> None:
    if WORLD_SIZE > 1 and dist.is_initialized():
        dist.destroy_process_group()


def all_ranks_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank: they must agree, or DDP would hang on a backward one skipped."""
    ok = torch.isfinite(loss.detach()).all().float()
    if WORLD_SIZE > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's flag on every rank (rank 0 alone validates, so it alone decides on stopping early)."""
    if WORLD_SIZE == 1:
        return flag
    t = torch.tensor([float(flag)])
    dist.broadcast(t, 0)
    return bool(t.item())


def broadcast_anchors(model: torch.nn.Module) -> None:
    """Every rank starts from rank 0's anchors (AutoAnchor runs on rank 0 only)."""
    if WORLD_SIZE > 1:
        dist.broadcast(de_parallel(model).model[-1].anchors, 0)
