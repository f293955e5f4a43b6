"""Calibration and evaluation text, tokenized into fixed-length sequences. Scan, search and eval share it.

    spec = DataSpec()                                      # the calibration sample shipped with qprune
    spec = DataSpec("notes.jsonl", text_field="body", samples=64, seq_len=256, seed=1)
    batch = load_token_batches(spec, tokenizer)           # LongTensor [samples, seq_len]

A source is a text shipped with qprune (`qprune:pydocs-calibration.txt`, the default, and
`qprune:pydocs-heldout.txt`), a local `.txt` (one document), `.jsonl` (one document per line, in a `text` field or the
one named), `.parquet` (a text column; needs pyarrow), or a `datasets` id when the hub is reachable
(needs `datasets`). Documents are tokenized, joined with the end-of-text token, cut into consecutive
windows of `seq_len` tokens, and `samples` windows are drawn with `seed`. Every way this can fail
(missing, empty or unreadable file, unknown format, too little text) is a `QpruneError` that says what
to change.

Every source is read as a stream (`stream_tokens`): `heal` takes only as many tokens as its budget
needs (`take_tokens`), and nothing past them is read or tokenized, whatever the size of the source.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qprune.errors import QpruneError
from qprune.setting import setting
from qprune.shipped import CALIBRATION_TEXT, HELDOUT_TEXT, PREFIX, TEXT_DIR

if TYPE_CHECKING:
    import torch

    from qprune.progress import Progress

SHIPPED = PREFIX  # names a text shipped with qprune, e.g. qprune:pydocs-heldout.txt
HELDOUT_SOURCE = SHIPPED + HELDOUT_TEXT.name  # eval's default: text that calibration never sees
FORMATS = (".txt", ".jsonl", ".parquet")
_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")  # name, owner/name, owner/name:config


@dataclass(frozen=True)
class DataSpec:
    """Where the text comes from and how it is cut; recorded in every report."""

    # None: the calibration sample shipped with qprune; "qprune:NAME": a shipped text
    source: str | None = setting(
        None,
        "Text: .txt, .jsonl, .parquet or a datasets id (default: shipped sample).",
        metavar="SOURCE",
        flag="--data",
    )
    text_field: str = setting("text", "Field (jsonl) or column (parquet, datasets) holding text.", metavar="NAME")
    samples: int | None = setting(32, "Number of sequences drawn from the data.", metavar="N")  # None: every window
    seq_len: int = setting(512, "Tokens per sequence (at most the model's context).", metavar="N")
    seed: int = setting(0, "Seed for drawing the sequences.")
    split: str = "train"  # for `datasets` ids

    def describe(self) -> dict:
        return {**asdict(self), "source": self.source or SHIPPED + CALIBRATION_TEXT.name}


def _shipped(source: str) -> Path:
    path = TEXT_DIR / source.removeprefix(SHIPPED)
    if path.parent != TEXT_DIR or path.suffix != ".txt" or not path.is_file():
        names = ", ".join(SHIPPED + p.name for p in sorted(TEXT_DIR.glob("*.txt")))
        raise QpruneError(f"data {source}: qprune ships no such text; it ships {names}")
    return path


# -- reading: a stream, read only as far as the tokens wanted --------------------------------------------

_CHUNK_LINES = 512  # lines tokenized at once, as `tokenize` does
_CHUNK_CHARS = 1 << 18  # and at most about this many characters (a file of very long lines)
_LINE_LIMIT = 1 << 16  # characters read at once from a text file


def _stream_documents(spec: DataSpec) -> Iterator[Iterator[str]]:
    """Each document of the source as an iterator of its lines, read lazily: nothing past what the
    consumer takes is read (a `datasets` id is opened with streaming=True)."""
    if spec.source is None or spec.source.startswith(SHIPPED):
        yield _file_lines(_shipped(spec.source or SHIPPED + CALIBRATION_TEXT.name), spec.source)
        return
    path = Path(spec.source).expanduser()
    if not path.exists():
        if _DATASET_ID.match(spec.source) and not path.suffix:
            yield from (iter(text.splitlines(keepends=True)) for text in _hub_stream(spec))
            return
        raise QpruneError(f"data file {spec.source} does not exist")
    if path.is_dir():
        raise QpruneError(f"data {spec.source} is a directory; give a {', '.join(FORMATS)} file")
    if path.suffix not in FORMATS:
        raise QpruneError(
            f"data file {spec.source}: unknown format {path.suffix or '(no suffix)'!r}; use {', '.join(FORMATS)}"
        )
    if path.suffix == ".txt":
        yield _file_lines(path, spec.source)
    elif path.suffix == ".jsonl":
        yield from (iter(text.splitlines(keepends=True)) for text in _jsonl_stream(path, spec))
    else:
        yield from (iter(text.splitlines(keepends=True)) for text in _parquet_stream(path, spec.text_field))


def _file_lines(path: Path, source: str | None) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", newline="") as file:
            # at most 64K characters at a time: a file without line breaks is still read as a stream
            yield from iter(lambda: file.readline(_LINE_LIMIT), "")
    except UnicodeDecodeError:
        raise QpruneError(f"data file {source or path} is not UTF-8 text") from None
    except OSError as error:
        raise QpruneError(f"data file {source or path} cannot be read: {error.strerror}") from None


def _jsonl_stream(path: Path, spec: DataSpec) -> Iterator[str]:
    for number, line in enumerate(_file_lines(path, spec.source), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise QpruneError(f"{path} line {number} is not valid JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get(spec.text_field), str):
            raise QpruneError(
                f"{path} line {number} has no text field {spec.text_field!r} (choose one with {{text_field}})"
            )
        yield record[spec.text_field]


def _parquet_stream(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise QpruneError("reading .parquet needs pyarrow: pip install pyarrow") from None
    try:
        file = pq.ParquetFile(path)
        names = file.schema_arrow.names
    except Exception as error:  # pyarrow raises its own types for every kind of damage
        raise QpruneError(f"data file {path} is not a readable parquet file: {error}") from None
    if field not in names:
        raise QpruneError(f"{path} has no column {field!r} (columns: {', '.join(names)}; use {{text_field}})")
    try:
        for batch in file.iter_batches(batch_size=256, columns=[field]):  # a row group at most at a time
            yield from (value for value in batch.column(0).to_pylist() if isinstance(value, str))
    except QpruneError:
        raise
    except Exception as error:
        raise QpruneError(f"data file {path} is not a readable parquet file: {error}") from None


def _hub_stream(spec: DataSpec) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise QpruneError(
            f"{spec.source} is not a local file; loading a hub dataset needs `datasets`: pip install datasets"
        ) from None
    name, _, config = spec.source.partition(":")
    try:
        dataset = iter(datasets.load_dataset(name, config or None, split=spec.split, streaming=True))
        first = next(dataset, None)
    except Exception as error:  # offline, unknown id, missing split: one message for the user
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise QpruneError(
            f"data {spec.source} is not a local file and could not be loaded as a dataset ({reason})"
        ) from None
    if first is not None and spec.text_field not in first:
        raise QpruneError(f"dataset {spec.source} has no column {spec.text_field!r} (use {{text_field}})")
    records = itertools.chain([first] if first is not None else [], dataset)
    yield from (record[spec.text_field] for record in records if isinstance(record.get(spec.text_field), str))


def stream_tokens(spec: DataSpec, tokenizer) -> Iterator[list[int]]:
    """The source's tokens a piece at a time, as `tokenize` cuts them (documents joined by the
    end-of-text token, a few hundred lines tokenized at once), reading the source only as far as the
    consumer iterates: memory follows what is taken, not the size of the source."""
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(lines: list[str]) -> list[int]:
        return tokenizer("".join(lines), add_special_tokens=False, verbose=False)["input_ids"]

    for document in _stream_documents(spec):
        held: list[list[str]] = []  # blank chunks before the first text: a blank document yields nothing
        seen, chunk, size = False, [], 0
        for line in document:
            chunk.append(line)
            size += len(line)
            if len(chunk) == _CHUNK_LINES or size >= _CHUNK_CHARS:
                seen = seen or any(part.strip() for part in chunk)
                held.append(chunk)
                if seen:
                    yield from (encode(part) for part in held)
                    held = []
                chunk, size = [], 0
        if chunk:
            seen = seen or any(part.strip() for part in chunk)
            held.append(chunk)
        if seen:
            yield from (encode(part) for part in held)
            yield list(separator)


def tokenize(spec: DataSpec, tokenizer) -> list[int]:
    """Every document's tokens, joined by the end-of-text token (when the tokenizer has one)."""
    tokens = [token for piece in stream_tokens(spec, tokenizer) for token in piece]
    if not tokens:
        raise QpruneError(f"data {spec.describe()['source']} holds no text")
    return tokens


