"""Import official YOLOv5 (v6.x / v7.0) `.pt` pickles without their code and without running pickled code.

An official checkpoint is a torch zip archive whose `data.pkl` pickles whole `models.yolo.Model` objects.
A plain `torch.load` would import and call whatever the pickle names. Here the archive is read with
`zipfile`, and `SafeUnpickler` resolves every global through an allow-list: module classes become inert
stand-ins (`Inert` objects that only store their state), tensors are rebuilt from the raw storage bytes
with `torch.frombuffer` + `as_strided`, and a few plain data types map to harmless builtins. Any other
global (os.system, builtins.eval, subprocess.Popen, ...) raises `UnsafeCheckpointError` naming it before
it can be called. The stand-in tree is then walked into a plain state_dict.

Our own format is read the same way (utils/checkpoint.py), so every hostile file meets the same checks,
each made before memory is spent: no zip record may be compressed (torch never compresses, and a deflated
record is how a 1.5 MB file asks for gigabytes), a storage record must hold exactly the bytes its pickle
declares, a tensor view must stay inside its storage (and may repeat elements only up to
MAX_OVERLAP_ELEMENTS), and the unpickled structure may neither contain itself nor expand past MAX_NODES
containers or MAX_DEPTH levels.
"""
from __future__ import annotations

import collections
import io
import math
import pickle
import re
import sys
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from utils.cli import UserError
from utils.data.names import names_list
from utils.plain import to_plain

# What a checkpoint may ask for before anything is allocated (see the module docstring).
MAX_OVERLAP_ELEMENTS = 1 << 24  # a view repeating storage elements (stride 0, as expand() saves) stays below this
MAX_NODES = 2_000_000  # containers in the unpickled structure, counted along every path (official yolov5x: ~30k)
MAX_DEPTH = 200  # nesting levels (a pickled YOLOv5 model: ~30)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be read; the message names the file."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A pickle that references something outside the allow-list; nothing from it was run."""


# ----------------------------------------------------------------------------- inert stand-ins

class Inert:
    """Stand-in for a pickled class: records constructor args and state, never runs anything."""
    qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["_pickle_args"] = args
        return obj

    def __init__(self, *args, **kwargs):  # REDUCE calls the class like a function
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_pickle_state"] = state

    def __repr__(self):
        return f"<inert {self.qualname}>"


_INERT_CLASSES: dict[str, type] = {}


def _inert_class(qualname: str) -> type:
    if qualname not in _INERT_CLASSES:
        name = qualname.rsplit(".", 1)[-1]
        _INERT_CLASSES[qualname] = type(name, (Inert,), {"qualname": qualname})
    return _INERT_CLASSES[qualname]


# Module classes the YOLOv5 pickles name. Any CamelCase class under these packages becomes an inert stand-in.
_INERT_PACKAGES = re.compile(r"^(models\.(yolo|common|experimental)|torch\.nn\.modules\.\w+)$")
_CLASS_NAME = re.compile(r"^[A-Z][A-Za-z0-9_]*$")

_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}


