"""Kept for users' imports (`from models.experimental import attempt_load`, as in YOLOv5); see models/load.py."""
from models.load import Ensemble, attempt_load  # noqa: F401
