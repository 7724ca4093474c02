"""Export diagnostics: which layer's block needs a higher ONNX opset, and which layer broke an export.

Every failure here names the layer (index and yaml type) so a user knows which block to change or
which opset to ask for, instead of reading a TorchScript exporter trace.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

from utils.cli import UserError

ONNX_DOUBLE = 11  # onnx.TensorProto.DOUBLE


class ExportError(UserError, RuntimeError):
    """An export that cannot work as asked; the message names the block and the cause."""


def _layer_label(model: nn.Module, qualified: str) -> str:
    """'model.10.attn' -> 'layer 10 (DAttentionBaseline)' when the model is a yaml-built Model."""
    m = re.match(r"^model\.(\d+)", qualified)
    layers = getattr(model, "model", None)
    if m and isinstance(layers, nn.Sequential) and int(m.group(1)) < len(layers):
        layer = layers[int(m.group(1))]
        return f"layer {m.group(1)} ({getattr(layer, 'type', type(layer).__name__)})"
    return qualified or type(model).__name__


def check_opset(model: nn.Module, opset: int, needs: list[tuple[str, str, int]]) -> None:
    """Raise ExportError naming every block that needs a higher opset than asked.

    `needs` is [(qualified module name in `model`, block, min opset)]: the blocks' registrations hold these
    facts and this package cannot read them, so the caller passes them (models.registry.opset_needs).
    """
    too_low = [(_layer_label(model, name), block, need) for name, block, need in needs if need > opset]
    if too_low:
        blocks = "; ".join(f"{where}: {block} needs opset >= {need}" for where, block, need in too_low)
        need = max(n for _, _, n in too_low)
        raise ExportError(f"--opset {opset} is too low for this model ({blocks}); use --opset {need} or higher")


# ----------------------------------------------------------------------------- after an export failed

def layer_inputs(model: nn.Module, im: torch.Tensor) -> dict[int, object]:
    """The input each top-level yaml layer receives on `im` (captured with pre-forward hooks)."""
    seen, hooks = {}, []

    def keep(i, args):  # copy lists: Detect overwrites its input list in place
        seen.setdefault(i, tuple(list(a) if isinstance(a, list) else a for a in args))

    for i, layer in enumerate(getattr(model, "model", [])):
        hooks.append(layer.register_forward_pre_hook(lambda mod, args, i=i: keep(i, args)))
    try:
        with torch.no_grad():
            model(im)
    finally:
        for h in hooks:
            h.remove()
    return seen


def find_failing_layer(model: nn.Module, im: torch.Tensor, export_one) -> tuple[str, Exception] | None:
    """Export each yaml layer on its own with `export_one(layer, args)`; the first that raises is the culprit.

    Only called after a whole-model export failed, so its cost (one small export per layer) is paid
    only when there is something to explain.
    """
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential):
        return None
    for i, args in sorted(layer_inputs(model, im).items()):
        try:
            export_one(layers[i], args)
        except Exception as e:  # any exporter error; we only want to know which layer it is
            return _layer_label(model, f"model.{i}"), e
    return None


def double_tensors(onnx_model) -> list[str]:
    """Names of nodes/initializers whose outputs are float64 (onnxruntime lacks double kernels for most ops)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(onnx_model)
    g = inferred.graph
    doubles = {v.name for v in list(g.value_info) + list(g.output)
               if v.type.tensor_type.elem_type == ONNX_DOUBLE}
    doubles |= {t.name for t in g.initializer if t.data_type == ONNX_DOUBLE}
    hits = [n.name or n.op_type for n in g.node if any(o in doubles for o in n.output)]
    return hits + sorted(t.name for t in g.initializer if t.data_type == ONNX_DOUBLE)


def label_onnx_node(model: nn.Module, node_name: str) -> str:
    """'/model.10/Cast_3' -> 'layer 10 (DAttentionBaseline)'."""
    m = re.match(r"^/?model\.(\d+)", node_name.lstrip("/"))
    return _layer_label(model, f"model.{m.group(1)}") if m else node_name
