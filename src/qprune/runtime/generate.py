"""Greedy text generation from a checkpoint, with its chat template when it has one.

model, tokenizer = load_with_tokenizer("qwen3-pruned")
print(complete(model, tokenizer, "def fibonacci(n):", max_new_tokens=40))
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qprune.io.source import Checkpoint, open_checkpoint
from qprune.runtime.load import load, load_tokenizer

SMALL_MODEL_PARAMETERS = 100_000_000  # below this, decoding on a CPU uses one thread (see small_model_threads)


def load_with_tokenizer(path: str | Path | Checkpoint, dtype=None, device_map=None, quantize: str | None = None):
    checkpoint = open_checkpoint(path)
    return load(checkpoint, dtype=dtype, device_map=device_map, quantize=quantize), load_tokenizer(checkpoint)


def encode_prompt(model, tokenizer, prompt: str):
    """Tokenized `prompt` on the model's device, as a chat turn if the tokenizer has a template."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = prompt
    return tokenizer(text, return_tensors="pt").to(model.get_input_embeddings().weight.device)


@contextmanager
def small_model_threads(model) -> Iterator[None]:
    """One torch thread while a small model decodes on a CPU, unless OMP_NUM_THREADS says otherwise.
    Decoding a small model is a string of tiny matmuls: a second thread gains nothing on an idle
    machine and costs ~3x when another process holds a core (benchmarks/threads.py)."""
    import torch

    on_cpu = model.get_input_embeddings().weight.device.type == "cpu"
    if not on_cpu or "OMP_NUM_THREADS" in os.environ or model.num_parameters() > SMALL_MODEL_PARAMETERS:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def complete(model, tokenizer, prompt: str, max_new_tokens: int = 40) -> str:
    """The model's greedy continuation of `prompt`. Raises `NonFiniteLogitsError` (with advice) if a
    step's logits hold inf or NaN, rather than returning the garbage it would decode to."""
    import torch

    from qprune.runtime.precision import check_logits

    inputs = encode_prompt(model, tokenizer, prompt)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad(), small_model_threads(model):
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            output_logits=True,
            return_dict_in_generate=True,
        )
    for logits in output.logits:
        check_logits(logits, model)
    return tokenizer.decode(output.sequences[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
