"""Pretrained transfer that survives inserted layers.

YOLOv5 keys are `model.<index>.…`, so inserting one block shifts every later index and a name+shape
intersection silently drops (or, worse, misplaces) pretrained tensors. Here each layer gets a signature:
its yaml row as written (module, repeats, args; width-free) plus its parameter names and shapes. The
checkpoint's layer list is aligned to the new model's with difflib's SequenceMatcher (longest matching
blocks, so order is kept and inserted or removed layers are skipped). Layers of the same module type left
between matched blocks (a Detect head for another nc, another scale) are paired by type, and their tensors
transfer where name and shape agree. Without a checkpoint yaml the alignment falls back to shapes alone.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from utils.log import LOGGER
from utils.torch_utils import de_parallel

_LAYER_KEY = re.compile(r"^model\.(\d+)\.(.+)$")


@dataclass
class TransferReport:
    transferred: int  # tensors copied into the model
    total: int  # tensors in the model's state_dict (YOLOv5's M in "Transferred N/M items")
    source: str = ""
    layer_map: dict[int, int] = field(default_factory=dict)  # checkpoint layer -> new layer
    missing: list[str] = field(default_factory=list)  # model keys that got nothing
    unused: dict[str, str] = field(default_factory=dict)  # checkpoint key -> why it found no place

    def __str__(self) -> str:
        return f"Transferred {self.transferred}/{self.total} items" + (f" from {self.source}" if self.source else "")

    def details(self, limit: int = 10) -> str:
        lines = [str(self)]
        if self.missing:
            lines.append(f"  {len(self.missing)} model tensors kept their init: {', '.join(self.missing[:limit])}"
                         + (" ..." if len(self.missing) > limit else ""))
        if self.unused:
            shown = [f"{k} ({why})" for k, why in list(self.unused.items())[:limit]]
            lines.append(f"  {len(self.unused)} checkpoint tensors found no place: {', '.join(shown)}"
                         + (" ..." if len(self.unused) > limit else ""))
        return "\n".join(lines)


def _group_by_layer(sd: dict) -> dict[int, dict[str, torch.Tensor]]:
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        m = _LAYER_KEY.match(k)
        if m:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = v
    return layers


def _yaml_rows(yaml: dict | None) -> list[tuple] | None:
    """Per layer (module, repeats, args as written): width-free, so the same rows describe every scale."""
    if not yaml:
        return None
    return [(str(r[2]), r[1], repr(r[3])) for r in list(yaml.get("backbone", [])) + list(yaml.get("head", []))]


def layer_signatures(sd: dict, rows: list[tuple] | None, n_layers: int | None = None) -> list[tuple]:
    """One (row, ((param name, shape), ...)) per layer index; row is None when no yaml is known."""
    layers = _group_by_layer(sd)
    n = n_layers if n_layers is not None else (len(rows) if rows else max(layers, default=-1) + 1)
    return [((rows[i] if rows and i < len(rows) else None),
             tuple((k, tuple(v.shape)) for k, v in layers.get(i, {}).items())) for i in range(n)]


def align_layers(old: list[tuple], new: list[tuple]) -> dict[int, int]:
    """Map old layer index -> new layer index, keeping order: exact signature matches first,
    then layers of the same module type inside the gaps between them (other nc, other scale)."""
    mapping: dict[int, int] = {}
    sm = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            mapping.update({i1 + k: j1 + k for k in range(i2 - i1)})
        elif tag == "replace":  # same-type layers with other shapes (nc, width): align by type alone
            types_old = [s[0][0] if s[0] else None for s in old[i1:i2]]
            types_new = [s[0][0] if s[0] else None for s in new[j1:j2]]
            inner = difflib.SequenceMatcher(None, types_old, types_new, autojunk=False)
            for a, b, size in inner.get_matching_blocks():
                mapping.update({i1 + a + k: j1 + b + k for k in range(size)})
    return mapping


def transfer_weights(model: nn.Module, ckpt_state_dict: dict, ckpt_yaml: dict | None = None,
                     source: str | Path = "", exclude=(), verbose: bool = True) -> TransferReport:
    """Copy checkpoint tensors into `model` by aligned layers; return (and log) the report."""
    model = de_parallel(model)
    own = model.state_dict()
    old_rows, new_rows = _yaml_rows(ckpt_yaml), _yaml_rows(getattr(model, "yaml", None))
    if old_rows is None or new_rows is None or len(new_rows) != len(model.model):
        old_rows = new_rows = None  # no usable yaml: align on parameter shapes alone
    old_sig = layer_signatures(ckpt_state_dict, old_rows)
    new_sig = layer_signatures(own, new_rows, n_layers=len(model.model))
    layer_map = align_layers(old_sig, new_sig)

    placed: dict[str, torch.Tensor] = {}
    unused: dict[str, str] = {}
    for key, value in ckpt_state_dict.items():
        m = _LAYER_KEY.match(key)
        if any(x in key for x in exclude):
            unused[key] = "excluded"
        elif not m:
            unused[key] = "not a model.<i>. key"
        elif int(m.group(1)) not in layer_map:
            unused[key] = f"layer {m.group(1)} has no counterpart"
        else:
            target = f"model.{layer_map[int(m.group(1))]}.{m.group(2)}"
            if target not in own:
                unused[key] = f"{target} does not exist"
            elif own[target].shape != value.shape:
                unused[key] = f"shape {tuple(value.shape)} vs {tuple(own[target].shape)} at {target}"
            else:
                placed[target] = value
    with torch.no_grad():
        for k, v in placed.items():
            own[k].copy_(v)  # state_dict tensors share storage with the model; copy_ also casts fp16 -> fp32
    report = TransferReport(len(placed), len(own), str(source), layer_map,
                            [k for k in own if k not in placed], unused)
    if verbose:
        LOGGER.info(report.details() if report.missing or report.unused else str(report))
    return report