class StorageType:
    """What `torch.HalfStorage` etc. resolve to: only the dtype is needed to read the bytes."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


# ----------------------------------------------------------------------------- safe rebuild functions

def _check_view(storage_numel: int, offset, size, stride) -> None:
    """The view (offset, size, stride) must address elements of its storage only, without repeating them
    beyond MAX_OVERLAP_ELEMENTS: a stride-0 view of one element can declare 1e12 of them, and the first
    copy (.half(), .to(), load_state_dict) would try to allocate them all."""
    if not all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)) or len(size) != len(stride):
        raise CheckpointError(f"tensor with an invalid view: offset {offset!r}, size {size!r}, stride {stride!r}")
    numel = math.prod(size)
    if numel == 0:
        return
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage_numel:
        raise CheckpointError(f"tensor of size {tuple(size)} reaches element {last} of a storage of {storage_numel}")
    if numel > max(storage_numel, MAX_OVERLAP_ELEMENTS):
        raise CheckpointError(f"tensor of size {tuple(size)} declares {numel:.3g} elements over a storage of "
                              f"{storage_numel} (a repeating view); refused before allocating it")


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, torch.Tensor):
        raise UnsafeCheckpointError(f"tensor rebuild got {type(storage).__name__} instead of a storage")
    size, stride = tuple(size), tuple(stride)
    _check_view(storage.numel(), storage_offset, size, stride)
    if storage.numel() == 0:  # only an empty tensor can get here
        return torch.empty(size, dtype=storage.dtype)
    return torch.as_strided(storage, size, stride, storage_offset)


def _rebuild_legacy_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data  # a Parameter is only its tensor for our purposes


def _rebuild_from_type(func, new_type, args, state):
    if func not in (_rebuild_tensor, _rebuild_legacy_tensor, _rebuild_parameter):
        raise UnsafeCheckpointError(f"refusing _rebuild_from_type_v2 with {func!r}")
    return func(*args)


def _reconstructor(cls, base, state):
    """copyreg._reconstructor for protocol < 2: only inert stand-ins may be created this way."""
    if isinstance(cls, type) and issubclass(cls, Inert):
        return cls.__new__(cls)
    raise UnsafeCheckpointError(f"refusing copyreg._reconstructor for {cls!r}")


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafeCheckpointError(f"refusing numpy scalar of dtype {dtype!r}")
    return np.frombuffer(data, dtype=dtype)[0].item()


def _numpy_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str):
        raise UnsafeCheckpointError(f"refusing numpy dtype spec {spec!r}")
    return np.dtype(spec)


def _path_as_str(*parts):
    return str(PurePosixPath(*[str(p) for p in parts]))


def _torch_size(*args):
    return torch.Size(*args)


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
    ("builtins", "slice"): slice, ("__builtin__", "slice"): slice,
    ("copyreg", "_reconstructor"): _reconstructor, ("copy_reg", "_reconstructor"): _reconstructor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_legacy_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Size"): _torch_size,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar, ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("pathlib", "PosixPath"): _path_as_str, ("pathlib", "WindowsPath"): _path_as_str,
    ("pathlib._local", "PosixPath"): _path_as_str, ("pathlib._local", "WindowsPath"): _path_as_str,
}
_SAFE_GLOBALS.update({("torch", k): StorageType(v) for k, v in _STORAGE_DTYPES.items()})
_SAFE_GLOBALS.update({("torch", str(d).split(".")[-1]): d for d in (
    torch.float16, torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool)})


def resolve_global(module: str, name: str):
    """The allow-list: an inert stand-in, a safe function, or UnsafeCheckpointError naming the global."""
    if (module, name) in _SAFE_GLOBALS:
        return _SAFE_GLOBALS[(module, name)]
    if _INERT_PACKAGES.match(module) and _CLASS_NAME.match(name):
        return _inert_class(f"{module}.{name}")
    raise UnsafeCheckpointError(f"the pickle references {module}.{name}, which is not an allowed class or function "
                                f"(refused; nothing from the file was run)")


# ----------------------------------------------------------------------------- unpickler over the zip

class SafeUnpickler(pickle.Unpickler):
    """Unpickler whose globals come only from `resolve_global` and whose storages come from the zip."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.source = archive, prefix, source
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module, name):
        return resolve_global(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"unexpected persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType):
            raise UnsafeCheckpointError(f"persistent id names {storage_type!r} instead of a storage type")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = self._read_storage(key, storage_type.dtype, int(numel))
        return self.storages[key]

    def _read_storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        """The storage's bytes, after checking the record holds exactly what the pickle declares (and is
        stored, not compressed: open_archive), so the read costs what the file itself costs."""
        name = f"{self.prefix}data/{key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise CheckpointError(f"{self.source}: storage {name} is missing from the archive") from None
        nbytes = numel * torch.empty(0, dtype=dtype).element_size()
        if numel < 0 or info.file_size != nbytes:
            raise CheckpointError(f"{self.source}: storage {name} has {info.file_size} bytes, but its pickle declares "
                                  f"{numel} elements ({nbytes} bytes)")
        if numel == 0:
            return torch.empty(0, dtype=dtype)
        buf = bytearray(nbytes)
        with self.archive.open(info) as f:
            if f.readinto(buf) != nbytes:
                raise CheckpointError(f"{self.source}: storage {name} is cut short")
        return torch.frombuffer(buf, dtype=dtype)


def open_archive(path: Path) -> tuple[zipfile.ZipFile, str]:
    """Open a torch zip checkpoint; return (zip, record prefix such as 'archive/')."""
    try:
        zf = zipfile.ZipFile(path)
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable torch zip checkpoint (corrupt or truncated?): {e}") from None
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if not pkl:
        zf.close()
        raise CheckpointError(f"{path}: zip archive has no <name>/data.pkl record, so it is not a torch checkpoint")
    packed = [i.filename for i in zf.infolist() if i.compress_type != zipfile.ZIP_STORED or i.file_size != i.compress_size]
    if packed:  # torch stores every record as is; a compressed one can expand to any size when read
        zf.close()
        raise CheckpointError(f"{path}: record {packed[0]} is zip-compressed, which torch never writes (a "
                              f"decompression bomb?); refused without reading it")
    prefix = pkl[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").strip() != b"little" \
            and sys.byteorder == "little":
        zf.close()
        raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
    return zf, prefix


def unpickle_archive(path: str | Path) -> object:
    """Unpickle a torch zip checkpoint through the allow-list; module objects come back as `Inert` trees."""
    path = Path(path)
    zf, prefix = open_archive(path)
    with zf:
        try:
            data = zf.read(f"{prefix}data.pkl")
            top = SafeUnpickler(data, zf, prefix, str(path)).load()
        except CheckpointError as e:
            raise type(e)(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, KeyError, IndexError,
                AttributeError, OverflowError, RuntimeError, MemoryError) as e:  # what damaged bytes can raise
            raise CheckpointError(f"{path}: corrupt checkpoint pickle: {type(e).__name__}: {e}") from None
    check_structure(top, str(path))
    return top


def _containers_in(x) -> list | None:
    """The items of a container (a stand-in's state included); None for a leaf."""
    if isinstance(x, dict):
        items = [*x.keys(), *x.values()]
    elif isinstance(x, (list, tuple, set, frozenset)):
        items = list(x)
    elif isinstance(x, Inert):
        items = list(vars(x).values())
    else:
        return None
    return [i for i in items if isinstance(i, (dict, list, tuple, set, frozenset, Inert))]


def check_structure(top, source: str, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a structure that contains itself, or that shared references expand past max_nodes containers
    (walked iteratively, so neither case can end in a RecursionError or an exponential walk later)."""
    on_path: set[int] = set()
    stack, nodes = [(top, 0, False)], 0
    while stack:
        x, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(x))
            continue
        children = _containers_in(x)
        if children is None:
            continue
        if id(x) in on_path:
            raise CheckpointError(f"{source}: the pickle holds a {type(x).__name__} that contains itself; refused")
        nodes += 1
        if nodes > max_nodes or depth > max_depth:
            raise CheckpointError(f"{source}: the pickle's structure is larger than a checkpoint's (over "
                                  f"{max_nodes} containers or {max_depth} levels deep); refused")
        on_path.add(id(x))
        stack.append((x, depth, True))
        stack.extend((c, depth + 1, False) for c in children)


# ----------------------------------------------------------------------------- stand-in tree -> plain data

def inert_state_dict(module: Inert, prefix: str = "") -> dict[str, torch.Tensor]:
    """state_dict of an inert nn.Module tree: parameters, persistent buffers, then children, as torch orders them."""
    out: dict[str, torch.Tensor] = {}
    skip = set(getattr(module, "_non_persistent_buffers_set", set()) or ())
    for name, t in (getattr(module, "_parameters", None) or {}).items():
        if t is not None:
            out[prefix + name] = t
    for name, t in (getattr(module, "_buffers", None) or {}).items():
        if t is not None and name not in skip:
            out[prefix + name] = t
    for name, child in (getattr(module, "_modules", None) or {}).items():
        if child is not None:
            out.update(inert_state_dict(child, f"{prefix}{name}."))
    return out


def module_summary(module: Inert, source: str, key: str) -> dict:
    """yaml, state_dict, names and stride of one pickled YOLOv5 model object."""
    if not isinstance(module, Inert) or not hasattr(module, "_modules"):
        raise CheckpointError(f"{source}: '{key}' is {type(module).__name__}, not a pickled YOLOv5 model")
    yaml = getattr(module, "yaml", None)
    if not isinstance(yaml, dict):
        raise CheckpointError(f"{source}: the pickled {module.qualname} has no yaml dict, so it cannot be rebuilt")
    sd = inert_state_dict(module)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries {bad[:3]} of '{key}' are not tensors")
    stride = getattr(module, "stride", None)
    stride = [float(s) for s in stride.tolist()] if isinstance(stride, torch.Tensor) else None
    return {"yaml": dict(yaml), "state_dict": sd, "names": names_list(getattr(module, "names", None), yaml.get("nc", 0)),
            "stride": stride, "class": module.qualname}


def _describe_stand_in(x) -> str:
    """Metadata objects that are not plain data (pickled classes) become a short description."""
    return f"<{x.qualname}>" if isinstance(x, Inert) else f"<{type(x).__name__}>"


def official_from_pickle(top, source: str | Path) -> dict:
    """Plain data from an unpickled official checkpoint: model/ema summaries plus the checkpoint's metadata."""
    if isinstance(top, Inert):  # a bare pickled model (torch.save(model))
        top = {"model": top}
    if not isinstance(top, dict):
        raise CheckpointError(f"{source}: expected a checkpoint dict, found {type(top).__name__}")
    model_obj, ema_obj = top.get("model"), top.get("ema")
    if model_obj is None and ema_obj is None:
        raise CheckpointError(f"{source}: has neither 'model' nor 'ema' (keys: {sorted(map(str, top))})")
    main = module_summary(model_obj if model_obj is not None else ema_obj, str(source), "model")
    ema = None
    if ema_obj is not None and model_obj is not None:
        ema = module_summary(ema_obj, str(source), "ema")["state_dict"]
    meta = {k: to_plain(v, k, unknown=_describe_stand_in) for k, v in top.items() if k not in ("model", "ema")}
    return {**main, "ema": ema, "meta": meta}


def is_official_pickle(top) -> bool:
    """True for what `unpickle_archive` returns from an official file: a pickled model or a dict holding one."""
    if isinstance(top, Inert):
        return True
    return isinstance(top, dict) and any(isinstance(top.get(k), Inert) for k in ("model", "ema"))
