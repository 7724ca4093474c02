"""Block registry: the yaml module name -> how to build it.

Every block a model yaml may name is registered here with a *build rule*: a function that gets the
layer's context (input channels, yaml args, depth-scaled repeats, width multiple) and returns the
constructor arguments and the output channel count. `parse_model` only walks the yaml and asks the
registry, so adding a block is one file plus one `@register(...)` line, never an edit of the parser.

A registration holds every fact about a block, and nothing else in the tree repeats one:
  build        the rule (yaml args -> constructor call, output channels)
  attention    keeps its own init (YOLOv5's BN re-init skips it)
  min_size     smallest feature-map side it runs on (1 unless said)
  min_opset    smallest ONNX opset it exports with (export names the layer when asked for less)
  flops        analytic FLOPs(module, input_shape), checked against torch's counter by the tests
  op_flops     FLOP rules for ops torch's counter has none for ({op: rule}); Model.info passes them on
  reference    paper, official code, and what differs from it
utils/ cannot import this package, so the models side reads these facts here and passes them in
(`opset_needs(model)` to the export checks, `op_flop_rules(model)` to the FLOP counter).

The rules most blocks need are factories below:
  out_channels()   YOLOv5 convention `[c2, *rest]` -> `cls(c1, c2, *rest)`, c2 width-scaled
  same_channels()  channel-preserving blocks (attention): input channels come from the graph
  concat_channels() / passthrough() / detect_head() / contract() / expand()
and the pieces their `adapt` hooks share: bind_arguments() (yaml args -> {name: value}, checked against
the signature), given_value(), needs_units() (a reduction must leave a unit), chain().
"""
from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

from utils.cli import UserError

# The largest model a yaml may ask for, far above YOLOv5x (25 layers, 1280 channels, 12 repeats after depth
# scaling) and far below what a typo or a hostile checkpoint's yaml (200000 repeats, 1e6 channels) would
# allocate. parse_model checks them before building each layer.
MAX_LAYERS = 1000
MAX_REPEATS = 100
MAX_CHANNELS = 16384


class ModelConfigError(UserError, ValueError):
    """A model yaml that cannot be built; the message names the layer and the row as written."""


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


@dataclass
class LayerContext:
    """Everything a build rule may read about the layer being built."""
    index: int
    row: str  # the yaml row as written, for messages
    ch_in: list[int]  # channels of each input (one entry per `from`)
    args: list  # yaml args with 'nc', 'anchors', 'None' resolved
    n: int  # repeats after depth scaling
    width: float  # width multiple
    depth: float
    nc: int
    anchors: Any
    scale_name: str = ""  # n/s/m/l/x when known, for messages

    @property
    def c1(self) -> int:
        return self.ch_in[0]

    def scale(self, channels: int) -> int:
        """Width-scale a channel count written for width 1.0, as YOLOv5 does."""
        return make_divisible(channels * self.width, 8)

    def error(self, cause: str) -> ModelConfigError:
        scale = f" at scale {self.scale_name}" if self.scale_name else ""
        return ModelConfigError(f"layer {self.index}{scale}, row {self.row}: {cause}")


@dataclass
class Built:
    """What a build rule returns: constructor call and the layer's output channels."""
    args: list
    c2: int
    kwargs: dict = field(default_factory=dict)
    n: int = 1  # how many copies of the module to stack (1 when the block consumes repeats itself)


@dataclass(frozen=True)
class Reference:
    """Where a block comes from: the paper, the official code (repo and file), and what differs here."""
    paper: str
    code: str
    differs: str = "nothing: official numerics"


@dataclass(frozen=True)
class BlockSpec:
    name: str
    cls: type
    build: Callable[[LayerContext], Built]
    attention: bool = False  # keeps its own init: YOLOv5's BN eps/momentum re-init is skipped inside it
    yolo_init: bool = False  # an official YOLOv5 block (C3TR): the re-init applies even when attention=True
    min_size: int = 1  # smallest feature-map side the block runs on
    min_opset: int | None = None  # smallest ONNX opset its export needs; None: any the exporter takes
    flops: Callable | None = None  # analytic FLOPs(module, input_shape) -> int, checked by tests
    op_flops: dict = field(default_factory=dict, hash=False)  # {op packet: rule} for ops torch's counter lacks
    reference: Reference | None = None

    @property
    def family(self) -> str:
        """The file the block lives in (models/attention/<family>.py, models/blocks/<family>.py); 'yolov5' for the
        core blocks of models/common.py."""
        module = self.cls.__module__
        if module.startswith(("models.attention.", "models.blocks.")):
            return module.rsplit(".", 1)[-1]
        return "torch" if module.startswith("torch.") else "yolov5"


REGISTRY: dict[str, BlockSpec] = {}


