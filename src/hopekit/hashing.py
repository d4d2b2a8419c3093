"""Content digests of tensors and plain containers: checkpoints' content hash, the training-data
fingerprint and the model digest that records carry all use :func:`digest`."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

__all__ = ["digest", "feed"]


def digest(obj: Any) -> str:
    """``"sha256:<hex>"`` of ``obj`` (see :func:`feed`): equal for equal content, whatever the device."""
    h = hashlib.sha256()
    feed(h, obj)
    return "sha256:" + h.hexdigest()


def feed(h: "hashlib._Hash", obj: Any) -> None:
    """Feed ``obj`` to ``h`` deterministically: tensors by dtype, shape and raw bytes; dicts in key
    order; lists and tuples in order; anything else by type name and ``repr``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(f"K{k!r}".encode())
            feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        if all(type(x) in (int, float, bool, str) or x is None for x in obj):
            h.update(f"{type(obj).__name__}{obj!r}".encode())  # long plain lists (losses, RNG state) in one go
        else:
            h.update(f"{type(obj).__name__}{len(obj)}".encode())
            for x in obj:
                feed(h, x)
    else:
        h.update(f"{type(obj).__name__}:{obj!r}".encode())
