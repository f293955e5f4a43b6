"""Train the small Qwen3 language model that ships inside qprune.

The model is a stock ``transformers.Qwen3ForCausalLM`` (~5.8M parameters) with a
byte-level BPE tokenizer (4096 tokens), trained from scratch on the Python
documentation corpus. It serves as a tiny, offline, real-architecture model for
qprune's examples and tests. Training is seeded and deterministic on a fixed
machine/thread count and takes about 12 minutes on a 2-core CPU.

Run (with transformers 4.57.x, so config.json stays in the legacy format that
both transformers 4.57 and 5.x read)::

    python scripts/train_embedded_model.py [--out DIR] [--steps N] [--seed S]

Writes config.json, generation_config.json, model.safetensors (bfloat16),
tokenizer.json, tokenizer_config.json and training_report.json to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
    get_cosine_schedule_with_warmup,
)

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"  # ../shared/corpus beside the checkout
TRAIN_TEXT = CORPUS / "python-docs-train.txt"
VALID_TEXT = CORPUS / "python-docs-valid.txt"
DEFAULT_OUT = ROOT / "src" / "qprune" / "assets" / "qwen3-pydocs"
EOS = "<|endoftext|>"

VOCAB_SIZE = 4096
SEQ_LEN = 256
BATCH_SIZE = 16
STEPS = 900
LR = 2e-3
MIN_LR_RATIO = 0.1  # cosine decays to ~10% of LR (num_cycles chosen below)
WARMUP_STEPS = 50
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
SEED = 0
THREADS = 2
MODEL_KWARGS = dict(
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    tie_word_embeddings=True,
    rope_theta=1e6,
    max_position_embeddings=1024,
    use_sliding_window=False,
    rms_norm_eps=1e-6,
    initializer_range=0.02,
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)


def train_tokenizer(out: Path) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(TRAIN_TEXT)], trainer)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": EOS,
        "pad_token": EOS,
        "model_max_length": MODEL_KWARGS["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return tok


def encode_file(tok: Tokenizer, path: Path) -> torch.Tensor:
    return torch.tensor(tok.encode(path.read_text(encoding="utf-8")).ids, dtype=torch.long)


def train(model: Qwen3ForCausalLM, data: torch.Tensor, steps: int, seed: int) -> float:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    # num_cycles < 0.5 stops the cosine above zero: lr_end = LR * MIN_LR_RATIO.
    cycles = math.acos(2 * MIN_LR_RATIO - 1) / (2 * math.pi)
    sched = get_cosine_schedule_with_warmup(opt, WARMUP_STEPS, steps, num_cycles=cycles)
    rng = np.random.default_rng(seed)
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        starts = rng.integers(0, len(data) - SEQ_LEN, size=BATCH_SIZE)
        batch = torch.stack([data[s : s + SEQ_LEN] for s in starts.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == 1:
            print(
                f"step {step:5d}  loss {loss.item():.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{time.perf_counter() - t0:.0f}s",
                flush=True,
            )
    return float(np.mean(losses[-20:]))


@torch.no_grad()
def perplexity(model: Qwen3ForCausalLM, ids: torch.Tensor, batch: int = 32) -> tuple[float, int]:
    """Token-level perplexity over non-overlapping SEQ_LEN windows (fp32)."""
    model.eval()
    n_full = len(ids) // SEQ_LEN
    windows = list(ids[: n_full * SEQ_LEN].view(n_full, SEQ_LEN).split(batch))
    if len(ids) - n_full * SEQ_LEN >= 2:
        windows.append(ids[n_full * SEQ_LEN :][None])
    total_nll, total_tokens = 0.0, 0
    for w in windows:
        logits = model(input_ids=w).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum")
        total_nll += nll.item()
        total_tokens += w[:, 1:].numel()
    return math.exp(total_nll / total_tokens), total_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)

    tok = train_tokenizer(out)
    eos_id = tok.token_to_id(EOS)
    train_ids = encode_file(tok, TRAIN_TEXT)
    print(f"train tokens: {len(train_ids)}", flush=True)

    config = Qwen3Config(
        vocab_size=VOCAB_SIZE,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        **MODEL_KWARGS,
    )
    model = Qwen3ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params}", flush=True)
    t0 = time.perf_counter()
    final_loss = train(model, train_ids, args.steps, args.seed)
    wall = time.perf_counter() - t0

    model.generation_config = GenerationConfig(
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id, do_sample=False
    )
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    (out / "model.safetensors").chmod(0o644)  # safetensors writes it 0600

    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ppl, n_tokens = perplexity(loaded, encode_file(tok, VALID_TEXT))
    report = {
        "valid_perplexity": round(ppl, 4),
        "valid_tokens_predicted": n_tokens,
        "final_train_loss": round(final_loss, 4),
        "train_wall_time_s": round(wall, 1),
        "seed": args.seed,
        "parameters": n_params,
        "steps": args.steps,
        "batch_size": BATCH_SIZE,
        "seq_len": SEQ_LEN,
        "lr": LR,
        "min_lr_ratio": MIN_LR_RATIO,
        "warmup_steps": WARMUP_STEPS,
        "weight_decay": WEIGHT_DECAY,
        "grad_clip": GRAD_CLIP,
        "train_tokens_seen": args.steps * BATCH_SIZE * SEQ_LEN,
        "train_corpus_tokens": len(train_ids),
        "precision": "bf16 autocast training, fp32 master weights; saved bf16",
        "threads": THREADS,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "corpus": TRAIN_TEXT.name,
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))

    hf_tok = AutoTokenizer.from_pretrained(out)
    for prompt in ("The list type", "def "):
        enc = hf_tok(prompt, return_tensors="pt")
        gen = loaded.generate(**enc, max_new_tokens=48, do_sample=False)
        print(f"--- {prompt!r}\n{hf_tok.decode(gen[0])}")


if __name__ == "__main__":
    main()