def register(name: str | None = None, *, build: Callable[[LayerContext], Built], **meta):
    """Class decorator: `@register(build=same_channels(1), attention=True)`."""
    def deco(cls):
        key = name or cls.__name__
        if key in REGISTRY and REGISTRY[key].cls is not cls:
            raise ValueError(f"block name {key!r} is registered twice ({REGISTRY[key].cls} and {cls})")
        REGISTRY[key] = BlockSpec(key, cls, build, **meta)
        return cls
    return deco


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def lookup(name: str, ctx: LayerContext | None = None) -> BlockSpec:
    """Find a block by its yaml name; `nn.X` resolves to torch.nn.X without eval."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith("nn."):
        cls = getattr(nn, name[3:], None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return BlockSpec(name, cls, passthrough())
    close = difflib.get_close_matches(name, list(REGISTRY) + ["nn.Upsample", "nn.Identity"], n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    cause = f"unknown module {name!r}{hint}"
    raise ctx.error(cause) if ctx else ModelConfigError(cause)


def check_call(cls: type, built: Built, ctx: LayerContext) -> None:
    """Catch a wrong argument count here, with the layer named, instead of deep inside __init__."""
    try:
        inspect.signature(cls).bind(*built.args, **built.kwargs)
    except TypeError as e:
        raise ctx.error(f"bad arguments for {cls.__name__}{inspect.signature(cls)}: {e}") from None
    except ValueError:  # some builtins have no signature; let the call itself decide
        pass


# ----------------------------------------------------------------------------- the facts of a model's blocks

def registered_blocks(model: nn.Module) -> list[tuple[str, BlockSpec]]:
    """(qualified module name, registration) of every module in `model` whose class is registered, outermost
    first. Found by class, so blocks nested in others and blocks outside a yaml-built model count too."""
    by_class: dict[type, BlockSpec] = {}
    for spec in REGISTRY.values():
        by_class.setdefault(spec.cls, spec)  # aliases (ECA / eca_layer) share one class and its facts
    return [(name, by_class[type(m)]) for name, m in model.named_modules() if type(m) in by_class]


def opset_needs(model: nn.Module) -> list[tuple[str, str, int]]:
    """[(qualified module name, block class, min opset)] for every registered block that declares one; a block
    inside one already listed with at least its opset is left out (the outer entry names the layer)."""
    needs: list[tuple[str, str, int]] = []
    for name, spec in registered_blocks(model):
        if spec.min_opset is None:
            continue
        covered = any(name.startswith(f"{outer}." if outer else "") and need >= spec.min_opset
                      for outer, _, need in needs)
        if not covered:
            needs.append((name, spec.cls.__name__, spec.min_opset))
    return needs


def op_flop_rules(model: nn.Module) -> dict:
    """The FLOP rules (`op_flops`) of every registered block in `model`, for utils.flops.count_flops."""
    rules: dict = {}
    for _, spec in registered_blocks(model):
        rules.update(spec.op_flops)
    return rules


def describe_blocks() -> list[str]:
    """One line per registered yaml name: family, min ONNX opset, min size, reference."""
    lines = [f"{'name':<24} {'family':<13} {'opset':<6} {'size':<5} reference"]
    for name in sorted(REGISTRY, key=lambda n: (REGISTRY[n].family, n.lower())):
        spec, ref = REGISTRY[name], REGISTRY[name].reference
        opset = f"{spec.min_opset}+" if spec.min_opset else "-"
        about = f"{ref.paper} | {ref.code} | differs: {ref.differs}" if ref else "-"
        lines.append(f"{name:<24} {spec.family:<13} {opset:<6} {spec.min_size:<5} {about}")
    return lines


# ----------------------------------------------------------------------------- pieces of adapt hooks

def bind_arguments(ctx: LayerContext, cls: type, args: list, kwargs: dict) -> dict:
    """The yaml's positional and keyword arguments as {parameter name: value}, checked against cls's signature.

    Too many positions, an unknown name, or a name also given by position raise ctx.error with the layer named.
    """
    params = inspect.signature(cls).parameters.values()
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    by_name = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if len(args) > len(positional):
        raise ctx.error(f"{cls.__name__} takes at most {len(positional)} positional arguments {positional}, "
                        f"got {len(args)}")
    given = dict(zip(positional, args))
    for key, value in kwargs.items():
        if key not in by_name:
            raise ctx.error(f"{cls.__name__} has no argument {key!r} (arguments: {by_name})")
        if key in given:
            raise ctx.error(f"{cls.__name__} argument {key!r} given both by position and by name")
        given[key] = value
    return given


def given_value(args: list, kwargs: dict, name: str, position: int, default=None):
    """A constructor argument as the yaml row gives it: at `position`, else by `name`, else `default`."""
    return args[position] if len(args) > position else kwargs.get(name, default)


def needs_units(block: str, param: str, position: int, default: int, units: str = "hidden units",
                unless: tuple[str, int] | None = None):
    """adapt check for a channel reduction (C -> C // r): r must be a positive integer leaving at least one unit
    for the layer's input channels. `unless=(name, position)`: skipped when that argument (e.g. SE's explicit
    squeeze_channels) is given, since it replaces the reduction."""
    def check(ctx: LayerContext, args: list, kwargs: dict) -> None:
        if unless and given_value(args, kwargs, *unless):
            return
        r = given_value(args, kwargs, param, position, default)
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ctx.error(f"{block} {param}={r!r} must be a positive integer")
        if ctx.c1 // r < 1:
            raise ctx.error(f"{block} {param}={r} leaves no {units} for {ctx.c1} input channels")
    return check


def chain(*adapts: Callable[[LayerContext, list, dict], None]):
    """One adapt hook that runs several in order (derive defaults first, then check them)."""
    def adapt(ctx: LayerContext, args: list, kwargs: dict) -> None:
        for step in adapts:
            step(ctx, args, kwargs)
    return adapt


# ----------------------------------------------------------------------------- build rules

def out_channels(repeats: bool = False):
    """`[c2, *rest]` -> cls(c1, c2, *rest); with repeats the yaml `n` goes in as the 3rd argument."""
    def build(ctx: LayerContext) -> Built:
        if not ctx.args:
            raise ctx.error("expected the output channels as the first argument")
        c2 = ctx.args[0]
        if not isinstance(c2, int):
            raise ctx.error(f"output channels must be an integer, got {c2!r}")
        c2 = ctx.scale(c2)
        args = [ctx.c1, c2, *ctx.args[1:]]
        if repeats:
            args.insert(2, ctx.n)
            return Built(args, c2, n=1)
        return Built(args, c2, n=ctx.n)
    return build


def _split_kwargs(args: list) -> tuple[list, dict]:
    """A trailing mapping in the yaml args holds keyword arguments: `[7, {head: 8}]`."""
    if args and isinstance(args[-1], dict):
        return list(args[:-1]), dict(args[-1])
    return list(args), {}


def same_channels(channel_params: int = 0, adapt: Callable[[LayerContext, list, dict], None] | None = None):
    """Channel-preserving block: output channels equal input channels.

    `channel_params` is how many leading constructor arguments are channel counts (e.g. 1 for
    `TripletAttention(gate_channels, ...)`, 2 for `ACmix(in_planes, out_planes, ...)`). In the yaml those
    positions may be left out (empty args), written as None (taken from the graph), or written as the
    width-1.0 number, which is width-scaled and must equal the input channels. `adapt(ctx, args, kwargs)`
    may rewrite the arguments per scale (derive heads, check divisibility) and raises via ctx.error.
    """
    def build(ctx: LayerContext) -> Built:
        args, kwargs = _split_kwargs(ctx.args)
        c1 = ctx.c1
        chans, rest = args[:channel_params], args[channel_params:]
        chans = chans + [None] * (channel_params - len(chans))
        resolved = []
        for written in chans:
            if written is None:
                resolved.append(c1)
                continue
            if not isinstance(written, int):
                raise ctx.error(f"channel argument must be an integer or None, got {written!r}")
            scaled = ctx.scale(written)
            if scaled != c1:
                raise ctx.error(f"channel mismatch: the row says {written} channels (x{ctx.width:g} width = {scaled}) "
                                f"but its input has {c1}; write None or leave it out to take the input's")
            resolved.append(scaled)
        args = resolved + rest
        if adapt:
            adapt(ctx, args, kwargs)
        return Built(args, c1, kwargs, n=ctx.n)
    return build


def passthrough():
    """Layers that keep channels and take yaml args verbatim (nn.Upsample, nn.Identity, ...)."""
    def build(ctx: LayerContext) -> Built:
        args, kwargs = _split_kwargs(ctx.args)
        return Built(args, ctx.c1, kwargs, n=ctx.n)
    return build


def batchnorm():
    def build(ctx: LayerContext) -> Built:
        return Built([ctx.c1], ctx.c1, n=ctx.n)
    return build


def concat_channels():
    def build(ctx: LayerContext) -> Built:
        return Built(list(ctx.args), sum(ctx.ch_in), n=1)
    return build


def contract():
    def build(ctx: LayerContext) -> Built:
        gain = ctx.args[0] if ctx.args else 2
        return Built(list(ctx.args), ctx.c1 * gain ** 2, n=1)
    return build


def expand():
    def build(ctx: LayerContext) -> Built:
        gain = ctx.args[0] if ctx.args else 2
        if ctx.c1 % gain ** 2:
            raise ctx.error(f"Expand({gain}) needs input channels divisible by {gain ** 2}, got {ctx.c1}")
        return Built(list(ctx.args), ctx.c1 // gain ** 2, n=1)
    return build


def detect_head():
    """`[nc, anchors]` -> Detect(nc, anchors, ch); an int anchors means that many anchors per level."""
    def build(ctx: LayerContext) -> Built:
        if not ctx.args:
            raise ctx.error("Detect needs [nc, anchors]")
        nc, anchors = ctx.args[0], ctx.args[1] if len(ctx.args) > 1 else ctx.anchors
        if isinstance(anchors, int):
            anchors = [list(range(anchors * 2))] * len(ctx.ch_in)
        if len(anchors) != len(ctx.ch_in):
            raise ctx.error(f"Detect has {len(ctx.ch_in)} inputs but {len(anchors)} anchor levels")
        return Built([nc, anchors, list(ctx.ch_in), *ctx.args[2:]], 0, n=1)
    return build
