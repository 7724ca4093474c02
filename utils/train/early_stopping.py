"""Stop training when fitness has not improved for `patience` epochs (YOLOv5's EarlyStopping)."""
from __future__ import annotations

from utils.log import LOGGER


class EarlyStopping:
    def __init__(self, patience: int = 30):
        self.best_fitness = 0.0
        self.best_epoch = 0
        self.patience = patience if patience > 0 else float("inf")  # 0 disables early stopping

    def __call__(self, epoch: int, fitness: float) -> bool:
        if fitness >= self.best_fitness:  # >= so a plateau at 0 early on does not count as stagnation
            self.best_epoch, self.best_fitness = epoch, fitness
        stop = epoch - self.best_epoch >= self.patience
        if stop:
            LOGGER.info(f"Stopping training early as no improvement observed in last {self.patience} epochs. "
                        f"Best results observed at epoch {self.best_epoch}, best model saved as best.pt.\n"
                        f"To update EarlyStopping(patience={self.patience}) pass a new patience value, "
                        f"i.e. `python train.py --patience 300` or use `--patience 0` to disable EarlyStopping.")
        return stop
