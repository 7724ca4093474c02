"""Weights -> models: a checkpoint (ours or official YOLOv5) rebuilt strict, pretrained transfer into a new yaml,
`attempt_load` (the one way val, detect, export and users load weights) and `Ensemble`.

A checkpoint's yaml is checked against its tensors before the model is built for real (`check_yaml_fits`):
a few-KB file whose yaml asks for nn.Linear(20000, 20000) is refused without allocating it."""
from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import torch
import torch.nn as nn

from models.gates import GATE_KEY, gate_summary, insertion_gates, set_identity_gates, split_gate_tensors
from models.registry import MAX_CHANNELS, ModelConfigError
from models.yolo import Detect, Model, parse_model
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.cli import InputError
from utils.log import LOGGER
from utils.torch_utils import select_device
from utils.train.transfer import TransferReport, transfer_weights


def model_from_checkpoint(ckpt: dict, prefer_ema: bool = False):
    """Rebuild our Model from the checkpoint's yaml and load its tensors strict (ema weights if asked and present)."""
    source = ckpt.get("file", "checkpoint")
    sd = ckpt["ema"] if prefer_ema and ckpt.get("ema") else ckpt["state_dict"]
    check_yaml_fits(ckpt["yaml"], sd, source)
    try:
        model = Model(deepcopy(ckpt["yaml"]))
    except Exception as e:
        raise CheckpointError(f"{source}: its model yaml does not build: {e}") from e
    _load_strict(model, sd, source)
    model.names = list(ckpt.get("names") or model.names)
    stride = ckpt.get("stride")
    if stride and [float(s) for s in model.stride.tolist()] != [float(s) for s in stride]:
        LOGGER.warning(f"WARNING: {source}: stored stride {stride} differs from the rebuilt model's "
                       f"{model.stride.tolist()}; using the rebuilt one")
    return model


