"""create_dataloader: YOLOv5's loader factory, with persistent workers and worker-independent augmentation.

Workers persist across epochs (DataLoader persistent_workers) so each epoch does not pay the start-up.
Batches are a function of (seed, epoch) alone, whatever the number of workers and whatever ran before:
the sampler shuffles with a generator seeded from (seed, epoch) and yields `(index, epoch)` pairs, and the
dataset reseeds Python's `random` and numpy from (seed, epoch, index) before augmenting each item. So a
resumed run sees exactly the batches an uninterrupted one would. train.py calls `sampler.set_epoch(e)`;
a loader iterated without it advances one epoch per pass. `--image-weights` works with persistent workers
because the sampler (main process) reads `dataset.indices` each epoch, so train.py may keep reassigning
`dataset.indices = random.choices(...)` as in YOLOv5.
"""
import os
from contextlib import contextmanager

import cv2
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from utils.cli import InputError
from utils.data.dataset import LoadImagesAndLabels
from utils.log import LOGGER
from utils.torch_utils import derive_seed, seed_rngs

PIN_MEMORY = str(os.getenv("PIN_MEMORY", True)).lower() == "true"
# derive_seed purpose tags (utils/torch_utils.py): the shuffle order of (seed, epoch), the workers' base seed
SHUFFLE_SEED_TAG = 6148914691236517205
WORKER_SEED_TAG = 0x5EED_3017


class EpochIndexSampler(Sampler):
    """Yields (index, epoch) over dataset.indices (read fresh every epoch, main process), optionally shuffled
    by a generator seeded from (seed, epoch) alone, so the order never depends on earlier epochs."""

    def __init__(self, dataset, shuffle=False, seed=0):
        self.dataset, self.shuffle, self.seed = dataset, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch):  # same call as DistributedSampler, so train.py need not branch
        self.epoch = epoch

    def __len__(self):
        return len(self.dataset.indices)

    def __iter__(self):  # a generator: the epoch is taken when iteration starts, not when iter() is called
        epoch = self.epoch
        self.epoch += 1  # without a set_epoch() call the next pass is the next epoch
        indices = list(self.dataset.indices)
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(SHUFFLE_SEED_TAG, self.seed, epoch))
            indices = [indices[i] for i in torch.randperm(len(indices), generator=g).tolist()]
        for i in indices:
            yield i, epoch


class DistributedEpochSampler(DistributedSampler):
    """DistributedSampler (order from seed and set_epoch) yielding (index, epoch) pairs."""

    def __iter__(self):
        epoch = self.epoch
        for i in super().__iter__():
            yield i, epoch


class EpochBatches(Sampler):
    """Batches of epoch after epoch, from `start_epoch` on and without end; no batch mixes two epochs.

    A persistent iterator over a loader built on this keeps its workers going across epoch boundaries:
    they prefetch the next epoch's first batches while the main process finishes the current one,
    instead of idling there and making the next epoch's first step wait (~0.1 s an epoch at coco128/320,
    and slower first steps while they catch up). `len()` is the batches per epoch. The epoch is set on
    the wrapped sampler before each pass, so the batches are the same as epoch-by-epoch iteration gives.
    """

    def __init__(self, sampler, batch_size: int, start_epoch: int = 0):
        self.sampler, self.batch_size, self.start_epoch = sampler, batch_size, start_epoch

    def __len__(self):
        return (len(self.sampler) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        epoch = self.start_epoch
        while True:
            self.sampler.set_epoch(epoch)
            batch = []
            for item in self.sampler:
                batch.append(item)
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch
            epoch += 1


def seed_worker(worker_id):
    """Seed numpy/random for items fetched by a plain index (from torch's per-worker seed, which the loader's
    generator fixes); keep OpenCV single-threaded inside workers."""
    seed_rngs(torch.initial_seed() % 2**32)
    cv2.setNumThreads(0)  # the workers are the parallelism; cv2 threads would only fight over cores


def collate_fn(batch):
    """Stack images; concatenate targets with column 0 set to each target's image index in the batch."""
    ims, labels, paths, shapes = zip(*batch)
    for i, lb in enumerate(labels):
        lb[:, 0] = i
    out = None
    if torch.utils.data.get_worker_info() is not None:  # in a worker: stack straight into shared memory,
        nbytes = sum(x.numel() for x in ims) * ims[0].element_size()  # saving a copy when it is sent
        out = ims[0].new(ims[0].untyped_storage()._new_shared(nbytes)).view(-1)
        out = out.view(len(ims), *ims[0].shape)
    return torch.stack(ims, 0, out=out), torch.cat(labels, 0), paths, shapes


@contextmanager
def distributed_zero_first(rank):
    """Let rank 0 scan/cache first; the other ranks then read its cache."""
    wait = rank not in (-1, 0) and dist.is_available() and dist.is_initialized()
    if wait:
        dist.barrier()
    yield
    if rank == 0 and dist.is_available() and dist.is_initialized():
        dist.barrier()


def create_dataloader(path, imgsz, batch_size, stride, single_cls=False, hyp=None, augment=False, cache=None,
                      pad=0.0, rect=False, rank=-1, workers=8, image_weights=False, prefix="", shuffle=False,
                      seed=0, nc=None, continuous=False):
    """Build (DataLoader, LoadImagesAndLabels). nc (optional) rejects labels with class ids >= nc.

    continuous: batches come from an EpochBatches (endless, epoch after epoch; train.py keeps one
    iterator for the whole run). Not with image_weights: those epochs' indices are drawn in the main
    process just before each epoch, which a prefetch across the boundary would run ahead of.
    """
    if rect and shuffle:
        LOGGER.warning(f"{prefix}WARNING: --rect is incompatible with shuffle, setting shuffle=False")
        shuffle = False
    if image_weights and rank != -1:
        raise InputError("--image-weights is not supported with DDP (rank != -1)")
    with distributed_zero_first(rank):
        dataset = LoadImagesAndLabels(path, imgsz, batch_size, augment=augment, hyp=hyp, rect=rect,
                                      image_weights=image_weights, cache_images=cache, single_cls=single_cls,
                                      stride=int(stride), pad=pad, prefix=prefix, nc=nc, seed=seed)
    batch_size = min(batch_size, len(dataset))
    n_dev = max(torch.cuda.device_count(), 1)
    nw = min((os.cpu_count() or 1) // n_dev, batch_size if batch_size > 1 else 0, workers)
    generator = torch.Generator()  # only the workers' base seed (plain-index items) comes from it
    generator.manual_seed(derive_seed(WORKER_SEED_TAG, seed, max(rank, 0)))
    if rank == -1:
        sampler = EpochIndexSampler(dataset, shuffle, seed)
    else:
        sampler = DistributedEpochSampler(dataset, shuffle=shuffle, seed=seed)
    if continuous and image_weights:
        raise InputError("a continuous loader cannot follow --image-weights' per-epoch draws")
    batching = dict(batch_sampler=EpochBatches(sampler, batch_size)) if continuous else \
        dict(batch_size=batch_size, sampler=sampler)
    loader = DataLoader(dataset, **batching, num_workers=nw, pin_memory=PIN_MEMORY and torch.cuda.is_available(),
                        collate_fn=collate_fn, worker_init_fn=seed_worker, generator=generator,
                        persistent_workers=nw > 0)
    return loader, dataset
