"""The training half of `qprune heal`: the distillation loss, the teacher cache, and the run on
transformers' `Trainer`.

    history, seconds, steps = train(student, teacher, Sequences(input_ids), settings, progress)

`kd_loss` is forward KL from the teacher's next-token distribution to the student's, in float32, dense
or over a cached top-k (sparse KD, as DistillKit does; exact when k is the vocabulary). The Trainer
does the rest: optimizer, warm-up and cosine schedule, accumulation, bf16 on GPUs, several processes.

The teacher cache is one safetensors file whose metadata records what made it (`CACHE_FIELDS`: the
teacher's config and a sample of its weights, the tokenizer files, top-k, seq_len, seed, the data and
a digest of the token ids); `load_teacher_cache` accepts it only when all of that matches and the file
is whole, and `build_teacher_cache` writes it atomically (a temporary file beside it, renamed).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from qprune.errors import QpruneError

if TYPE_CHECKING:
    import torch

    from qprune.healing.settings import HealSettings
    from qprune.io.source import Checkpoint
    from qprune.progress import Progress


# -- the loss --------------------------------------------------------------------------------------


def kd_loss(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_ids=None) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student), in float32. With `teacher_ids`, `teacher_logprobs`
    hold only those vocabulary entries (top-k, sparse KD): the divergence is taken over those entries
    plus one bucket for all the others, so the student is not pushed to zero outside the top k (exact
    KD when k is the whole vocabulary, where the bucket is empty)."""
    import torch

    student = torch.log_softmax(student_logits.float(), dim=-1)
    teacher = teacher_logprobs.float()
    if teacher_ids is None:
        return (teacher.exp() * (teacher - student)).sum(-1).mean()
    student = student.gather(-1, teacher_ids.long())
    teacher_rest, student_rest = _log_rest(teacher), _log_rest(student)
    divergence = (teacher.exp() * (teacher - student)).sum(-1)
    divergence = divergence + torch.where(
        teacher_rest > -30, teacher_rest.exp() * (teacher_rest - student_rest), torch.zeros_like(teacher_rest)
    )  # an empty bucket (k = vocabulary) adds nothing
    return divergence.mean()


def _log_rest(logprobs: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(logprobs))) over the last dimension: the log-probability of everything else."""
    import torch

    covered = torch.logsumexp(logprobs, dim=-1).clamp(max=-1e-7)
    return torch.log(-torch.expm1(covered)).clamp(min=-100.0)


def _trainer_class():
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """transformers' Trainer with the distillation loss; everything else (optimizer, schedule,
        accumulation, precision, distribution) is the Trainer's."""

        def __init__(self, *args, teacher=None, loss_kind: str = "kd", lm_weight: float = 0.5, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher = teacher.to(self.args.device) if teacher is not None else None
            self.loss_kind, self.lm_weight = loss_kind, lm_weight

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            input_ids = inputs["input_ids"]
            logits = model(input_ids=input_ids).logits[:, :-1]
            loss = torch.zeros((), device=logits.device)
            if self.loss_kind in ("kd", "mix"):
                if "teacher_logprobs" in inputs:  # from the cache: already shifted, [batch, seq_len - 1, k]
                    loss = loss + kd_loss(logits, inputs["teacher_logprobs"], inputs["teacher_ids"])
                else:
                    with torch.no_grad():
                        teacher = torch.log_softmax(self.teacher(input_ids=input_ids).logits[:, :-1].float(), -1)
                    loss = loss + kd_loss(logits, teacher)
            if self.loss_kind in ("lm", "mix"):
                lm = torch.nn.functional.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1)
                )
                loss = loss + (self.lm_weight if self.loss_kind == "mix" else 1.0) * lm
            return (loss, {"logits": logits}) if return_outputs else loss

    return DistillTrainer


# -- data ------------------------------------------------------------------------------------------


class Sequences:
    """Training sequences (a map-style dataset of dicts), with the teacher cache's entries when given."""

    def __init__(self, input_ids: torch.Tensor, cache: dict | None = None) -> None:
        self.input_ids, self.cache = input_ids, cache

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.input_ids[i]}
        if self.cache is not None:
            item |= {"teacher_ids": self.cache["ids"][i], "teacher_logprobs": self.cache["logprobs"][i]}
        return item


