"""Identity insertion: inserted attention layers start as the identity, so a pretrained model keeps its mAP.

A gated layer i computes `y = lerp(x, block(x), g) = x + g * (block(x) - x)` with a learnable per-channel
gate g of shape (1, C, 1, 1) (LayerScale's per-channel scale on a ReZero-style zero init). At g = 0 the layer
passes its input through bit-exactly, so a pretrained model with blocks inserted scores exactly what the plain
model scores; training then opens each channel's gate as far as the block helps.

Why per channel rather than one scalar: LayerScale (Touvron et al., 2021) found per-channel residual scales
train better than a single one; here each channel can take the block's output independently, and each gate's
gradient sums over B*H*W values instead of B*C*H*W, so SGD at YOLOv5's lr0 moves it smoothly. C parameters
per gated layer are negligible.

The gate lives at the Model level (Model.gates, keys 'gates.<i>'), not inside the block: block modules keep
their official class names, state_dict keys and standalone numerics. Which layers are gated is plain data in
`Model.yaml['identity_gates']`, saved with every checkpoint's yaml, so anything that rebuilds from the yaml
(resume, val, detect, export) rebuilds the same gated model. The block is always computed, never skipped, so
FLOP counts and exports include it (and the gate: see GATE_FLOP_RULES).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import REGISTRY, ModelConfigError

GATE_KEY = "identity_gates"  # Model.yaml key: sorted list of gated layer indices
aten = torch.ops.aten


class IdentityGates(nn.ParameterDict):
    """'<layer index>' -> gate (1, C, 1, 1). Read by utils/train/optim: gates get no weight decay
    (decay would pull every gate back towards 'block off')."""
    no_weight_decay = True


def _lerp_flops(start_shape, end_shape, weight_shape=None, *args, out_shape=None, **kwargs) -> int:
    # x + g * (b - x): a subtract, a multiply and an add per output element
    n = 1
    for s in out_shape:
        n *= s
    return 3 * n


# torch's FlopCounterMode counts no elementwise op; the gate is one, so the model summary adds this rule.
GATE_FLOP_RULES = {aten.lerp: _lerp_flops}


def apply_gate(gate: torch.Tensor, x_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """lerp exports to ONNX (Sub/Mul/Add/Where) and TorchScript; at gate 0 it returns x_in exactly.

    lerp wants one dtype; under autocast a block may return another than it got (ACmix answers bf16/fp16 input
    in fp32), so both go to the promoted type, which is what the block alone would have returned."""
    dtype = torch.promote_types(x_in.dtype, out.dtype)
    if x_in.dtype != dtype:
        x_in = x_in.to(dtype)
    if out.dtype != dtype:
        out = out.to(dtype)
    return torch.lerp(x_in, out, gate if gate.dtype == dtype else gate.to(dtype))


def gated_layers(model: nn.Module) -> list[int]:
    return sorted(int(k) for k in (getattr(model, "gates", None) or {}))


def attention_layers(model: nn.Module) -> list[int]:
    """Indices of the layers whose registered block is an attention block."""
    return [i for i, layer in enumerate(model.model)
            if REGISTRY.get(getattr(layer, "type", "")) is not None and REGISTRY[layer.type].attention]


def gate_channels(model: nn.Module, i: int) -> int:
    """Channels of layer i's gate; a layer that cannot be the identity (several inputs, other channel count)
    is a ModelConfigError naming it."""
    n = len(model.model)
    if not isinstance(i, int) or not 0 <= i < n:
        raise ModelConfigError(f"{GATE_KEY}: {i!r} is not a layer index (0..{n - 1})")
    layer = model.model[i]
    where = f"{GATE_KEY}: layer {i} ({layer.type}, from {layer.f})"
    if not isinstance(layer.f, int):
        raise ModelConfigError(f"{where} has several inputs, so it cannot start as the identity; remove it from "
                               f"{GATE_KEY}")
    src = layer.f if layer.f >= 0 else i + layer.f
    c_in, c_out = model.channels[src + 1], model.channels[i + 1]
    if c_in != c_out:
        raise ModelConfigError(f"{where} maps {c_in} to {c_out} channels, so it cannot start as the identity; "
                               f"remove it from {GATE_KEY}")
    return c_in


def build_gates(model: nn.Module, values: dict) -> IdentityGates:
    """Gates for {layer index: initial value or None (= zeros)}; values are checked against the layer."""
    gates = IdentityGates()
    for i in sorted(values):
        c = gate_channels(model, i)
        v = values[i]
        g = torch.zeros(1, c, 1, 1)
        if v is not None:
            v = torch.as_tensor(v).detach().float().cpu()
            if v.numel() not in (1, c):
                raise ModelConfigError(f"{GATE_KEY}: layer {i} gate has {v.numel()} values, the layer has {c} channels")
            g = g + v.reshape(1, -1, 1, 1)
        gates[str(i)] = nn.Parameter(g)
    return gates


def set_identity_gates(model: nn.Module, values: dict) -> None:
    """Gate exactly these layers ({index: value or None}); records them in model.yaml and checks the model
    still runs (a block that changes the spatial size cannot be gated: named here, not at the first batch)."""
    p = next(model.parameters(), None)
    gates = build_gates(model, values)
    if p is not None:
        gates = gates.to(p.device)
    model.gates = gates if values else None
    model.yaml[GATE_KEY] = sorted(int(i) for i in values)
    if values:
        model.probe_forward()


def gate_summary(model: nn.Module) -> str:
    """'identity-gated: 3 (TripletAttention), 9 (SE)'; '' when nothing is gated."""
    gated = gated_layers(model)
    if not gated:
        return ""
    return "identity-gated: " + ", ".join(f"{i} ({model.model[i].type})" for i in gated)


# ----------------------------------------------------------------------------- pretrained transfer

ATTN_INIT_MODES = ("identity", "plain")


def split_gate_tensors(sd: dict) -> tuple[dict, dict[int, torch.Tensor]]:
    """(state dict without 'gates.<i>' entries, {i: gate}) for a checkpoint that may itself be gated."""
    rest, gates = {}, {}
    for k, v in sd.items():
        parts = k.split(".")
        if len(parts) == 2 and parts[0] == "gates" and parts[1].isdigit():
            gates[int(parts[1])] = v
        else:
            rest[k] = v
    return rest, gates


def _row_types(yaml: dict | None) -> list[str] | None:
    if not yaml:
        return None
    return [str(r[2]) for r in list(yaml.get("backbone") or []) + list(yaml.get("head") or [])]


def received_pretrained(model: nn.Module, layer_map: dict, missing: list[str], ckpt_yaml: dict | None) -> set[int]:
    """New layers that took over an old layer: all their tensors transferred, or (parameter-free blocks such as
    SimAM) the aligned old layer is the same module type."""
    inverse = {new: old for old, new in layer_map.items()}
    missing_layers = {int(k.split(".")[1]) for k in missing if k.startswith("model.")}
    layers_with_tensors = {int(k.split(".")[1]) for k in model.state_dict() if k.startswith("model.")}
    old_types = _row_types(ckpt_yaml)
    got = set()
    for new, old in inverse.items():
        if new in layers_with_tensors:
            if new not in missing_layers:
                got.add(new)
        elif old_types is not None and old < len(old_types) and old_types[old] == model.model[new].type:
            got.add(new)
    return got


def insertion_gates(model: nn.Module, layer_map: dict, missing: list[str], ckpt_yaml: dict | None,
                    source_gates: dict[int, torch.Tensor], mode: str = "identity") -> tuple[dict, list[str]]:
    """({layer: initial gate or None}, notes) for a model that just received a checkpoint's tensors.

    identity: every attention layer that received nothing starts gated at 0. Both modes carry the gates of a
    gated checkpoint to the aligned layers (dropping them would change what that checkpoint computes), and
    keep gates the new yaml itself declares.
    """
    if mode not in ATTN_INIT_MODES:
        raise ValueError(f"--attn-init {mode!r}: use one of {', '.join(ATTN_INIT_MODES)}")
    values: dict = {i: model.gates[str(i)].detach().clone() for i in gated_layers(model)}
    notes = []
    if mode == "identity":
        got = received_pretrained(model, layer_map, missing, ckpt_yaml)
        for i in attention_layers(model):
            if i not in got and i not in values:
                values[i] = None
    for old, g in sorted(source_gates.items()):
        new = layer_map.get(old)
        if new is None:
            notes.append(f"gate of checkpoint layer {old} dropped: that layer has no counterpart")
            continue
        values[new] = g
    for i in list(values):
        try:
            gate_channels(model, i)
        except ModelConfigError as e:
            notes.append(f"layer {i} left ungated: {e}")
            del values[i]
    return values, notes


def gate_from_scratch(model: nn.Module) -> None:
    """--attn-init identity without weights: every attention layer starts gated at 0."""
    values = {i: None for i in attention_layers(model)}
    values.update({i: model.gates[str(i)].detach().clone() for i in gated_layers(model)})
    set_identity_gates(model, {i: v for i, v in values.items() if _gateable(model, i)})


def _gateable(model: nn.Module, i: int) -> bool:
    try:
        gate_channels(model, i)
        return True
    except ModelConfigError:
        return False
