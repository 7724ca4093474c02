"""Attention blocks, one file per family. Importing this package registers every block."""
import importlib
import pkgutil

__all__: list[str] = []

# Each family module lists its public blocks in __all__; import them all so registration happens
# and `from models.common import TripletAttention` works without editing this file.
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    _mod = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_mod, "__all__", []):
        globals()[_name] = getattr(_mod, _name)
        __all__.append(_name)
