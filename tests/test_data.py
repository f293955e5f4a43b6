"""Calibration data: every source format, deterministic sampling, and an error for every bad input."""

import json
import sys

import pytest
import torch
from conftest import cli
from transformers import AutoTokenizer

from qprune.errors import QpruneError
from qprune.measure.data import CALIBRATION_TEXT, HELDOUT_TEXT, DataSpec, load_token_batches
from qprune.shipped import EMBEDDED_MODEL

TEXT = "The list type is a mutable sequence.\nTuples are immutable sequences.\n" * 40


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(EMBEDDED_MODEL)


def test_shipped_samples_default_and_seeded(tokenizer):
    assert CALIBRATION_TEXT.stat().st_size > 100_000 and HELDOUT_TEXT.stat().st_size > 100_000
    batch = load_token_batches(DataSpec(), tokenizer)
    assert batch.shape == (32, 512) and batch.dtype == torch.long
    assert torch.equal(batch, load_token_batches(DataSpec(), tokenizer))
    assert not torch.equal(batch, load_token_batches(DataSpec(seed=1), tokenizer))
    every = load_token_batches(DataSpec(samples=None, seq_len=512), tokenizer)
    assert every.shape[0] > 100 and all(any(torch.equal(row, other) for other in every) for row in batch[:4])


def test_txt_jsonl_and_parquet_sources(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text(TEXT)
    records = [{"body": TEXT[:900]}, {"body": TEXT[900:]}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": r["body"]}) for r in records))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": [r["body"] for r in records], "n": [1, 2]}), tmp_path / "a.parquet")
    shapes = set()
    for name, field in (("a.txt", "text"), ("a.jsonl", "body"), ("b.jsonl", "text"), ("a.parquet", "body")):
        batch = load_token_batches(DataSpec(str(tmp_path / name), text_field=field, samples=4, seq_len=32), tokenizer)
        shapes.add(tuple(batch.shape))
        text = tokenizer.decode(batch[0])
        assert "sequence" in text or "list" in text or "immutable" in text
    assert shapes == {(4, 32)}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "does not exist"),
        ("empty.txt", "", "holds no text"),
        ("blank.txt", "\n  \n", "holds no text"),
        ("data.csv", "text\nhello\n", "unknown format '.csv'"),
        ("latin.txt", b"caf\xe9 \xff\xfe", "not UTF-8"),
        ("bad.jsonl", '{"text": "fine"}\nnot json\n', "line 2 is not valid JSON"),
        ("field.jsonl", '{"body": "x"}\n', "no text field 'text'"),
        ("broken.parquet", b"PAR1 this is not parquet", "not a readable parquet"),
        ("short.txt", "only a few words here", "fewer than the 32 x 512"),
    ],
)
def test_bad_data_gets_a_clear_error(tmp_path, tokenizer, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(QpruneError, match=message):
        load_token_batches(DataSpec(str(path)), tokenizer)


def test_too_little_text_says_how_much_there_is(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text(TEXT)
    with pytest.raises(QpruneError) as error:
        load_token_batches(DataSpec(str(tmp_path / "a.txt"), samples=100, seq_len=512), tokenizer)
    assert "tokens, fewer than the 100 x 512 = 51,200 needed" in str(error.value)
    assert "lower samples or seq_len" in str(error.value)


def test_other_bad_inputs(tmp_path, tokenizer, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "a.parquet")
    with pytest.raises(QpruneError, match=r"no column 'text'.*content"):
        load_token_batches(DataSpec(str(tmp_path / "a.parquet")), tokenizer)
    with pytest.raises(QpruneError, match="is a directory"):
        load_token_batches(DataSpec(str(tmp_path)), tokenizer)
    with pytest.raises(QpruneError, match=r"^seq_len must be at least 2"):
        load_token_batches(DataSpec(seq_len=1), tokenizer)
    with pytest.raises(QpruneError, match=r"^samples must be at least 1"):
        load_token_batches(DataSpec(samples=0), tokenizer)
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if `datasets` were not installed
    with pytest.raises(QpruneError, match=r"needs `datasets`: pip install datasets"):
        load_token_batches(DataSpec("wikitext"), tokenizer)


def test_cli_reports_bad_data_in_one_line(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    result = cli("scan", str(EMBEDDED_MODEL), "--data", str(tmp_path / "data.csv"))
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: data file") and "Traceback" not in result.output
