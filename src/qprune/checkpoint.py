"""Streaming safetensors I/O and atomic output directories.

Pruning never builds the model and never decodes a tensor: it reads the safetensors headers of the
source shards (`read_checkpoint`), then copies the bytes of the kept tensors straight into new
shards (`write_shards`), a bounded chunk at a time. Memory stays flat whatever the model's size,
the dtype is preserved bit for bit, and torch is never imported.

`atomic_output(out, force)` gives a temporary directory beside OUT and moves it into place only when
everything has been written, so a failure leaves nothing half-written and an existing OUT is never
replaced without `force`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import QpruneError

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
_COPY_CHUNK = 16 << 20
_MAX_HEADER = 100 << 20  # safetensors' own limit


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes lie in a safetensors file."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> list[TensorEntry]:
    """The tensors of one safetensors file, checked against the file's size (catches truncation)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            (header_len,) = struct.unpack("<Q", prefix) if len(prefix) == 8 else (None,)
            if header_len is None or header_len > min(_MAX_HEADER, size - 8):
                raise QpruneError(f"{path} is not a safetensors file or is truncated")
            header = json.loads(f.read(header_len))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise QpruneError(f"cannot read safetensors header of {path}: {error}") from None
    base = 8 + header_len
    entries, data_end = [], 0
    try:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            entries.append(TensorEntry(name, path, info["dtype"], tuple(info["shape"]), base + begin, base + end))
            data_end = max(data_end, end)
    except (AttributeError, KeyError, TypeError, ValueError):
        raise QpruneError(f"{path} has a damaged safetensors header") from None
    if base + data_end != size:
        raise QpruneError(
            f"{path} is truncated or damaged: its header describes {base + data_end} bytes, the file has {size}"
        )
    return sorted(entries, key=lambda e: e.start)


def read_checkpoint(model_dir: Path) -> dict[str, TensorEntry]:
    """Every tensor of a checkpoint directory, by name, in file order. Reads safetensors only."""
    index, single = model_dir / SAFE_INDEX, model_dir / SAFE_WEIGHTS
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as error:
            raise QpruneError(f"{index} is not a valid safetensors index: {error}") from None
        files = list(dict.fromkeys(weight_map.values()))
    elif single.exists():
        weight_map, files = None, [SAFE_WEIGHTS]
    elif any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
        raise QpruneError(
            f"{model_dir} has only PyTorch .bin weights; qprune reads safetensors only (pickled weights can run code). "
            "Convert them first, e.g. model.save_pretrained(dir, safe_serialization=True) in a trusted environment"
        )
    else:
        raise QpruneError(f"{model_dir} has no safetensors weights ({SAFE_WEIGHTS} or {SAFE_INDEX})")

    tensors: dict[str, TensorEntry] = {}
    for file in files:
        path = model_dir / file
        if not path.exists():
            raise QpruneError(f"shard {file} named in {SAFE_INDEX} is missing from {model_dir}")
        for entry in read_header(path):
            tensors[entry.name] = entry
    if weight_map is not None:
        missing = [
            name
            for name, file in weight_map.items()
            if tensors.get(name, None) is None or tensors[name].file.name != file
        ]
        if missing:
            raise QpruneError(f"{SAFE_INDEX} lists {missing[0]} in a shard that does not hold it")
    return tensors


def _shard_groups(entries: list[TensorEntry], max_shard_size: int) -> list[list[TensorEntry]]:
    groups: list[list[TensorEntry]] = [[]]
    size = 0
    for entry in entries:
        if groups[-1] and size + entry.nbytes > max_shard_size:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += entry.nbytes
    return groups


def _append_bytes(src_fd: int, dst_fd: int, offset: int, count: int) -> None:
    """Append `count` bytes of the source from `offset` to the destination, inside the kernel where
    copy_file_range works (no copy through Python), else through a bounded buffer."""
    in_kernel = hasattr(os, "copy_file_range")
    while count:
        written = 0
        if in_kernel:
            try:
                written = os.copy_file_range(src_fd, dst_fd, count, offset)
            except OSError:  # e.g. a filesystem without support: fall back for the rest
                in_kernel = False
        if not in_kernel:
            written = os.write(dst_fd, os.pread(src_fd, min(count, _COPY_CHUNK), offset))
        if written == 0:
            raise QpruneError(f"source file ended early: {count} bytes missing at offset {offset}")
        offset += written
        count -= written


def _write_shard(path: Path, entries: list[TensorEntry]) -> None:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for entry in entries:
        header[entry.name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data to 8 bytes
    with open(path, "wb", buffering=0) as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        source, source_file = None, None
        try:
            for entry in entries:
                if entry.file != source_file:  # one source shard open at a time
                    if source:
                        source.close()
                    source, source_file = open(entry.file, "rb", buffering=0), entry.file
                _append_bytes(source.fileno(), out.fileno(), entry.start, entry.nbytes)
        finally:
            if source:
                source.close()


def write_shards(entries: list[TensorEntry], out_dir: Path, max_shard_size: int) -> None:
    """Copy these tensors into HF-named shards of at most max_shard_size bytes (plus the index)."""
    groups = _shard_groups(entries, max_shard_size)
    if len(groups) == 1:
        _write_shard(out_dir / SAFE_WEIGHTS, groups[0])
        return
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        _write_shard(out_dir / name, group)
        weight_map.update({entry.name: name for entry in group})
    index = {"metadata": {"total_size": sum(e.nbytes for e in entries)}, "weight_map": weight_map}
    (out_dir / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def check_output(out: Path, force: bool) -> None:
    """Refuse an existing, non-empty OUT unless forced (checked before any work is done)."""
    if out.exists() and not force:
        if not out.is_dir():
            raise QpruneError(f"output {out} exists and is a file; pass --force to replace it")
        if any(out.iterdir()):
            raise QpruneError(f"output {out} exists and is not empty; pass --force to replace it")


@contextmanager
def atomic_output(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary directory that replaces OUT once the block has completed without error."""
    check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would surprise whoever shares the checkpoint
    try:
        yield tmp
        if out.exists() or out.is_symlink():
            old = tmp.with_suffix(".old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
