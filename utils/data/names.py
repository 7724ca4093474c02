"""Class names in one form: a list of strings indexed by class id."""
from __future__ import annotations


def names_list(names, nc: int | None = None) -> list[str]:
    """A list, a tuple or an {id: name} map (v6.1 exports and later checkpoints store maps) -> list of str in id
    order. With `nc`, names that are missing or of another length give YOLOv5's default names '0'..'nc-1'."""
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    names = [str(n) for n in (names or [])]
    if nc is not None and len(names) != nc:
        return [str(i) for i in range(nc)]
    return names
