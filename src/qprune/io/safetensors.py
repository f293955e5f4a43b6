"""Streaming safetensors I/O: validated headers in, byte-copied shards out.

Pruning never builds the model and never decodes a tensor: it reads the safetensors headers of the
source shards (`read_checkpoint`), then copies the bytes of the kept tensors straight into new
shards (`write_shards`), a bounded chunk at a time. Memory stays flat whatever the model's size,
the dtype is preserved bit for bit, and torch is never imported.

Every header and shard index is checked before anything is used (`read_header`, `_read_index`): a
damaged file is a `QpruneError` naming the file and the problem, never a traceback or an output that
cannot be loaded. Where the output goes is `output.py`'s business.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from qprune.errors import QpruneError

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
_COPY_CHUNK = 16 << 20
_MAX_HEADER = 100 << 20  # safetensors' own limit


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes lie in a safetensors file (`file` None: a tensor of zeros to write)."""

    name: str
    file: Path | None
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    end: int
    # Some rows only (`rows`): the byte ranges in the file that make up the tensor, in order.
    pieces: tuple[tuple[int, int], ...] = ()
    # Some columns only (`columns`): the kept columns of the stored 2-D tensor start..end, in order.
    kept_columns: tuple[int, ...] = ()

    @property
    def nbytes(self) -> int:
        if self.kept_columns:
            return math.prod(self.shape) * DTYPE_SIZES[self.dtype]
        return sum(end - start for start, end in self.pieces) if self.pieces else self.end - self.start

    def columns(self, kept: list[int]) -> TensorEntry:
        """This 2-D tensor with only the `kept` columns, in that order (`down_proj` / `o_proj` losing
        MLP channels or heads). Written a block of rows at a time: one tensor's rows in memory at most."""
        if self.pieces or self.kept_columns or len(self.shape) != 2:
            raise ValueError(f"{self.name}: columns are taken of a whole 2-D tensor only")
        shape = (self.shape[0], len(kept))
        return TensorEntry(self.name, self.file, self.dtype, shape, self.start, self.end, (), tuple(kept))

    def rows(self, kept: list[int], name: str | None = None) -> TensorEntry:
        """This tensor with only the `kept` rows of its first dimension, in that order (a router's rows
        for the experts kept), under `name`. Still a description: the rows are copied when written."""
        row = self.nbytes // self.shape[0]
        pieces: list[tuple[int, int]] = []
        for i in kept:  # adjacent rows as one range: one copy each run
            start, end = self.start + i * row, self.start + (i + 1) * row
            if pieces and pieces[-1][1] == start:
                pieces[-1] = (pieces[-1][0], end)
            else:
                pieces.append((start, end))
        pieces = tuple(pieces)
        shape = (len(kept), *self.shape[1:])
        return TensorEntry(name or self.name, self.file, self.dtype, shape, self.start, self.end, pieces)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @classmethod
    def zeros(cls, name: str, dtype: str, shape: tuple[int, ...]) -> TensorEntry:
        """A tensor with no source whose bytes are all zero (0.0 in every float dtype)."""
        return cls(name, None, dtype, tuple(shape), 0, math.prod(shape) * DTYPE_SIZES[dtype])


# safetensors dtypes: the bytes one element takes, and torch's name for it (sub-byte formats are not
# Qwen3 weights). The one table of them: headers are checked against it here, and the streamed
# model (runtime/streamed.py) reads tensors into torch through it.
DTYPES: dict[str, tuple[int, str]] = {
    "BOOL": (1, "bool"), "U8": (1, "uint8"), "I8": (1, "int8"),
    "F8_E4M3": (1, "float8_e4m3fn"), "F8_E5M2": (1, "float8_e5m2"), "F8_E8M0": (1, "float8_e8m0fnu"),
    "I16": (2, "int16"), "U16": (2, "uint16"), "F16": (2, "float16"), "BF16": (2, "bfloat16"),
    "I32": (4, "int32"), "U32": (4, "uint32"), "F32": (4, "float32"),
    "I64": (8, "int64"), "U64": (8, "uint64"), "F64": (8, "float64"),
}  # fmt: skip
DTYPE_SIZES = {name: size for name, (size, _) in DTYPES.items()}
TORCH_DTYPES = {name: torch_name for name, (_, torch_name) in DTYPES.items()}  # getattr(torch, ...)


def _is_int_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)


