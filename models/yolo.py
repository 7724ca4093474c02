"""YOLOv5 Model and parse_model (the Detect head: models/detect_head.py, importable from here as in YOLOv5).

Usage: python models/yolo.py --cfg yolov5s_TripletAttention.yaml [--imgsz 640] [--profile] [--device 0]
       python models/yolo.py --test           # build every yaml in models/ at each of its scales
       python models/yolo.py --list-blocks    # every yaml module name: family, min ONNX opset, reference
"""
from __future__ import annotations

import argparse
import ast
import math
import sys
from copy import deepcopy
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from models.common import Conv  # noqa: E402  (also registers every block)
from models.config import load_model_yaml  # noqa: E402
from models.detect_head import Detect  # noqa: E402  (YOLOv5 users import it from here)
from models.gates import GATE_FLOP_RULES, GATE_KEY, apply_gate, build_gates, gate_summary  # noqa: E402
from models.registry import (MAX_CHANNELS, MAX_LAYERS, MAX_REPEATS, REGISTRY, LayerContext, ModelConfigError,  # noqa: E402
                             check_call, describe_blocks, lookup, op_flop_rules)
from utils.log import LOGGER  # noqa: E402
from utils.train.autoanchor import check_anchor_order  # noqa: E402
from utils.torch_utils import initialize_weights, scale_img  # noqa: E402


def _resolve_arg(a, nc, anchors):
    """yaml strings 'nc', 'anchors', 'None' and literals, without eval."""
    if not isinstance(a, str):
        return a
    if a == "nc":
        return nc
    if a == "anchors":
        return anchors
    try:
        return ast.literal_eval(a)
    except (ValueError, SyntaxError):
        return a  # a plain string argument such as 'nearest'


def _check_from(f, i: int, ch: list[int], ctx_row: str) -> list[int]:
    """`from` as a list of absolute indices, each pointing at an earlier layer (or the image for layer 0)."""
    froms = [f] if isinstance(f, int) else list(f)
    absolute = []
    for x in froms:
        if not isinstance(x, int):
            raise ModelConfigError(f"layer {i}, row {ctx_row}: `from` entries must be integers, got {x!r}")
        j = x if x >= 0 else i + x
        if not (-1 <= j < i) or (i > 0 and j < 0):
            raise ModelConfigError(f"layer {i}, row {ctx_row}: `from` index {x} is out of range "
                                   f"(layer {i} can read layers 0..{i - 1}" + (" or -1" if i else ", -1 = the image") + ")")
        absolute.append(j)
    return absolute


def _check_size(built, n_: int, ctx: LayerContext) -> None:
    """Refuse absurd repeats and channel counts before anything is allocated (limits in models/registry.py)."""
    if max(n_, built.n) > MAX_REPEATS:
        raise ctx.error(f"{max(n_, built.n)} repeats after depth scaling; more than {MAX_REPEATS} is refused")
    if not isinstance(built.c2, (int, float)) or built.c2 > MAX_CHANNELS:
        raise ctx.error(f"{built.c2} output channels; more than {MAX_CHANNELS} is refused")


def parse_model(d: dict, ch: list[int]):
    """Build the layer list from a model dict; every module is built through the registry."""
    missing = [k for k in ("nc", "anchors", "depth_multiple", "width_multiple", "backbone", "head") if k not in d]
    if missing:
        raise ModelConfigError(f"{d.get('yaml_file') or 'model yaml'}: missing {', '.join(missing)}")
    anchors, nc, gd, gw = d["anchors"], d["nc"], d["depth_multiple"], d["width_multiple"]
    LOGGER.debug(f"\n{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<40}{'arguments':<30}")
    layers, save, c2 = [], [], ch[-1]
    gated = set(d.get(GATE_KEY) or []) if isinstance(d.get(GATE_KEY), list) else set()
    rows = list(d["backbone"]) + list(d["head"])
    if len(rows) > MAX_LAYERS:
        raise ModelConfigError(f"the yaml has {len(rows)} layers; more than {MAX_LAYERS} is refused")
    if not isinstance(c2, int) or not 1 <= c2 <= MAX_CHANNELS:
        raise ModelConfigError(f"ch: {c2!r} input channels; expected an integer from 1 to {MAX_CHANNELS} (3 for RGB)")
    for i, row in enumerate(rows):
        row_text = str(row)
        if not isinstance(row, (list, tuple)) or len(row) != 4:
            raise ModelConfigError(f"layer {i}, row {row_text}: expected [from, number, module, args]")
        f, n, name, args = row
        absolute = _check_from(f, i, ch, row_text)
        if not isinstance(n, int) or n < 1:
            raise ModelConfigError(f"layer {i}, row {row_text}: number of repeats must be a positive integer, got {n!r}")
        args = [_resolve_arg(a, nc, anchors) for a in (args or [])]
        n_ = max(round(n * gd), 1) if n > 1 else n
        ch_in = [ch[x + 1] for x in absolute]  # ch[0] is the image, ch[j + 1] is layer j's output
        ctx = LayerContext(i, row_text, ch_in, args, n_, gw, gd, nc, anchors, d.get("scale", ""))
        spec = lookup(str(name), ctx)
        built = spec.build(ctx)
        _check_size(built, n_, ctx)
        check_call(spec.cls, built, ctx)
        try:
            mods = [spec.cls(*built.args, **built.kwargs) for _ in range(built.n)]
        except ModelConfigError:
            raise
        except (ValueError, AssertionError, TypeError, RuntimeError) as e:
            raise ctx.error(f"{spec.name} could not be built: {e}") from e
        m_ = nn.Sequential(*mods) if built.n > 1 else mods[0]
        m_.i, m_.f, m_.type = i, f, spec.name
        m_.np = sum(p.numel() for p in m_.parameters())
        shown = spec.name + (" (identity-gated)" if i in gated else "")
        LOGGER.debug(f"{i:>3}{str(f):>18}{n_:>3}{m_.np:10.0f}  {shown:<40}{str(built.args):<30}")
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)  # outputs read later
        layers.append(m_)
        c2 = built.c2
        ch.append(c2)
    return nn.Sequential(*layers), sorted(set(save))


