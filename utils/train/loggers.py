"""TrainLoggers: what one training run writes besides checkpoints (results.csv, TensorBoard scalars,
labels.jpg, train_batch0..2.jpg, results.png), attached to the trainer's events through utils/callbacks.py."""
from __future__ import annotations

from pathlib import Path

from utils.callbacks import HOOKS, Callbacks
from utils.log import LOGGER, colorstr
from utils.train.results import RESULT_KEYS, append_results, plot_results


def _tensorboard_writer(save_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:  # tensorboard is optional: training goes on without it
        LOGGER.info(f"{colorstr('TensorBoard: ')}not available ({type(e).__name__}: {e}), scalars not logged")
        return None
    LOGGER.info(f"{colorstr('TensorBoard: ')}Start with 'tensorboard --logdir {save_dir.parent}', view at http://localhost:6006/")
    return SummaryWriter(str(save_dir))


class TrainLoggers:
    """results.csv, TensorBoard scalars, labels.jpg, train_batch0..2.jpg and results.png for one run."""

    def __init__(self, save_dir: Path | str, plots: bool = True, tensorboard: bool = True):
        self.save_dir = Path(save_dir)
        self.plots = plots
        self.csv = self.save_dir / "results.csv"
        self.tb = _tensorboard_writer(self.save_dir) if tensorboard else None

    def attach(self, callbacks: Callbacks) -> Callbacks:
        for hook in HOOKS:
            if hasattr(self, hook):
                callbacks.register_action(hook, name=f"TrainLoggers.{hook}", callback=getattr(self, hook))
        return callbacks

    def on_pretrain_routine_end(self, labels, names):
        if not self.plots:
            return
        plots = _plots_module()
        if plots is not None:
            plots.plot_labels(labels, names, self.save_dir)

    def on_train_batch_end(self, ni: int, imgs, targets, paths):
        if self.plots and ni < 3:
            plots = _plots_module()
            if plots is not None:
                plots.plot_images(imgs, targets, paths, self.save_dir / f"train_batch{ni}.jpg")

    def on_fit_epoch_end(self, values, epoch: int):
        append_results(self.csv, epoch, values)
        if self.tb is not None:
            for k, v in zip(RESULT_KEYS, values):
                self.tb.add_scalar(k, float(v), epoch)

    def on_train_end(self):
        if self.plots and self.csv.exists():
            plot_results(self.csv)
        if self.tb is not None:
            self.tb.close()


def _plots_module():
    """utils.plots is optional at import time so a missing plotting stack never stops training."""
    try:
        from utils import plots
        return plots
    except ImportError as e:
        LOGGER.warning(f"WARNING: plots skipped, utils.plots not importable: {e}")
        return None