def _entry(path: Path, name: str, info: object, base: int) -> TensorEntry:
    """One header entry, checked: a known dtype, a shape, and offsets whose span is the shape's size."""
    where = f"{path} has a damaged safetensors header: tensor {name!r}"
    if not isinstance(info, dict):
        raise QpruneError(f"{where} is not described by an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise QpruneError(f"{where} has an unknown dtype {dtype!r}")
    if not _is_int_list(shape) or any(dim < 0 for dim in shape):
        raise QpruneError(f"{where} has an invalid shape {shape!r}")
    if not _is_int_list(offsets) or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1]:
        raise QpruneError(f"{where} has invalid data_offsets {offsets!r} (two integers, begin <= end)")
    begin, end = offsets
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - begin != expected:
        raise QpruneError(
            f"{where}: shape {shape} in {dtype} is {expected} bytes, but its data_offsets span {end - begin}"
        )
    return TensorEntry(name, path, dtype, tuple(shape), base + begin, base + end)


def read_header(path: Path) -> list[TensorEntry]:
    """The tensors of one safetensors file, in file order, checked as strictly as safetensors itself
    checks them: known dtypes, sizes that match the shapes, data that tiles the file without gaps or
    overlaps (which also catches truncation)."""
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
    if not isinstance(header, dict):
        raise QpruneError(f"{path} has a damaged safetensors header (not a JSON object)")
    if not isinstance(header.get("__metadata__", {}), dict):
        raise QpruneError(f"{path} has a damaged safetensors header (__metadata__ is not an object)")
    base = 8 + header_len
    entries = sorted(
        (_entry(path, name, info, base) for name, info in header.items() if name != "__metadata__"),
        key=lambda e: (e.start, e.end),
    )
    position = base
    for entry in entries:
        if entry.start != position:
            problem = "overlaps the tensor before it" if entry.start < position else "leaves a gap before it"
            raise QpruneError(f"{path} has a damaged safetensors header: tensor {entry.name!r} {problem}")
        position = entry.end
    if position != size:
        raise QpruneError(f"{path} is truncated or damaged: its header describes {position} bytes, the file has {size}")
    return entries


def _read_index(index: Path) -> dict[str, str]:
    """The weight map of a shard index: tensor name -> shard file name in the same directory."""
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise QpruneError(f"{index} is not a valid safetensors index: {error}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise QpruneError(f"{index} is not a valid safetensors index: it has no weight_map object")
    if not weight_map:
        raise QpruneError(f"{index} lists no tensors (its weight_map is empty)")
    for name, file in weight_map.items():
        if not isinstance(file, str) or file in ("", ".", "..") or Path(file).name != file:
            raise QpruneError(f"{index} maps {name!r} to {file!r}, which is not a file name in the model directory")
    return weight_map


def read_checkpoint(model_dir: Path) -> dict[str, TensorEntry]:
    """Every tensor of a checkpoint directory, by name, in file order. Reads safetensors only."""
    index, single = model_dir / SAFE_INDEX, model_dir / SAFE_WEIGHTS
    if index.exists():
        weight_map = _read_index(index)
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
        if not path.is_file():
            raise QpruneError(f"shard {file} named in {SAFE_INDEX} is missing from {model_dir}")
        for entry in read_header(path):
            if entry.name in tensors:
                first = tensors[entry.name].file.name
                raise QpruneError(f"{model_dir}: tensor {entry.name!r} is stored twice ({first}, {file})")
            tensors[entry.name] = entry
    if not tensors:
        raise QpruneError(f"{model_dir} holds no tensors")
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


def _append_columns(src_fd: int, dst_fd: int, entry: TensorEntry) -> None:
    """Append the kept columns of a stored 2-D tensor, reading `_COPY_CHUNK` bytes of rows at a time."""
    import numpy as np

    rows, size = entry.shape[0], DTYPE_SIZES[entry.dtype]
    row_bytes = (entry.end - entry.start) // rows
    kept = np.asarray(entry.kept_columns)
    step = max(1, _COPY_CHUNK // row_bytes)
    for first in range(0, rows, step):
        count = min(step, rows - first)
        data = os.pread(src_fd, count * row_bytes, entry.start + first * row_bytes)
        if len(data) != count * row_bytes:
            raise QpruneError(f"source file ended early: {entry.name} is truncated")
        block = np.frombuffer(data, dtype=np.uint8).reshape(count, row_bytes // size, size)
        out = memoryview(np.ascontiguousarray(block[:, kept, :]).tobytes())
        while out:
            out = out[os.write(dst_fd, out) :]


def _append_zeros(dst_fd: int, count: int) -> None:
    block = bytes(min(count, _COPY_CHUNK))
    while count:
        count -= os.write(dst_fd, block[: min(count, len(block))])


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
                if entry.file is None:
                    _append_zeros(out.fileno(), entry.nbytes)
                    continue
                if entry.file != source_file:  # one source shard open at a time
                    if source:
                        source.close()
                    source, source_file = open(entry.file, "rb", buffering=0), entry.file
                if entry.kept_columns:
                    _append_columns(source.fileno(), out.fileno(), entry)
                    continue
                for start, end in entry.pieces or ((entry.start, entry.end),):
                    _append_bytes(source.fileno(), out.fileno(), start, end - start)
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
