"""`qprune heal`: train a pruned checkpoint back towards the model it was pruned from.

    result = heal("qwen3-pruned", "qwen3-healed", HealSettings(tokens=500_000))          # KD, all weights
    result = heal("qwen3-pruned", "qwen3-healed", HealSettings(lora=16), base="Qwen/Qwen3-0.6B")
    print(result.summary())

The student is PRUNED loaded slim (pruned blocks hold nothing, so nothing is built or trained for
them); the teacher is the dense base (the `qprune_base_model` PRUNED records, or `base`). The default
loss is logit distillation: the forward KL divergence from the teacher's next-token distribution to
the student's, in float32 (`loss="lm"` trains on the text alone, `"mix"` adds the two). With
`teacher_cache`, the teacher's top-k log-probabilities are computed once into safetensors files and
the teacher is not held during training (sparse KD, as DistillKit does; k = vocabulary is exact KD).

Training runs on transformers' `Trainer` (warm-up + cosine decay, gradient accumulation, bf16 on GPUs,
gradient checkpointing, and several processes under `torchrun` / `accelerate launch`): only the loss is
ours (`DistillTrainer.compute_loss`). What trains: every kept weight (default), the last K layers with
the final norm and lm_head (`last_layers`), or PEFT LoRA adapters on the kept Linears (`lora`), merged
into the weights at the end. The output is a slim checkpoint in PRUNED's format with a "Healing"
section in its card and `qprune_heal.json`; PRUNED is never modified.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from qprune.arch import family_of
from qprune.errors import QpruneError
from qprune.measure.data import HELDOUT_SOURCE, DataSpec
from qprune.progress import Progress, as_progress

if TYPE_CHECKING:
    import torch

LOSSES = ("kd", "lm", "mix")
SMALL_MODEL = 100_000_000  # parameters; small models take a larger default learning rate


HEAL_REPORT = "qprune_heal.json"
LOSS_PLOT = "heal_loss.png"


@dataclass(frozen=True)
class HealSettings:
    tokens: int = 500_000  # training budget, summed over processes
    seq_len: int = 256
    batch_size: int = 8  # sequences per optimizer step and process (before accumulation)
    grad_accum: int = 1
    lr: float | None = None  # None: 1e-3 below SMALL_MODEL parameters, 1e-4 above (see `learning_rate`)
    warmup: float = 0.05  # share of the steps
    loss: str = "kd"
    lm_weight: float = 0.5  # "mix": loss = KD + lm_weight * LM
    lora: int | None = None  # LoRA rank; None trains the weights themselves
    last_layers: int | None = None  # train only the last K layers, the final norm and lm_head
    seed: int = 0
    top_k: int | None = None  # teacher cache: log-probabilities kept per token (None: the whole vocabulary)
    eval_tokens: int = 40_000  # held-out tokens scored before and after
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        for name in ("tokens", "seq_len", "batch_size", "grad_accum", "eval_tokens"):
            if getattr(self, name) < 1:
                raise QpruneError(f"{name} must be positive, not {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise QpruneError(f"lr must be positive, not {self.lr}")
        if not 0 <= self.warmup < 1:
            raise QpruneError(f"warmup must be a share of the steps in [0, 1), not {self.warmup}")
        if self.loss not in LOSSES:
            raise QpruneError(f"loss {self.loss!r}: choose {', '.join(LOSSES)}")
        for name in ("lora", "last_layers", "top_k"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise QpruneError(f"{name} must be positive, not {getattr(self, name)}")
        if self.lora is not None and self.last_layers is not None:
            raise QpruneError("choose lora or last_layers, not both")


def learning_rate(settings: HealSettings, parameters: int) -> float:
    """The peak learning rate: as given, else 1e-3 for small models (measured on the embedded model:
    85% of the gap recovered with 500k tokens, against 78% at 2e-4) and 1e-4 for larger ones, the usual
    scale for fine-tuning LLMs of 0.5B parameters and up."""
    if settings.lr is not None:
        return settings.lr
    return 1e-3 if parameters < SMALL_MODEL else 1e-4


@dataclass
class HealResult:
    out: Path
    report: dict = field(default_factory=dict)

    def summary(self) -> str:
        r = self.report
        before, after, teacher = r["perplexity"]["before"], r["perplexity"]["after"], r["perplexity"]["teacher"]
        recovered = r["perplexity"]["gap_recovered"]
        return "\n".join(
            [
                f"healed {r['student']} -> {self.out}",
                f"trained: {r['trainable']} ({r['trainable_parameters']:,} parameters), loss {r['settings']['loss']}, "
                f"{r['tokens_trained']:,} tokens in {r['steps']} steps, {r['train_seconds']:.0f} s "
                f"({r['tokens_per_second']:,.0f} tokens/s)",
                f"held-out perplexity ({r['eval']['tokens']:,} tokens): teacher {teacher:.3f}, "
                f"pruned {before:.3f} -> healed {after:.3f}"
                + (f" ({recovered:.0%} of the gap recovered)" if recovered is not None else ""),
            ]
        )


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


class _Sequences:
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


def build_teacher_cache(teacher, input_ids: torch.Tensor, path: Path, top_k: int | None, batch_size: int) -> dict:
    """The teacher's top-k next-token log-probabilities for every training sequence, written to
    `path` (safetensors) and returned. Indices are int32, log-probabilities float32."""
    import torch
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
    cache = {"ids": torch.cat(ids), "logprobs": torch.cat(logprobs), "input_ids": input_ids}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(cache, str(path), metadata={"top_k": str(k)})
    return cache


def _load_teacher_cache(path: Path, input_ids: torch.Tensor) -> dict | None:
    """A cache written for exactly these sequences, or None."""
    import torch
    from safetensors.torch import load_file

    if not path.exists():
        return None
    cache = load_file(str(path))
    if set(cache) != {"ids", "logprobs", "input_ids"} or not torch.equal(cache["input_ids"], input_ids):
        return None
    return cache


# -- what trains -----------------------------------------------------------------------------------


def _trainable(model, settings: HealSettings) -> tuple[object, str]:
    """The model to train (PEFT-wrapped with LoRA) and a description of what trains."""
    if settings.lora is not None:
        from qprune.healing.lora import lora_config

        try:
            from peft import get_peft_model
        except ImportError:
            raise QpruneError("{lora} needs peft: pip install 'qprune[heal]'") from None
        config = lora_config(model, r=settings.lora, lora_alpha=2 * settings.lora, lora_dropout=0.0)
        return get_peft_model(model, config), f"LoRA rank {settings.lora} on the kept Linears"
    if settings.last_layers is not None:
        layers = model.config.num_hidden_layers
        if settings.last_layers > layers:
            raise QpruneError(f"last_layers {settings.last_layers}: the model has {layers} layers")
        first = layers - settings.last_layers
        trained = {f"model.layers.{i}." for i in range(first, layers)} | {"model.norm.", "lm_head."}
        for name, parameter in model.named_parameters():
            parameter.requires_grad = any(name.startswith(prefix) for prefix in trained)
        if model.config.tie_word_embeddings:  # lm_head is the embedding: it trains as lm_head
            model.get_input_embeddings().weight.requires_grad = True
        return model, f"the last {settings.last_layers} layers, the final norm and lm_head"
    return model, "all kept weights"


# -- the run ---------------------------------------------------------------------------------------


def _resolve_teacher(student_config: dict, pruned: str, base: str | None):
    """The teacher's checkpoint, checked against the student: same architecture, sizes and vocabulary,
    and pruned no further than the student."""
    from qprune.io.source import open_checkpoint
    from qprune.plan import Plan

    name = base or student_config.get("qprune_base_model")
    if not name:
        raise QpruneError(f"{pruned} records no base model: give {{base}}")
    try:
        teacher = open_checkpoint(name)
    except QpruneError as error:
        if base is None:
            raise QpruneError(
                f"the base model {pruned} records ({name}) is unavailable: {error.template}; give {{base}}"
            ) from None
        raise
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads", "intermediate_size"):
        if teacher.config.get(key) != student_config.get(key):
            raise QpruneError(
                f"the base {name} has {key} {teacher.config.get(key)}, the pruned model {student_config.get(key)}: "
                "not the model it was pruned from"
            )
    student_plan, teacher_plan = Plan.from_config(student_config), teacher.plan
    if not (set(teacher_plan.attn) <= set(student_plan.attn) and set(teacher_plan.mlp) <= set(student_plan.mlp)):
        raise QpruneError(f"the base {name} prunes blocks the student keeps ({teacher_plan}): it cannot teach them")
    return name, teacher


def heal(
    pruned: str | Path,
    out: str | Path,
    settings: HealSettings = HealSettings(),
    *,
    base: str | None = None,
    data: DataSpec = DataSpec(),
    eval_data: DataSpec = DataSpec(HELDOUT_SOURCE),
    teacher_cache: str | Path | None = None,
    force: bool = False,
    progress: bool | Progress = True,
) -> HealResult:
    """Heal PRUNED into OUT; see the module docstring."""
    import torch

    from qprune.io.output import atomic_output, check_output
    from qprune.io.source import open_checkpoint, portable_name
    from qprune.measure.data import load_token_batches, tokenize
    from qprune.measure.evaluate import perplexity
    from qprune.runtime.load import load, load_tokenizer

    progress = as_progress(progress)
    settings.validate()
    student_checkpoint = open_checkpoint(pruned)
    check_output(out, force, sources=[pruned])
    teacher_name, teacher_checkpoint = _resolve_teacher(student_checkpoint.config, str(pruned), base)
    check_output(out, force, sources=[pruned, teacher_checkpoint.dir])
    if settings.lora is not None:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise QpruneError("{lora} needs peft: pip install 'qprune[heal]'") from None

    tokenizer = load_tokenizer(student_checkpoint.dir)
    train_ids = load_token_batches(
        DataSpec(**{**asdict(data), "samples": None, "seq_len": settings.seq_len}), tokenizer
    )
    if train_ids.shape[0] < settings.batch_size:
        raise QpruneError(
            f"the training data holds {train_ids.shape[0]} sequences of {settings.seq_len} tokens, fewer than one "
            f"batch of {settings.batch_size}: give more text, or lower {{batch_size}} or {{seq_len}}"
        )
    eval_ids = torch.tensor(tokenize(eval_data, tokenizer)[: settings.eval_tokens], dtype=torch.long)
    if eval_ids.numel() < 2:
        raise QpruneError("the evaluation data holds fewer than 2 tokens")

    on_cuda = torch.cuda.is_available()
    device = "cuda" if on_cuda else "cpu"
    teacher = load(teacher_checkpoint.dir, dtype=torch.float32).to(device)
    student = load(student_checkpoint.dir, dtype=torch.float32).to(device)
    stride = max(1, settings.seq_len // 2)

    def held_out(model) -> float:
        return perplexity(model, eval_ids, settings.seq_len, stride, batch_size=settings.batch_size).value

    progress.note(f"held-out perplexity before healing ({eval_ids.numel():,} tokens)")
    ppl_teacher, ppl_before = held_out(teacher), held_out(student)

    cache = None
    if settings.loss in ("kd", "mix") and teacher_cache is not None:
        cache_path = Path(teacher_cache) / "teacher_topk.safetensors"
        cache = _load_teacher_cache(cache_path, train_ids)
        if cache is None:
            progress.note(f"teacher cache: computing top-{settings.top_k or 'all'} log-probabilities -> {cache_path}")
            cache = build_teacher_cache(teacher, train_ids, cache_path, settings.top_k, settings.batch_size)
        teacher = None  # the teacher need not stay in memory
    elif settings.loss == "lm":
        teacher = None

    student.train()
    settings = replace(settings, lr=learning_rate(settings, student.num_parameters()))
    trainee, trainable = _trainable(student, settings)
    trainable_parameters = sum(p.numel() for p in trainee.parameters() if p.requires_grad)
    history, seconds, steps = _train(trainee, teacher, _Sequences(train_ids, cache), settings, progress)
    if settings.lora is not None:
        student = trainee.merge_and_unload()
    student.eval()
    ppl_after = held_out(student)

    gap = ppl_before - ppl_teacher
    tokens_trained = steps * settings.batch_size * settings.grad_accum * settings.seq_len * _world_size()
    report = {
        "student": str(pruned),
        "teacher": portable_name(teacher_name),
        "settings": asdict(settings),
        "data": data.describe() | {"seq_len": settings.seq_len, "samples": int(train_ids.shape[0])},
        "eval": eval_data.describe() | {"tokens": int(eval_ids.numel()), "window": settings.seq_len, "stride": stride},
        "teacher_cache": str(teacher_cache) if teacher_cache is not None else None,
        "trainable": trainable,
        "trainable_parameters": trainable_parameters,
        "steps": steps,
        "tokens_trained": tokens_trained,
        "train_seconds": seconds,
        "tokens_per_second": tokens_trained / seconds if seconds else 0.0,
        "perplexity": {
            "teacher": ppl_teacher,
            "before": ppl_before,
            "after": ppl_after,
            "gap_recovered": (ppl_before - ppl_after) / gap if gap > 0 else None,
        },
        "loss_history": history,
    }
    result = HealResult(Path(out).absolute(), report)
    if _world_size() > 1 and torch.distributed.get_rank() != 0:
        return result  # rank 0 writes
    with atomic_output(out, force, sources=[student_checkpoint.dir, teacher_checkpoint.dir]) as tmp:
        _write_checkpoint(student, student_checkpoint, tmp)
        (tmp / HEAL_REPORT).write_text(json.dumps(report, indent=2) + "\n")
        plot = _plot_loss(history, tmp / LOSS_PLOT)
        card = (
            (student_checkpoint.dir / "README.md").read_text()
            if (student_checkpoint.dir / "README.md").exists()
            else ""
        )
        (tmp / "README.md").write_text(card.rstrip() + "\n\n" + healing_section(report, plot) + "\n")
    return result


def _world_size() -> int:
    import torch

    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def _train(model, teacher, dataset, settings: HealSettings, progress: Progress) -> tuple[list, float, int]:
    """Train with transformers' Trainer; returns (loss history, seconds, optimizer steps)."""
    import tempfile

    import torch
    from transformers import TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = settings.batch_size * settings.grad_accum * settings.seq_len * world
    steps = max(1, settings.tokens // per_step)
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

    with tempfile.TemporaryDirectory(prefix="qprune-heal-") as scratch:
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


def _write_checkpoint(student, checkpoint, tmp: Path) -> None:
    """The healed weights in PRUNED's format: its config, code, tokenizer files and dtype; only kept
    tensors (the model holds no others)."""
    import torch
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    from qprune.io.safetensors import SAFE_INDEX
    from qprune.ops.prune import DEFAULT_MAX_SHARD_SIZE

    dtype = getattr(torch, str(checkpoint.config.get("dtype") or checkpoint.config.get("torch_dtype") or "float32"))
    state = family_of(checkpoint.config).checkpoint_state(student.state_dict())  # on-disk names (MoE experts)
    state = {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in state.items()}
    if student.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    shards = split_torch_state_dict_into_shards(state, max_shard_size=DEFAULT_MAX_SHARD_SIZE)
    for filename, names in shards.filename_to_tensors.items():
        save_file({name: state[name] for name in names}, str(tmp / filename), metadata={"format": "pt"})
    if shards.is_sharded:
        index = {"metadata": shards.metadata, "weight_map": shards.tensor_to_filename}
        (tmp / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    for path in checkpoint.dir.iterdir():
        if path.is_file() and not path.name.endswith(".safetensors") and path.name not in (SAFE_INDEX, "README.md"):
            shutil.copyfile(path, tmp / path.name)


def _plot_loss(history: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot([h["step"] for h in history], [h["loss"] for h in history])
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss")
    axes.set_title("qprune heal")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def healing_section(report: dict, plot: bool) -> str:
    """The model card's "Healing" section."""
    s, p, d = report["settings"], report["perplexity"], report["data"]
    recovered = f"{p['gap_recovered']:.0%}" if p["gap_recovered"] is not None else "n/a"
    lines = [
        "## Healing",
        "",
        f"Trained by `qprune heal` against the teacher `{report['teacher']}`: loss `{s['loss']}`"
        f"{' (sparse, teacher top-k cached)' if report['teacher_cache'] else ''}, {report['trainable']}.",
        "",
        "| | |",
        "|---|---|",
        f"| data | {d['source']}, {d['samples']} sequences of {d['seq_len']} tokens |",
        f"| tokens trained | {report['tokens_trained']:,} in {report['steps']} steps, lr {s['lr']:g}, "
        f"seed {s['seed']} |",
        f"| time | {report['train_seconds']:.0f} s ({report['tokens_per_second']:,.0f} tokens/s) |",
        f"| held-out perplexity | teacher {p['teacher']:.3f}; pruned {p['before']:.3f} -> healed {p['after']:.3f} "
        f"({recovered} of the gap recovered) on {report['eval']['source']}, {report['eval']['tokens']:,} tokens |",
    ]
    if plot:
        lines += ["", f"![training loss]({LOSS_PLOT})"]
    return "\n".join(lines)
