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
ours (`DistillTrainer.compute_loss`, in `kd.py` with the teacher cache). What trains: every kept
weight (default), the last K layers with the final norm and lm_head (`last_layers`), or PEFT LoRA
adapters on the kept Linears (`lora`), merged into the weights at the end. The output is a slim
checkpoint in PRUNED's format with a "Healing" section in its card and `qprune_heal.json`; PRUNED is
never modified.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from qprune.arch import family_of
from qprune.errors import QpruneError
from qprune.healing.kd import Sequences, build_teacher_cache, load_teacher_cache, train, world_size
from qprune.healing.settings import HealSettings, learning_rate
from qprune.measure.data import HELDOUT_SOURCE, DataSpec
from qprune.progress import Progress, as_progress

HEAL_REPORT = "qprune_heal.json"
LOSS_PLOT = "heal_loss.png"


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
        cache = load_teacher_cache(cache_path, train_ids)
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
    history, seconds, steps = train(trainee, teacher, Sequences(train_ids, cache), settings, progress)
    if settings.lora is not None:
        student = trainee.merge_and_unload()
    student.eval()
    ppl_after = held_out(student)

    gap = ppl_before - ppl_teacher
    tokens_trained = steps * settings.batch_size * settings.grad_accum * settings.seq_len * world_size()
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
    if world_size() > 1 and torch.distributed.get_rank() != 0:
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