class Model(nn.Module):
    """A YOLOv5 detection model built from a yaml (path, name such as 'yolov5s_CGA.yaml', or dict)."""

    def __init__(self, cfg="yolov5s.yaml", ch=3, nc=None, anchors=None, verbose=False):
        super().__init__()
        self.yaml = load_model_yaml(cfg)
        self.yaml_file = self.yaml.get("yaml_file", "")
        ch = self.yaml["ch"] = self.yaml.get("ch", ch)
        if nc and nc != self.yaml.get("nc"):
            LOGGER.info(f"Overriding model.yaml nc={self.yaml.get('nc')} with nc={nc}")
            self.yaml["nc"] = nc
        if anchors:
            LOGGER.info(f"Overriding model.yaml anchors with anchors={anchors}")
            self.yaml["anchors"] = round(anchors)
        self.channels = [ch]  # parse_model appends each layer's output channels: channels[i + 1] is layer i's
        self.model, self.save = parse_model(deepcopy(self.yaml), ch=self.channels)
        gates = _gates_in_yaml(self.yaml)  # identity insertion (models/gates.py); None keeps v6.1's module count
        self.gates = build_gates(self, gates) if gates else None
        self.names = [str(i) for i in range(self.yaml["nc"])]
        self.inplace = self.yaml.get("inplace", True)
        self._init_detect(ch)
        self._init_weights()
        if verbose:
            self.info()

    # ------------------------------------------------------------------ construction helpers
    def _init_detect(self, ch: int) -> None:
        m = self.model[-1]
        if not isinstance(m, Detect):
            self.stride = torch.tensor([32.0])
            return
        m.inplace = self.inplace
        s, maps = self.probe_forward()
        m.stride = torch.tensor([s / x.shape[-2] for x in maps])
        m.anchors /= m.stride.view(-1, 1, 1)
        check_anchor_order(m)
        self.stride = m.stride
        self._initialize_biases()

    def probe_forward(self) -> tuple[int, list[torch.Tensor]]:
        """(probe size, the maps Detect gets) from zeros forwards in eval mode (BatchNorm takes a 1x1 map there);
        also run after identity gates are set, so a layer or gate that cannot run is named at build time.

        v6.1 probes at 256 px; strides do not depend on the size, and 64 px (P5 = 2x2) is 16x cheaper. A 1-pixel
        deepest map may be clipped (an input smaller than that level's stride still gives 1 pixel), so the size
        doubles until the deepest map is at least 2x2: then each map is exactly size / stride (P6 at 128, P7 at 256).
        A layer failing on a 1-pixel input (a clipped map meeting an unclipped one) also doubles it; any other
        failure is a wrong yaml and is raised at once, naming the layer.
        """
        s, ch = self._probe_size(), self.yaml["ch"]
        p = next(self.parameters(), None)
        like = dict(device=p.device, dtype=p.dtype) if p is not None else {}
        buffers = {k: v.clone() for k, v in self.named_buffers()}  # the probe must not move any statistics
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                while True:
                    try:
                        maps = self._forward_once(torch.zeros(1, ch, s, s, **like), probe=True)
                    except ModelConfigError as e:  # a clipped 1-pixel map meeting a larger one (P7 at 64 px)
                        if getattr(e, "min_side", 0) > 1 or s >= MAX_PROBE:
                            raise
                        s *= 2
                        continue
                    maps = maps if isinstance(maps, list) else [maps]
                    if min(x.shape[-2] for x in maps) >= 2 or s >= MAX_PROBE:
                        break
                    s *= 2
        finally:
            self.train(was_training)
            self.load_state_dict(buffers, strict=False)
        return s, maps

    def _probe_size(self) -> int:
        """Smallest square input whose P5 map still meets every block's declared min_size."""
        need = max((REGISTRY[m.type].min_size for m in self.model if m.type in REGISTRY), default=1)
        return max(64, 32 * need)

    def _init_weights(self) -> None:
        for layer in self.model:
            spec = REGISTRY.get(getattr(layer, "type", ""))
            if spec is not None and spec.attention and not spec.yolo_init:
                continue  # attention blocks keep their official BN settings (YOLOv5's own C3TR takes v6.1's)
            initialize_weights(layer.modules())

    def _initialize_biases(self, cf=None) -> None:
        """Objectness prior of ~8 objects per 640 image, class prior of 0.6/nc (YOLOv5's init)."""
        m = self.model[-1]
        for mi, s in zip(m.m, m.stride):
            b = mi.bias.view(m.na, -1)
            b.data[:, 4] += math.log(8 / (640 / s) ** 2)
            b.data[:, 5:] += math.log(0.6 / (m.nc - 0.99)) if cf is None else torch.log(cf / cf.sum())
            mi.bias = nn.Parameter(b.view(-1), requires_grad=True)

    # ------------------------------------------------------------------ forward
    def forward(self, x, augment=False, profile=False, visualize=False):
        if augment:
            return self._forward_augment(x)
        return self._forward_once(x)

    def _forward_once(self, x, probe=False):
        """probe=True: layers named on failure, and the head's inputs are returned (the stride probe needs only them)."""
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            if probe and m is self.model[-1]:
                return x
            out = _run_layer_named(m, x) if probe else m(x)
            if self.gates is not None and str(m.i) in self.gates:  # identity insertion: x + g * (block(x) - x)
                out = _run_gate_named(m, self.gates[str(m.i)], x, out) if probe else apply_gate(self.gates[str(m.i)], x, out)
            x = out
            y.append(x if m.i in self.save else None)
        return x

    def _forward_augment(self, x):
        """Test-time augmentation: scales 1, 0.83, 0.67 with a left-right flip at 0.83 (as YOLOv5)."""
        img_size = x.shape[-2:]
        s, f = [1, 0.83, 0.67], [None, 3, None]
        y = []
        for si, fi in zip(s, f):
            xi = scale_img(x.flip(fi) if fi else x, si, gs=int(self.stride.max()))
            yi = self._forward_once(xi)[0]
            y.append(self._descale_pred(yi, fi, si, img_size))
        y = self._clip_augmented(y)
        return torch.cat(y, 1), None

    def _descale_pred(self, p, flips, scale, img_size):
        x, y, wh = p[..., 0:1] / scale, p[..., 1:2] / scale, p[..., 2:4] / scale
        if flips == 2:
            y = img_size[0] - y
        elif flips == 3:
            x = img_size[1] - x
        return torch.cat((x, y, wh, p[..., 4:]), -1)

    def _clip_augmented(self, y):
        """Drop the large-object predictions of the upscaled pass and the small ones of the downscaled pass."""
        nl = self.model[-1].nl
        g = sum(4 ** x for x in range(nl))
        i = (y[0].shape[1] // g) * sum(4 ** x for x in range(1))
        y[0] = y[0][:, :-i]
        i = (y[-1].shape[1] // g) * sum(4 ** (nl - 1 - x) for x in range(1))
        y[-1] = y[-1][:, i:]
        return y

    # ------------------------------------------------------------------ utilities
    def fuse(self, flops: bool = True):
        """Fold every Conv's BatchNorm into its conv (inference only), then print the summary.

        flops=False leaves GFLOPs out of that summary: counting them imports torch's compiler stack and runs a
        640 forward (~3 s on 2 CPU cores), too much for every weights load in val/detect.
        """
        LOGGER.info("Fusing layers... ")
        for m in self.model.modules():
            if isinstance(m, Conv):  # DWConv is a Conv
                m.fuse_bn()
        self.info(imgsz=640 if flops else None)
        return self

    def flop_rules(self) -> dict:
        """FLOP rules for ops torch's counter has no formula for: its blocks' (registered) and the gates'."""
        return {**op_flop_rules(self), **(GATE_FLOP_RULES if self.gates is not None else {})}

    def info(self, verbose=False, imgsz=640):
        from utils.flops import model_info
        line = model_info(self, verbose=verbose, imgsz=imgsz, extra_rules=self.flop_rules())
        gated = gate_summary(self)
        if gated:
            LOGGER.info(gated)
        return f"{line}\n{gated}" if gated else line

    def _apply(self, fn, *args, **kwargs):
        """Keep Detect's stride and cached grids on the model's device/dtype (to(), cuda(), half())."""
        self = super()._apply(fn, *args, **kwargs)
        m = self.model[-1]
        if isinstance(m, Detect) and m.stride is not None:
            m.stride = fn(m.stride)
            m.grid = [torch.empty(0)] * m.nl
            m.anchor_grid = [torch.empty(0)] * m.nl
            self.stride = m.stride
        return self


def check_input_channels(model: nn.Module, channels: int, images: str = "the images") -> None:
    """A model built for `ch:` input channels cannot take images with another count: say so before training
    instead of a convolution error on the first batch."""
    ch = int(getattr(model, "module", model).yaml.get("ch", 3))
    if ch != channels:
        name = getattr(model, "yaml_file", "") or "the model yaml"
        raise ModelConfigError(f"{name} has ch: {ch} (input channels) but {images} have {channels}; "
                               f"set ch: {channels} in the yaml or leave ch out")


MAX_PROBE = 4096  # the largest stride probe (a P12 model); the first probe is 64 px


def _run_layer_named(m: nn.Module, x):
    """Run one layer of the probe pass; a failure names the layer, its row and the input shapes."""
    try:
        return m(x)
    except Exception as e:
        shapes = [tuple(t.shape) for t in x] if isinstance(x, list) else tuple(x.shape)
        err = ModelConfigError(f"layer {m.i} ({m.type}, from {m.f}) failed on input {shapes}: {e}")
        err.min_side = min((min(s[2:]) for s in (shapes if isinstance(x, list) else [shapes]) if len(s) == 4), default=0)
        raise err from e


def _run_gate_named(m: nn.Module, gate: torch.Tensor, x, out):
    try:
        return apply_gate(gate, x, out)
    except Exception as e:
        shapes = f"input {tuple(x.shape)}, output {tuple(out.shape)}, gate {tuple(gate.shape)}"
        raise ModelConfigError(f"{GATE_KEY}: layer {m.i} ({m.type}) cannot start as the identity ({shapes}): {e}") from e


def _gates_in_yaml(d: dict) -> dict:
    """{layer: None} from the yaml's identity_gates list (tensors come with the checkpoint)."""
    listed = d.get(GATE_KEY) or []
    if not isinstance(listed, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in listed):
        raise ModelConfigError(f"{GATE_KEY} must be a list of layer indices, got {listed!r}")
    return {i: None for i in listed}


def main(argv=None):
    p = argparse.ArgumentParser(description="Build a model from its yaml and print the summary with true GFLOPs")
    p.add_argument("--cfg", type=str, default="yolov5s.yaml", help="model.yaml (e.g. yolov5s_TripletAttention.yaml)")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, nargs="+", default=[640], help="input size (h [w])")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the --profile input")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--profile", "--line-profile", action="store_true", help="time (and GFLOPs) of every layer")
    p.add_argument("--test", action="store_true", help="build every yaml in models/ at each scale it declares")
    p.add_argument("--fuse", action="store_true", help="also print the fused summary")
    p.add_argument("--verbose", action="store_true", help="print the per-layer table")
    p.add_argument("--list-blocks", action="store_true", help="list the registered blocks and their facts, then exit")
    opt = p.parse_args(argv)
    if opt.list_blocks:
        print("\n".join(describe_blocks()))
        return None
    import logging

    from utils.torch_utils import select_device
    if opt.verbose:
        LOGGER.setLevel(logging.DEBUG)
    if opt.test:
        from models.yolo_tools import build_every_yaml
        if any(r.error for r in build_every_yaml(model_cls=Model)):
            raise SystemExit(1)
        return None
    device = select_device(opt.device, batch_size=opt.batch_size)
    model = Model(opt.cfg).to(device)  # a missing or bad yaml is a user error: one line through run_cli
    imgsz = opt.imgsz if len(opt.imgsz) > 1 else opt.imgsz * 2
    model.info(verbose=opt.verbose, imgsz=imgsz)
    if opt.profile:
        from models.yolo_tools import profile_layers
        profile_layers(model, torch.rand(opt.batch_size, model.yaml["ch"], *imgsz[:2], device=device))
    if opt.fuse:
        model.eval()
        model.fuse()
    return model


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main)
