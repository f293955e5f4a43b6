"""Hidden states kept for later, in memory up to a byte budget and in memory-mapped files beyond it.

    store = StateStore(budget=2**30)       # None: no budget, all in memory
    store.put(("entry", 3, "mlp", 0), hidden)
    hidden = store.get(("entry", 3, "mlp", 0))   # the same values, wherever they were kept
    store.close()                          # deletes the files

A tensor goes to memory if it fits what is left of the budget, else to its own file in a temporary
directory (under $TMPDIR); reading a spilled tensor maps its file privately, so its pages are held
only while the returned tensor lives. The layer-by-layer engine keeps the residual stream entering
every block here (`measure/layerwise.py`).

The files can be gigabytes, so they never outlive the store: `close()` (and `with StateStore(...)`)
deletes them, and so does the store's finalizer when it is collected or the interpreter exits, after an
exception or a signal (the CLI turns SIGTERM and SIGHUP into one) that skipped a `close()`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from qprune.errors import QpruneError


@dataclass(frozen=True)
class _Spilled:
    path: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * self.dtype.itemsize


class StateStore:
    """Tensors by key, in memory within `budget` bytes and on disk beyond it; see the module docstring."""

    def __init__(self, budget: int | None = None) -> None:
        self.budget = budget
        self.resident_bytes = 0
        self.spilled_bytes = 0  # on disk now
        self.written_bytes = 0  # ever written to disk: the traffic spilling cost
        self._items: dict[Hashable, torch.Tensor | _Spilled] = {}
        self._dir: str | None = None
        self._cleanup: weakref.finalize | None = None
        self._count = 0

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def put(self, key: Hashable, tensor: torch.Tensor) -> None:
        self.discard(key)
        nbytes = tensor.numel() * tensor.element_size()
        if self.budget is None or self.resident_bytes + nbytes <= self.budget:
            self._items[key] = tensor
            self.resident_bytes += nbytes
            return
        self._count += 1
        data = tensor.detach().to("cpu").contiguous()
        try:
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="qprune-states-")
                self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
            path = os.path.join(self._dir, f"{self._count}.bin")
            data.view(torch.uint8).numpy().tofile(path)  # raw bytes, any dtype (numpy has no bfloat16)
        except OSError as error:  # a full or read-only disk
            where = self._dir or tempfile.gettempdir()
            raise QpruneError(
                f"cannot spill states to {where} ({error.strerror or error}): give TMPDIR a disk with "
                "room, or more {max_memory}"
            ) from None
        self._items[key] = _Spilled(path, tuple(tensor.shape), tensor.dtype, tensor.device)
        self.spilled_bytes += nbytes
        self.written_bytes += nbytes

    def get(self, key: Hashable) -> torch.Tensor:
        item = self._items[key]
        if isinstance(item, torch.Tensor):
            return item
        raw = torch.from_file(item.path, shared=False, size=item.nbytes, dtype=torch.uint8)
        return raw.view(item.dtype).view(item.shape).to(item.device)

    def pop(self, key: Hashable) -> torch.Tensor:
        tensor = self.get(key)
        self.discard(key)
        return tensor

    def discard(self, key: Hashable) -> None:
        item = self._items.pop(key, None)
        if isinstance(item, torch.Tensor):
            self.resident_bytes -= item.numel() * item.element_size()
        elif item is not None:
            os.unlink(item.path)
            self.spilled_bytes -= item.nbytes

    def close(self) -> None:
        self._items.clear()
        self.resident_bytes = self.spilled_bytes = 0
        if self._cleanup is not None:
            self._cleanup()  # removes the directory, once
            self._cleanup = self._dir = None
