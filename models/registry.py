"""Block registry: the yaml module name -> how to build it.

Every block a model yaml may name is registered here with a *build rule*: a function that gets the
layer's context (input channels, yaml args, depth-scaled repeats, width multiple) and returns the
constructor arguments and the output channel count. `parse_model` only walks the yaml and asks the
registry, so adding a block is one file plus one `@register(...)` line, never an edit of the parser.

The rules most blocks need are factories below:
  out_channels()   YOLOv5 convention `[c2, *rest]` -> `cls(c1, c2, *rest)`, c2 width-scaled
  same_channels()  channel-preserving blocks (attention): input channels come from the graph
  concat_channels() / passthrough() / detect_head() / contract() / expand()
"""
from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn


class ModelConfigError(ValueError):
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
class BlockSpec:
    name: str
    cls: type
    build: Callable[[LayerContext], Built]
    attention: bool = False  # keeps its own init: YOLOv5's BN eps/momentum re-init is skipped inside it
    yolo_init: bool = False  # an official YOLOv5 block (C3TR): the re-init applies even when attention=True
    min_size: int = 1  # smallest feature-map side the block runs on
    flops: Callable | None = None  # analytic FLOPs(module, input_shape) -> int, checked by tests
    doc: str = ""


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