def check_yaml_fits(yaml: dict, sd: dict, source: str) -> None:
    """Build the yaml's layers on the meta device (shapes only, no memory) and compare their tensors with the
    checkpoint's; only a yaml that fits its tensors is built for real. Each tensor must also hold its own
    elements (no repeating view), so the real build costs no more than the file's storages."""
    if not isinstance(yaml, dict):
        raise CheckpointError(f"{source}: its model yaml is a {type(yaml).__name__}, not a mapping")
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{source}: its state_dict holds entries that are not tensors")
    repeating = [k for k, v in sd.items() if v.numel() > v.untyped_storage().nbytes() // max(v.element_size(), 1)]
    if repeating:
        raise CheckpointError(f"{source}: tensor {repeating[0]} repeats its storage's elements (a stride-0 view), "
                              f"which no trained weight does; refused")
    try:
        with torch.device("meta"):
            layers, _ = parse_model(deepcopy(yaml), ch=[yaml.get("ch", 3)])
    except (ModelConfigError, ValueError, TypeError, KeyError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{source}: its model yaml does not build: {e}") from None
    shapes = {f"model.{k}": tuple(v.shape) for k, v in layers.state_dict().items()}
    sd, gates = split_gate_tensors(sd)
    _refuse_mismatch(shapes, {k: tuple(v.shape) for k, v in sd.items()}, source)
    _check_gate_tensors(yaml, gates, source)


def _check_gate_tensors(yaml: dict, gates: dict, source: str) -> None:
    """Identity gates (models/gates.py) are small (1, C, 1, 1) tensors, one per layer the yaml lists; their
    exact channel counts are checked by the strict load of the real build."""
    listed = yaml.get(GATE_KEY) or []
    if sorted(gates) != sorted(listed) if isinstance(listed, list) else True:
        raise CheckpointError(f"{source}: gate tensors for layers {sorted(gates)} but its yaml lists "
                              f"{GATE_KEY}: {listed!r}")
    bad = [i for i, g in gates.items() if g.dim() != 4 or g.shape[0] != 1 or g.shape[2:] != (1, 1)
           or not 1 <= g.shape[1] <= MAX_CHANNELS]
    if bad:
        raise CheckpointError(f"{source}: gate of layer {bad[0]} has shape {tuple(gates[bad[0]].shape)}, "
                              f"expected (1, channels, 1, 1)")


def _refuse_mismatch(own: dict, stored: dict, source: str) -> None:
    """CheckpointError naming what differs between the model's tensor shapes and the stored ones."""
    missing = [k for k in own if k not in stored]
    unexpected = [k for k in stored if k not in own]
    shape = [f"{k} {stored[k]} vs {v}" for k, v in own.items() if k in stored and stored[k] != v]
    if missing or unexpected or shape:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                 f"{len(shape)} of another shape (e.g. {shape[:2]})" if shape else ""]
        raise CheckpointError(f"{source}: tensors do not fit the model built from its yaml: "
                              + "; ".join(p for p in parts if p))


def _load_strict(model: nn.Module, sd: dict, source: str) -> None:
    _refuse_mismatch({k: tuple(v.shape) for k, v in model.state_dict().items()},
                     {k: tuple(v.shape) for k, v in sd.items()}, source)
    model.load_state_dict(sd, strict=True)


def pretrained_model(weights: str | Path, cfg=None, nc: int | None = None, anchors=None, exclude=(),
                     verbose: bool = True, attn_init: str = "identity") -> tuple[Model, TransferReport]:
    """Build a model from `cfg` (else the checkpoint's own yaml) and transfer the checkpoint's tensors into it by
    aligned layers, so blocks inserted by the yaml shift nothing (train.py's --weights). YOLOv5 fine-tunes from
    the checkpoint's 'model' weights (stripped files hold the EMA there).

    attn_init='identity' (the default) gates every attention layer that received no pretrained tensors at 0, so
    the model starts out computing exactly what the checkpoint computes (models/gates.py); 'plain' inserts the
    blocks as they are. Gates of a gated checkpoint are carried to the aligned layers in both modes."""
    ckpt = load_checkpoint(weights, map_location="cpu")
    if not cfg:  # the checkpoint's own yaml: it must fit its tensors before it is built
        check_yaml_fits(ckpt["yaml"], ckpt["state_dict"], str(weights))
    model = Model(cfg or ckpt["yaml"], ch=3, nc=nc, anchors=anchors)
    sd, source_gates = split_gate_tensors(ckpt["state_dict"])
    report = transfer_weights(model, sd, ckpt.get("yaml"), source=weights, exclude=exclude, verbose=verbose)
    values, notes = insertion_gates(model, report.layer_map, report.missing, ckpt.get("yaml"), source_gates, attn_init)
    set_identity_gates(model, values)
    if verbose:
        for note in notes:
            LOGGER.warning(f"WARNING: {weights}: {note}")
        gated = gate_summary(model)
        if gated:
            LOGGER.info(f"{gated} (these layers start as the identity; --attn-init plain inserts them plainly)")
        elif attn_init == "plain":
            LOGGER.info("plain insertion (--attn-init plain): inserted layers start from their own init")
    return model, report


class Ensemble(nn.ModuleList):
    """Several models run on the same batch; their predictions are concatenated for one NMS (as YOLOv5)."""

    def forward(self, x, augment=False, profile=False, visualize=False):
        y = [m(x, augment=augment)[0] for m in self]
        return torch.cat(y, 1), None


def _load_one(w: str | Path, device, inplace: bool, fuse: bool) -> Model:
    ckpt = load_checkpoint(w, map_location="cpu")
    model = model_from_checkpoint(ckpt, prefer_ema=True).float()  # EMA weights when present, as YOLOv5
    model.pt_path = str(w)
    model.requires_grad_(False)  # inference only (YOLOv5's loaded checkpoints report "0 gradients")
    model.eval()
    for m in model.modules():
        if isinstance(m, Detect):
            m.inplace = inplace
    model.inplace = inplace
    if fuse:
        model.fuse(flops=False)  # a weights load should not pay for a FLOP count (models/yolo.py prints it)
    return model.to(select_device(device)) if device is not None else model


def attempt_load(weights, device=None, inplace: bool = True, fuse: bool = True):
    """Load one checkpoint (ours or official YOLOv5) or several as an Ensemble; eval, fp32, fused, on `device`
    (a torch.device, 'cpu', '0', 'cuda:0'; None keeps the CPU).

    A missing file raises FileNotFoundError naming it (nothing is downloaded).
    """
    paths = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    if not paths:
        raise ValueError("attempt_load: no weights given")
    for w in paths:
        if not Path(w).is_file():
            raise FileNotFoundError(f"weights file not found: {w} (attempt_load does not download)")
    models = [_load_one(w, device, inplace, fuse) for w in paths]
    if len(models) == 1:
        return models[0]
    ensemble = Ensemble(models)
    ncs = {m.yaml["nc"] for m in models}
    if len(ncs) > 1:
        raise InputError(f"attempt_load: ensemble members have different class counts {sorted(ncs)} ({paths})")
    for k in ("names", "nc", "yaml"):
        setattr(ensemble, k, getattr(models[0], k, None))
    ensemble.nc = models[0].yaml["nc"]
    ensemble.stride = max((m.stride for m in models), key=lambda s: float(s.max()))
    LOGGER.info(f"Ensemble created with {[str(w) for w in paths]}")
    return ensemble
