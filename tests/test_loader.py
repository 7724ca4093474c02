"""create_dataloader: batch layout, shapes for mapping back, rect, caches, determinism, persistence, plots."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.boxes import scale_boxes, xywhn2xyxy
from utils.data.loader import collate_fn, create_dataloader
from utils.plots import plot_images, plot_labels

HYP = dict(hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, degrees=0.0, translate=0.1, scale=0.5, shear=0.0, perspective=0.0,
           flipud=0.0, fliplr=0.5, mosaic=1.0, mixup=0.0)


@pytest.fixture
def images(tmp_path, monkeypatch):
    """6 images of different aspect ratios, each with 1-3 boxes; 1 background."""
    monkeypatch.setenv("YOLOV5_CACHE_DIR", str(tmp_path / "usercache"))
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    sizes = [(60, 100), (100, 60), (80, 80), (50, 120), (90, 70), (64, 64)]
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(root / "images" / f"{i}.jpg"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        if i < 5:
            rows = [f"{j % 3} {0.2 + 0.25 * j} 0.5 0.15 0.3" for j in range(1 + i % 3)]
            (root / "labels" / f"{i}.txt").write_text("\n".join(rows) + "\n")
    return root / "images"


def test_batch_layout_and_image_index(images):
    loader, ds = create_dataloader(str(images), 64, 4, 32, hyp=HYP, augment=True, workers=0)
    imgs, targets, paths, shapes = next(iter(loader))
    assert imgs.dtype == torch.uint8 and imgs.shape == (4, 3, 64, 64)
    assert targets.shape[1] == 6 and len(paths) == 4 and shapes == (None,) * 4
    assert set(targets[:, 0].long().tolist()) <= set(range(4))
    assert ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all()


def test_collate_keeps_image_index():
    items = [(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.ones(k, 6), f"{k}.jpg", None) for k in (2, 0, 3)]
    imgs, t, paths, _ = collate_fn(items)
    assert imgs.shape == (3, 3, 8, 8) and t[:, 0].tolist() == [0, 0, 2, 2, 2] and paths == ("2.jpg", "0.jpg", "3.jpg")


def test_val_shapes_map_boxes_back_to_original_pixels(images):
    loader, ds = create_dataloader(str(images), 64, 2, 32, rect=True, pad=0.5, workers=0)
    seen = 0
    for imgs, targets, paths, shapes in loader:
        h, w = imgs.shape[2:]
        assert h % 32 == 0 and w % 32 == 0
        for i, (path, (hw0, ratio_pad)) in enumerate(zip(paths, shapes)):
            t = targets[targets[:, 0] == i, 2:].numpy().astype(np.float64)
            boxes = scale_boxes((h, w), xywhn2xyxy(t, w, h), hw0, ratio_pad)
            lb = ds.labels[ds.im_files.index(path)][:, 1:].astype(np.float64)
            assert np.allclose(boxes, xywhn2xyxy(lb, hw0[1], hw0[0]), atol=0.6)
            seen += len(t)
    assert seen == sum(len(lb) for lb in ds.labels)


def test_rect_batches_share_a_shape_and_sort_by_aspect(images):
    loader, ds = create_dataloader(str(images), 64, 2, 32, rect=True, pad=0.5, workers=0)
    ar = ds.shapes[:, 1] / ds.shapes[:, 0]
    assert (np.diff(ar) >= 0).all() and ds.batch_shapes.shape == (3, 2)
    assert (ds.batch_shapes % 32 == 0).all()
    for b, (imgs, *_) in enumerate(loader):
        assert tuple(imgs.shape[2:]) == tuple(ds.batch_shapes[b])


def test_single_cls_and_image_weights(images):
    loader, ds = create_dataloader(str(images), 64, 3, 32, hyp=HYP, augment=True, workers=0, single_cls=True,
                                   image_weights=True, shuffle=True)
    assert all((lb[:, 0] == 0).all() for lb in ds.labels)
    ds.indices = [2] * ds.n  # what train.py does with class-weighted draws
    paths = [p for _, _, ps, _ in loader for p in ps]
    assert len(paths) == ds.n and set(paths) == {ds.im_files[2]}


def test_same_seed_same_batches_with_persistent_workers(images):
    def first_epochs(seed):
        loader, _ = create_dataloader(str(images), 64, 3, 32, hyp=HYP, augment=True, workers=2, shuffle=True,
                                      seed=seed)
        assert loader.persistent_workers and loader.num_workers == min(2, os.cpu_count())
        out = []
        for _ in range(2):
            out += [(b[0].clone(), b[1].clone(), b[2]) for b in loader]
        pids = [w.pid for w in loader._iterator._workers]
        return out, pids, loader

    a, pids, loader = first_epochs(1)
    for _ in loader:  # a third epoch reuses the same worker processes
        pass
    assert [w.pid for w in loader._iterator._workers] == pids
    b, _, _ = first_epochs(1)
    c, _, _ = first_epochs(2)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2] for x, y in zip(a, b))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a[:2], a[2:4]))  # epochs differ


def epoch_batches(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [(b[0].clone(), b[1].clone(), b[2]) for b in loader]


def same_batches(a, b):
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
                                    for x, y in zip(a, b))


def test_augmentation_does_not_depend_on_worker_count_or_history(images):
    """Each item is augmented from (seed, epoch, index): 0 or 2 workers, fresh or persistent, same batches."""
    hyp = {**HYP, "mixup": 0.5}  # mosaic and mixup draw extra images: they too must come from the item's seed
    make = lambda workers: create_dataloader(str(images), 64, 2, 32, hyp=hyp, augment=True, workers=workers,
                                             shuffle=True, seed=5)[0]
    single, multi = make(0), make(2)
    assert multi.num_workers == min(2, os.cpu_count()) and multi.persistent_workers
    e0, e1 = epoch_batches(single, 0), epoch_batches(single, 1)
    assert same_batches(e0, epoch_batches(multi, 0))
    assert same_batches(e1, epoch_batches(multi, 1))  # persistent workers, second epoch
    assert same_batches(e1, epoch_batches(make(2), 1))  # a resumed run starts straight at epoch 1
    assert not same_batches(e0, e1)


def test_continuous_loader_gives_the_epoch_by_epoch_batches(images):
    """One endless iterator (train.py's, so workers prefetch across epochs) = per-epoch passes, batch for batch;
    6 images in batches of 4 end each epoch with a short batch that must not borrow from the next."""
    hyp = {**HYP, "mixup": 0.5}
    per_epoch = create_dataloader(str(images), 64, 4, 32, hyp=hyp, augment=True, workers=0, shuffle=True, seed=5)[0]
    loader = create_dataloader(str(images), 64, 4, 32, hyp=hyp, augment=True, workers=2, shuffle=True, seed=5,
                               continuous=True)[0]
    nb = len(loader)
    assert nb == len(per_epoch) == 2 and loader.persistent_workers
    loader.batch_sampler.start_epoch = 1  # a resumed run
    it = iter(loader)
    for epoch in (1, 2):
        got = [(b[0].clone(), b[1].clone(), b[2]) for b in (next(it) for _ in range(nb))]
        assert [len(b[2]) for b in got] == [4, 2]
        assert same_batches(got, epoch_batches(per_epoch, epoch))
    with pytest.raises(ValueError, match="image-weights"):
        create_dataloader(str(images), 64, 2, 32, hyp=hyp, augment=True, workers=0, image_weights=True, continuous=True)


def test_cache_ram_and_disk_give_the_same_images(images):
    plain = create_dataloader(str(images), 64, 6, 32, workers=0)[0]
    ram_loader, ram = create_dataloader(str(images), 64, 6, 32, workers=0, cache="ram")
    disk_loader, disk = create_dataloader(str(images), 64, 6, 32, workers=0, cache="disk")
    assert all(im is not None for im in ram.ims)
    assert all(Path(f).is_file() for f in disk.npy_files)
    x = next(iter(plain))[0]
    assert torch.equal(x, next(iter(ram_loader))[0]) and torch.equal(x, next(iter(disk_loader))[0])


def test_ddp_sampler(images, tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader, ds = create_dataloader(str(images), 64, 2, 32, rank=0, workers=0, shuffle=True)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        loader.sampler.set_epoch(1)
        assert sum(b[0].shape[0] for b in loader) == ds.n
        pairs = list(loader.sampler)
        assert sorted(i for i, _ in pairs) == list(range(ds.n)) and {e for _, e in pairs} == {1}
    finally:
        dist.destroy_process_group()


def test_plots_write_files(images, tmp_path):
    loader, ds = create_dataloader(str(images), 64, 4, 32, hyp=HYP, augment=True, workers=0)
    imgs, targets, paths, _ = next(iter(loader))
    f = tmp_path / "train_batch0.jpg"
    mosaic = plot_images(imgs, targets, paths, f, names=["a", "b", "c"])
    assert f.is_file() and mosaic.shape == (128, 128, 3)
    preds = torch.cat([targets, torch.full((len(targets), 1), 0.9)], 1)  # with a conf column
    plot_images(imgs, preds, paths, tmp_path / "val_batch0_pred.jpg", names=["a", "b", "c"])
    out = plot_labels(np.concatenate(ds.labels), ["a", "b", "c"], tmp_path)
    assert out.name == "labels.jpg" and cv2.imread(str(out)).shape[0] > 500