def take_tokens(spec: DataSpec, tokenizer, count: int) -> list[int]:
    """The first `count` tokens of the source (fewer when it holds fewer), read and tokenized as a
    stream that stops as soon as it has them."""
    tokens: list[int] = []
    pieces = stream_tokens(spec, tokenizer)
    try:
        for piece in pieces:
            tokens.extend(piece)
            if len(tokens) >= count:
                break
    finally:
        pieces.close()  # closes the file (or the dataset stream) now, not at garbage collection
    return tokens[:count]


def load_token_batches(spec: DataSpec, tokenizer) -> torch.Tensor:
    """`spec.samples` windows of `spec.seq_len` tokens drawn with `spec.seed`, as a [samples, seq_len] tensor."""
    import torch

    if spec.seq_len < 2:
        raise QpruneError("{seq_len} must be at least 2")
    if spec.samples is not None and spec.samples < 1:
        raise QpruneError("{samples} must be at least 1")
    tokens = tokenize(spec, tokenizer)
    windows = len(tokens) // spec.seq_len
    wanted = windows if spec.samples is None else spec.samples
    if windows == 0 or wanted > windows:
        raise QpruneError(
            f"data {spec.describe()['source']} has {len(tokens):,} tokens, fewer than the "
            f"{max(wanted, 1)} x {spec.seq_len} = {max(wanted, 1) * spec.seq_len:,} needed: "
            f"lower {{samples}} or {{seq_len}}, or give more text"
        )
    chosen = sorted(random.Random(spec.seed).sample(range(windows), wanted))
    return torch.tensor([tokens[i * spec.seq_len : (i + 1) * spec.seq_len] for i in chosen], dtype=torch.long)


