"""YOLOv5's own blocks beyond the v6.1 core (Ghost, cross-conv and SPP variants of C3, C3TR).

They build on models.common's Conv/C3/SPP, which is imported first so that importing any of these
modules on its own still registers everything in a safe order; models.common re-exports them by name.
"""
import models.common  # noqa: F401
from models.blocks.c3_variants import C3SPP, C3x, CrossConv
from models.blocks.ghost import C3Ghost, GhostBottleneck, GhostConv
from models.blocks.transformer import C3TR, TransformerBlock, TransformerLayer

__all__ = ["C3SPP", "C3x", "CrossConv", "C3Ghost", "GhostBottleneck", "GhostConv", "C3TR", "TransformerBlock",
           "TransformerLayer"]
