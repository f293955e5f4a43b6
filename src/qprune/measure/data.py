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
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qprune.errors import QpruneError

if TYPE_CHECKING:
    import torch

    from qprune.progress import Progress

TEXT_DIR = Path(__file__).parent.parent / "assets" / "text"
CALIBRATION_TEXT = TEXT_DIR / "pydocs-calibration.txt"
HELDOUT_TEXT = TEXT_DIR / "pydocs-heldout.txt"
SHIPPED = "qprune:"  # names a text shipped with qprune, e.g. qprune:pydocs-heldout.txt
HELDOUT_SOURCE = SHIPPED + HELDOUT_TEXT.name  # eval's default: text that calibration never sees
FORMATS = (".txt", ".jsonl", ".parquet")
_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")  # name, owner/name, owner/name:config


@dataclass(frozen=True)
class DataSpec:
    """Where the text comes from and how it is cut; recorded in every report."""

    source: str | None = None  # None: the calibration sample shipped with qprune; "qprune:NAME": a shipped text
    text_field: str = "text"
    samples: int | None = 32  # None: every window
    seq_len: int = 512
    seed: int = 0
    split: str = "train"  # for `datasets` ids

    def describe(self) -> dict:
        return {**asdict(self), "source": self.source or SHIPPED + CALIBRATION_TEXT.name}


def read_documents(spec: DataSpec) -> Iterator[str]:
    """The text of every document in the source, in order."""
    if spec.source is None or spec.source.startswith(SHIPPED):
        yield _shipped(spec.source or SHIPPED + CALIBRATION_TEXT.name).read_text(encoding="utf-8")
        return
    path = Path(spec.source).expanduser()
    if not path.exists():
        if _DATASET_ID.match(spec.source) and not path.suffix:
            yield from _hub_dataset(spec)
            return
        raise QpruneError(f"data file {spec.source} does not exist")
    if path.is_dir():
        raise QpruneError(f"data {spec.source} is a directory; give a {', '.join(FORMATS)} file")
    if path.suffix not in FORMATS:
        raise QpruneError(
            f"data file {spec.source}: unknown format {path.suffix or '(no suffix)'!r}; use {', '.join(FORMATS)}"
        )
    if path.suffix == ".parquet":
        yield from _parquet(path, spec.text_field)
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise QpruneError(f"data file {spec.source} is not UTF-8 text") from None
    except OSError as error:
        raise QpruneError(f"data file {spec.source} cannot be read: {error.strerror}") from None
    if path.suffix == ".txt":
        yield text
    else:
        yield from _jsonl(text, path, spec.text_field)


def _shipped(source: str) -> Path:
    path = TEXT_DIR / source.removeprefix(SHIPPED)
    if path.parent != TEXT_DIR or path.suffix != ".txt" or not path.is_file():
        names = ", ".join(SHIPPED + p.name for p in sorted(TEXT_DIR.glob("*.txt")))
        raise QpruneError(f"data {source}: qprune ships no such text; it ships {names}")
    return path


def _jsonl(text: str, path: Path, field: str) -> Iterator[str]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise QpruneError(f"{path} line {number} is not valid JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise QpruneError(f"{path} line {number} has no text field {field!r} (choose one with {{text_field}})")
        yield record[field]


def _parquet(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise QpruneError("reading .parquet needs pyarrow: pip install 'qprune[data]'") from None
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises its own types for every kind of damage
        raise QpruneError(f"data file {path} is not a readable parquet file: {error}") from None
    if field not in table.column_names:
        raise QpruneError(
            f"{path} has no column {field!r} (columns: {', '.join(table.column_names)}; use {{text_field}})"
        )
    yield from (value for value in table.column(field).to_pylist() if isinstance(value, str))


def _hub_dataset(spec: DataSpec) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise QpruneError(
            f"{spec.source} is not a local file; loading a hub dataset needs `datasets`: pip install 'qprune[data]'"
        ) from None
    name, _, config = spec.source.partition(":")
    try:
        dataset = datasets.load_dataset(name, config or None, split=spec.split)
    except Exception as error:  # offline, unknown id, missing split: one message for the user
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise QpruneError(
            f"data {spec.source} is not a local file and could not be loaded as a dataset ({reason})"
        ) from None
    if spec.text_field not in dataset.column_names:
        raise QpruneError(f"dataset {spec.source} has no column {spec.text_field!r} (use {{text_field}})")
    yield from (value for value in dataset[spec.text_field] if isinstance(value, str))


def tokenize(spec: DataSpec, tokenizer) -> list[int]:
    """Every document's tokens, joined by the end-of-text token (when the tokenizer has one)."""
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    tokens: list[int] = []
    for document in read_documents(spec):
        if not document.strip():
            continue
        # Long single-document files are tokenized a few hundred lines at a time: fast tokenizers are
        # quadratic-ish on one huge string, and no word straddles a line break.
        lines = document.splitlines(keepends=True)
        for start in range(0, len(lines), 512):
            tokens.extend(
                tokenizer("".join(lines[start : start + 512]), add_special_tokens=False, verbose=False)["input_ids"]
            )
        tokens.extend(separator)
    if not tokens:
        raise QpruneError(f"data {spec.describe()['source']} holds no text")
    return tokens


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


def load_for_measurement(
    source: str, spec, dtype: str = "auto", progress: bool | Progress = False, max_memory: int | None = None
):
    """(model, calibration batch) for scan and search. The data is read first, so its errors come
    before a long load. The model holds every weight the checkpoint has, in `dtype` ("auto": see
    `precision.auto_dtype`; metrics are accumulated in float32 whatever it is), spread over the GPUs
    when there are any. It is a `StreamedModel`, read a layer at a time, when `max_memory` is given and
    the model with its states does not fit in it, or, on a CPU, when it does not fit the memory available."""
    import torch

    from qprune.io.source import resolve_model_dir
    from qprune.measure.memory_plan import MemoryPlan, layer_by_layer_limit
    from qprune.progress import as_progress
    from qprune.runtime.load import load, load_config, load_tokenizer
    from qprune.runtime.precision import check_dtype_name, resolve_auto

    progress = as_progress(progress)
    dtype = resolve_auto(check_dtype_name(dtype, float16=False), progress.note)
    model_dir = resolve_model_dir(source)
    batch = load_token_batches(spec, load_tokenizer(model_dir))
    progress.note(f"calibration: {batch.shape[0]} sequences of {batch.shape[1]} tokens; loading {source}")
    samples, seq_len = batch.shape
    plan = MemoryPlan.of(load_config(model_dir), getattr(torch, dtype), samples=samples, seq_len=seq_len, kl=True)
    limit = layer_by_layer_limit(plan, max_memory, progress)
    if limit is not None:
        from qprune.runtime.streamed import StreamedModel

        return StreamedModel.open(model_dir, getattr(torch, dtype), max_memory=limit), batch
    device_map = "auto" if torch.cuda.is_available() else None
    return load(model_dir, dtype=getattr(torch, dtype), device_map=device_map), batch