def check_seq_len(seq_len: int, checkpoint, window: int | None = None) -> None:
    """Refuse windows longer than the model's context (`max_position_embeddings`): positions past it were
    never trained, and scores measured there would mislead without a word. `window`: the length actually
    used, when less than `seq_len` (a short text). `checkpoint`: a Checkpoint, or a path to open."""
    from qprune.io.source import open_checkpoint

    checkpoint = open_checkpoint(checkpoint)
    limit = checkpoint.config.get("max_position_embeddings")
    used = seq_len if window is None else min(seq_len, window)
    if isinstance(limit, int) and not isinstance(limit, bool) and used > limit:
        raise QpruneError(
            f"{{seq_len}} {seq_len} is longer than the context of {checkpoint.name}: {limit} tokens "
            f"(max_position_embeddings in its config.json); use at most {limit}"
        )


def load_for_measurement(
    source, spec, dtype: str = "auto", progress: bool | Progress = False, max_memory: int | None = None
):
    """(model, calibration batch) for scan and search. The data is read first, so its errors come
    before a long load. The model holds every weight the checkpoint has, in `dtype` ("auto": see
    `precision.auto_dtype`; metrics are accumulated in float32 whatever it is), spread over the GPUs
    when there are any. It is a `StreamedModel`, read a layer at a time, when `max_memory` is given and
    the model with its states does not fit in it, or, on a CPU, when it does not fit the memory available."""
    import torch

    from qprune.io.source import open_checkpoint
    from qprune.measure.memory_plan import MemoryPlan, layer_by_layer_limit
    from qprune.progress import as_progress
    from qprune.runtime.load import load, load_config, load_tokenizer
    from qprune.runtime.precision import check_dtype_name, resolve_auto

    progress = as_progress(progress)
    dtype = resolve_auto(check_dtype_name(dtype, float16=False), progress.note)
    checkpoint = open_checkpoint(source)  # `source`: a Checkpoint, or a directory or hub id to open
    check_seq_len(spec.seq_len, checkpoint)
    batch = load_token_batches(spec, load_tokenizer(checkpoint))
    progress.note(f"calibration: {batch.shape[0]} sequences of {batch.shape[1]} tokens; loading {checkpoint.name}")
    samples, seq_len = batch.shape
    plan = MemoryPlan.of(load_config(checkpoint), getattr(torch, dtype), samples=samples, seq_len=seq_len, kl=True)
    limit = layer_by_layer_limit(plan, max_memory, progress)
    if limit is not None:
        from qprune.runtime.streamed import StreamedModel

        return StreamedModel(checkpoint, getattr(torch, dtype), max_memory=limit), batch
    device_map = "auto" if torch.cuda.is_available() else None
    return load(checkpoint, dtype=getattr(torch, dtype), device_map=device_map), batch
