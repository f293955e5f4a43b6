"""Speed of the scan and of the greedy search, measured side by side in one process.

    python benchmarks/search_speed.py            # about 10 minutes on a 2-core CPU
    python benchmarks/search_speed.py --quick    # one repetition, fewer tokens

1. One-pass scan (a forward with the cosine / update-norm hooks, as `qprune scan` runs it) against a
   plain `model(input_ids)` forward and against the decoder stack alone (`model.model`), over the same
   calibration batches. Goal: <= 1.3x a plain forward.
2. Greedy search with prefix reuse against two naive greedy searches that run the full model for every
   candidate: (a) the usual way, `model(input_ids, labels=input_ids).loss` (BlockPruner / SLEB style),
   and (b) the decoder stack plus qprune's own chunked float32 NLL, which isolates the prefix reuse.
   The selections must be the same. Goal: <= 0.6x the naive search's wall time.
   On the embedded model (6 layers) and on a 12-layer random model.

Runs alternate between the methods; each figure is the median of the repetitions.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoTokenizer

from qprune import PrunedQwen3Config, PrunedQwen3ForCausalLM, load
from qprune.measure.ablation import micro_batches, skipping
from qprune.measure.data import DataSpec, load_token_batches
from qprune.measure.scan import one_pass_metrics
from qprune.measure.search import Target, greedy_search
from qprune.shipped import EMBEDDED_MODEL


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


@torch.inference_mode()
def plain_forward(model, batch, decoder_only: bool) -> None:
    for input_ids in micro_batches(batch, model.config.vocab_size):
        if decoder_only:
            model.model(input_ids=input_ids, use_cache=False)
        else:
            model(input_ids=input_ids, use_cache=False)


def one_pass_scan(model, batch) -> None:
    one_pass_metrics(model, batch, stats=False)  # the one-pass measures alone; `scan` takes them on the ablation
    # runner's first pass


@torch.inference_mode()
def hf_naive_greedy(model, batch, blocks: int) -> tuple:
    """The usual greedy search: the model's own forward and loss for every candidate."""
    removed, n = set(), len(model.model.layers)
    batches = micro_batches(batch, model.config.vocab_size)
    for _ in range(blocks):
        scores = {}
        for candidate in [(i, k) for i in range(n) for k in ("attn", "mlp") if (i, k) not in removed]:
            with skipping(model, removed | {candidate}):
                losses = [float(model(input_ids=ids, labels=ids, use_cache=False).loss) for ids in batches]
            scores[candidate] = statistics.fmean(losses)
        removed.add(min(scores, key=scores.get))
    return tuple(sorted(removed))


def chosen(result) -> tuple:
    return tuple(sorted((s["layer"], s["block"]) for s in result.steps))


def compare_search(name: str, model, batch, blocks: int, repetitions: int) -> None:
    times = {"prefix reuse": [], "naive, model loss": [], "naive, qprune loss": []}
    plans = {}
    for _ in range(repetitions):
        for method in times:
            if method == "prefix reuse":
                seconds, result = timed(lambda: chosen(greedy_search(model, batch, Target(blocks=blocks))))
            elif method == "naive, qprune loss":
                seconds, result = timed(lambda: chosen(greedy_search(model, batch, Target(blocks=blocks), naive=True)))
            else:
                seconds, result = timed(lambda: hf_naive_greedy(model, batch, blocks))
            times[method].append(seconds)
            plans.setdefault(method, result)
            assert plans[method] == result, f"{method}: a repetition chose differently"
    ours = statistics.median(times["prefix reuse"])
    print(f"\n## greedy search, {name}: {blocks} blocks, {batch.shape[0]} x {batch.shape[1]} tokens")
    print("| search | wall time (median) | prefix reuse / this | same selections |")
    print("|---|---|---|---|")
    for method, values in times.items():
        same = "yes" if plans[method] == plans["prefix reuse"] else f"NO: {plans[method]}"
        print(f"| {method} | {statistics.median(values):.2f} s | {ours / statistics.median(values):.2f}x | {same} |")
    print(f"chosen: {plans['prefix reuse']}")


def compare_scan(name: str, model, batch, repetitions: int) -> None:
    passes = {
        "one-pass scan": lambda: one_pass_scan(model, batch),
        "plain forward (logits)": lambda: plain_forward(model, batch, decoder_only=False),
        "decoder stack only": lambda: plain_forward(model, batch, decoder_only=True),
    }
    times = {method: [] for method in passes}
    for _ in range(repetitions + 1):  # the first round warms up
        for method, run in passes.items():
            times[method].append(timed(run)[0])
    scan = statistics.median(times["one-pass scan"][1:])
    print(f"\n## one-pass scan, {name}: {batch.shape[0]} x {batch.shape[1]} tokens")
    print("| pass | wall time (median) | one-pass scan / this |")
    print("|---|---|---|")
    for method, values in times.items():
        print(f"| {method} | {statistics.median(values[1:]):.3f} s | {scan / statistics.median(values[1:]):.2f}x |")


def random_model(num_layers: int = 12) -> PrunedQwen3ForCausalLM:
    torch.manual_seed(0)
    config = PrunedQwen3Config(
        vocab_size=4096,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=num_layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    return PrunedQwen3ForCausalLM(config).to(torch.bfloat16).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repetition, fewer tokens")
    args = parser.parse_args()
    repetitions = 1 if args.quick else 3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bfloat16 weights")

    embedded = load(EMBEDDED_MODEL, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL)
    calibration = load_token_batches(DataSpec(samples=32, seq_len=512), tokenizer)
    compare_scan("embedded model", embedded, calibration, repetitions)
    search_batch = calibration[: 8 if args.quick else 16]
    compare_search("embedded model (6 layers)", embedded, search_batch, 6, 1 if args.quick else 2)

    model = random_model()
    tokens = torch.randint(1, 4096, (8, 256 if args.quick else 512), generator=torch.Generator().manual_seed(0))
    compare_scan("12-layer random model", model, tokens, repetitions)
    compare_search("12-layer random model", model, tokens[:, :256], 4, 1 if args.quick else 2)


if __name__ == "__main__":
    main()