CACHE_FILE = "teacher_topk.safetensors"
CACHE_FORMAT = "2"  # bumped whenever what the cache holds or records changes
# What a cache records about what made it, in the order a mismatch is reported, with how to say it.
CACHE_FIELDS = {
    "format": "qprune version",
    "teacher": "teacher (config or weights)",
    "tokenizer": "tokenizer",
    "top_k": "top_k",
    "seq_len": "seq_len",
    "seed": "seed",
    "data": "data",
    "input_ids": "training sequences",
}
# The files that define a tokenizer's vocabulary and how text becomes ids (not its display settings).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")
_SAMPLES, _SAMPLE_BYTES = 16, 1 << 16  # weights: this many evenly spread blocks of each shard are hashed


def checkpoint_digest(model_dir: Path, config: dict) -> str:
    """A cheap identity of a checkpoint that changes when its config or weights do: its config, and
    for each safetensors file its name, size, header and 16 blocks of 64 KiB spread over its data
    (a retrained or re-quantized model differs in nearly every block; reading 1 MiB per shard is
    instant even for a large model)."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for path in sorted(model_dir.glob("*.safetensors")):
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as file:
            for i in range(_SAMPLES):
                file.seek(max(0, (size - _SAMPLE_BYTES) * i // (_SAMPLES - 1)))
                digest.update(file.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def tokenizer_digest(checkpoint: Checkpoint) -> str:
    """The identity of a checkpoint's tokenizer: the bytes of the files that define its vocabulary
    (read once per Checkpoint)."""
    if "tokenizer_digest" not in checkpoint.memo:
        checkpoint.memo["tokenizer_digest"] = _tokenizer_digest(checkpoint.dir)
    return checkpoint.memo["tokenizer_digest"]


def _tokenizer_digest(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            digest.update(f"{name}\0".encode() + (model_dir / name).read_bytes())
    for path in sorted(model_dir.glob("*.tiktoken")):
        digest.update(f"{path.name}\0".encode() + path.read_bytes())
    return digest.hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def cache_identity(**fields: object) -> dict[str, str]:
    """The safetensors metadata a cache records (`CACHE_FIELDS`), as strings."""
    identity = {"format": CACHE_FORMAT} | {
        name: value if isinstance(value, str) else json.dumps(value, sort_keys=True) for name, value in fields.items()
    }
    missing = set(CACHE_FIELDS) - set(identity)
    assert not missing, missing  # a programming error, not the user's
    return identity


def reason_of(error: BaseException) -> str:
    """An OS or safetensors error in a few words ("No space left on device")."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    # safetensors wraps the OS error in its own text: `... I/O error: No space left on device (os error
    # 28)` or `IoError(Os { ..., message: "No space left on device" })`
    found = re.search(r'message: "([^"]+)"|I/O error: ([^()]+?)\s*\(os error', text)
    if found:
        return found.group(1) or found.group(2)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def build_teacher_cache(
    teacher, input_ids: torch.Tensor, path: Path, top_k: int | None, batch_size: int, identity: dict[str, str]
) -> dict:
    """The teacher's top-k next-token log-probabilities for the training sequences, written to `path`
    (safetensors, with `identity` as its metadata) and returned. Indices are int32, log-probabilities
    float32. The file is written beside `path` and renamed into place: a crash, signal or full disk
    leaves the old cache or none, never half of one, and no temporary file."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    vocab = teacher.config.vocab_size
    k = min(top_k or vocab, vocab)
    ids, logprobs = [], []
    device = teacher.get_input_embeddings().weight.device
    with torch.no_grad():
        for batch in input_ids.split(batch_size):
            logp = torch.log_softmax(teacher(input_ids=batch.to(device)).logits[:, :-1].float(), -1)
            values, indices = logp.topk(k, dim=-1)
            ids.append(indices.to(torch.int32).cpu())
            logprobs.append(values.cpu())
    cache = {"ids": torch.cat(ids), "logprobs": torch.cat(logprobs), "input_ids": input_ids.contiguous()}
    temp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # as any file the user writes (mkstemp's 0600 would surprise a team)
        save_file(cache, temp, metadata=identity)
        os.replace(temp, path)
        temp = None
    except (OSError, SafetensorError) as error:
        raise QpruneError(f"cannot write the teacher cache {path} ({{teacher_cache}}): {reason_of(error)}") from None
    finally:
        if temp is not None and os.path.exists(temp):
            os.unlink(temp)
    return cache


def load_teacher_cache(path: Path, identity: dict[str, str], input_ids: torch.Tensor) -> tuple[dict | None, str]:
    """(the cache at `path`, "") when it was made by exactly `identity` for these sequences and is
    whole; else (None, why not) — it is then rebuilt, whatever is wrong with the file."""
    import torch
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if not path.exists():
        return None, ""
    damaged = (OSError, SafetensorError, ValueError, RuntimeError, TypeError, KeyError)
    try:
        with safe_open(str(path), "pt") as file:
            metadata = file.metadata() or {}
    except damaged as error:
        return None, f"is damaged ({reason_of(error)})"
    for name, what in CACHE_FIELDS.items():
        if metadata.get(name) != identity[name]:
            return None, f"was made for another {what}"
    try:
        cache = load_file(str(path))
    except damaged as error:
        return None, f"is damaged ({reason_of(error)})"
    rows, length = input_ids.shape
    whole = (
        set(cache) == {"ids", "logprobs", "input_ids"}
        and cache["ids"].shape == cache["logprobs"].shape
        and tuple(cache["ids"].shape[:2]) == (rows, length - 1)
        and torch.equal(cache["input_ids"], input_ids)
    )
    return (cache, "") if whole else (None, "is damaged (its tensors do not match its record)")


def world_size() -> int:
    import torch

    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def train(
    model, teacher, dataset, settings: HealSettings, progress: Progress, scratch: Path | None = None
) -> tuple[list, float, int]:
    """Train with transformers' Trainer; returns (loss history, seconds, optimizer steps). The Trainer's
    scratch directory is made in `scratch` (heal passes its partial output, so that every way out of
    the run removes it) and removed when training ends."""
    import torch
    from transformers import TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = settings.sequences_per_step(world) * settings.seq_len
    steps = settings.steps(world)
    history: list[dict] = []
    start = time.perf_counter()

    class Report(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                history.append({"step": state.global_step, "loss": float(logs["loss"])})
                elapsed = time.perf_counter() - start
                rate = state.global_step * per_step / elapsed if elapsed else 0.0
                left = elapsed / state.global_step * (steps - state.global_step) if state.global_step else 0.0
                progress.note(
                    f"heal step {state.global_step}/{steps}: loss {logs['loss']:.4f}, {rate:,.0f} tokens/s, "
                    f"about {left:.0f}s left"
                )

    with tempfile.TemporaryDirectory(prefix="qprune-heal-", dir=scratch) as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            max_steps=steps,
            per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.grad_accum,
            learning_rate=settings.lr,
            lr_scheduler_type="cosine",
            warmup_steps=math.ceil(settings.warmup * steps),
            weight_decay=0.0,
            logging_steps=max(1, steps // 20),
            save_strategy="no",
            report_to=[],
            seed=settings.seed,
            data_seed=settings.seed,
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            use_cpu=not torch.cuda.is_available(),
            **({"gradient_checkpointing": True} if settings.gradient_checkpointing else {}),
            remove_unused_columns=False,
            dataloader_num_workers=0,
            disable_tqdm=True,
            ddp_backend="gloo" if world > 1 and not torch.cuda.is_available() else None,
        )
        trainer = _trainer_class()(
            model=model,
            args=args,
            train_dataset=dataset,
            teacher=teacher,
            loss_kind=settings.loss,
            lm_weight=settings.lm_weight,
            callbacks=[Report()],
        )
        for callback in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(callback)
        trainer.train()
    return history, time.perf_counter() - start, steps
