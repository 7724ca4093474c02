"""--image-weights: sample images by how rare and how poorly detected their classes are (YOLOv5)."""
from __future__ import annotations

import numpy as np
import torch


def labels_to_class_weights(labels: list[np.ndarray], nc: int = 80) -> torch.Tensor:
    """Inverse class frequency over the training labels (rows cls, x, y, w, h), normalised to sum 1."""
    if not labels or not any(len(lb) for lb in labels):
        return torch.ones(nc) / nc
    classes = np.concatenate([lb[:, 0] for lb in labels if len(lb)]).astype(int)
    counts = np.bincount(classes, minlength=nc).astype(np.float64)
    counts[counts == 0] = 1  # absent classes get the weight of a single occurrence
    w = 1 / counts
    return torch.from_numpy(w / w.sum()).float()


def labels_to_image_weights(labels: list[np.ndarray], nc: int, class_weights: np.ndarray) -> np.ndarray:
    """Per image the sum of its labels' class weights."""
    counts = np.array([np.bincount(lb[:, 0].astype(int), minlength=nc) for lb in labels]).reshape(-1, nc)
    return (class_weights.reshape(1, nc) * counts).sum(1)
