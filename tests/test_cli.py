"""The command line itself: fast help, no heavy imports, the demo on the embedded model."""

import subprocess
import sys

from conftest import cli

from qprune.cli.demo import default_block_count
from qprune.cli.options import parse_size
from qprune.shipped import EMBEDDED_MODEL


def test_help_does_not_import_torch_or_transformers():
    code = "import sys, qprune.cli.app; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    result = cli("--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ") and "Commands:" in result.output
    listed = result.output.split("Commands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert {line.split()[0] for line in listed} >= {"prune", "scan", "verify", "info", "eval", "generate", "heal"}


def test_parse_size():
    assert parse_size("100MB") == 100 * 10**6 and parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("4096") == 4096


def test_default_block_count():
    assert [default_block_count(n) for n in (1, 4, 6, 28)] == [1, 1, 2, 9]


def test_generate():
    """The command's continuation is transformers' own greedy `generate` on the same model and prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = ["generate", str(EMBEDDED_MODEL), "--prompt", "The list type", "--max-new-tokens", "8", "--dtype", "float32"]
    result = cli(*args)
    assert result.exit_code == 0, result.output

    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL)
    model = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL, dtype=torch.float32).eval()
    inputs = tokenizer("The list type", return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert expected.strip()  # a continuation to compare, not two empty strings
    assert result.stdout == expected + "\n"


def test_generate_uses_the_chat_template(tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from qprune.runtime.generate import complete, load_with_tokenizer

    shutil.copytree(EMBEDDED_MODEL, tmp_path / "chat")
    (tmp_path / "chat" / "chat_template.jinja").write_text("USER: {{ messages[0]['content'] }}\nASSISTANT:")
    model, tokenizer = load_with_tokenizer(tmp_path / "chat")
    seen = []
    generate = model.generate
    model.generate = lambda **kwargs: seen.append(kwargs["input_ids"]) or generate(**kwargs)
    complete(model, tokenizer, "hello", max_new_tokens=2)
    plain = AutoTokenizer.from_pretrained(EMBEDDED_MODEL)
    assert plain.decode(seen[0][0]) == "USER: hello\nASSISTANT:"
