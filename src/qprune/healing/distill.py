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
The cache records what made it (teacher, tokenizer, top-k, data, seq_len, seed, token ids) and is
rebuilt, with a note, when any of it differs or the file is damaged.

Memory and time follow `tokens`, never the size of the data: the text is read and tokenized as a
stream, and only the sequences the budget trains on (steps x batch x accumulation x processes) are
drawn, the first ones of the data (the Trainer shuffles their order with the seed); the held-out text
is read only as far as `eval_tokens`. Every argument and path is checked before anything is loaded,
and OUT is claimed (locked) for the whole run, so a second run to the same OUT fails at once; any
error or signal removes everything the run wrote (its partial output, the Trainer's scratch, a
half-written cache).

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
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from qprune.arch import family_of
from qprune.errors import QpruneError, warn
from qprune.healing.kd import Sequences, train
from qprune.healing.settings import HealSettings, learning_rate
from qprune.measure.data import HELDOUT_SOURCE, DataSpec
from qprune.progress import Progress, as_progress

if TYPE_CHECKING:
    from qprune.io.source import Checkpoint

HEAL_REPORT = "qprune_heal.json"
LOSS_PLOT = "heal_loss.png"


@dataclass
class HealResult:
    out: Path
    report: dict = field(default_factory=dict)
    model: object = field(default=None, repr=False, compare=False)  # the healed model, until it is saved

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

    text = summary  # what `cli.options.show` prints


# -- what trains -----------------------------------------------------------------------------------


def _trainable(model, settings: HealSettings) -> tuple[object, str]:
    """The model to train (PEFT-wrapped with LoRA) and a description of what trains."""
    if settings.lora is not None:
        from qprune.healing.lora import lora_config

        try:
            from peft import get_peft_model
        except ImportError:
            raise QpruneError("{lora} needs peft: pip install peft") from None
        config = lora_config(model, r=settings.lora, lora_alpha=2 * settings.lora, lora_dropout=0.0)
        return get_peft_model(model, config), f"LoRA rank {settings.lora} on the kept Linears"
    if settings.last_layers is not None:
        layers = model.config.num_hidden_layers
        settings.check_layers(layers)  # checked on the config before loading; kept for library callers
        first = layers - settings.last_layers
        trained = {f"model.layers.{i}." for i in range(first, layers)} | {"model.norm.", "lm_head."}
        for name, parameter in model.named_parameters():
            parameter.requires_grad = any(name.startswith(prefix) for prefix in trained)
        if model.config.tie_word_embeddings:  # lm_head is the embedding: it trains as lm_head
            model.get_input_embeddings().weight.requires_grad = True
        return model, f"the last {settings.last_layers} layers, the final norm and lm_head"
    return model, "all kept weights"


# -- the teacher -----------------------------------------------------------------------------------

# cost.Shape's fields by the config.json names people know them by (for the mismatch message).
_SHAPE_FIELDS = {
    "hidden": "hidden_size",
    "layers": "num_hidden_layers",
    "vocab": "vocab_size",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "intermediate": "intermediate_size",
    "tied": "tie_word_embeddings",
    "attention_bias": "attention_bias",
    "experts": "num_experts",
    "experts_per_token": "num_experts_per_tok",
    "expert_intermediate": "moe_intermediate_size",
    "dense_mlp_layers": "dense MLP layers (mlp_only_layers)",
}


def _base_candidates(student_config: dict) -> list[str]:
    """Where PRUNED says its base is: the resolvable location first (`qprune_base_path`: an absolute
    directory or a hub id), then the portable name (all that checkpoints before 0.3 record)."""
    names = [student_config.get("qprune_base_path"), student_config.get("qprune_base_model")]
    return [name for i, name in enumerate(names) if isinstance(name, str) and name and name not in names[:i]]


def _local_base(student_config: dict, base: str | Path | Checkpoint | None) -> list[str | Path]:
    """The teacher's local directory, where it is known without resolving anything (for path checks)."""
    names = [base] if base is not None else _base_candidates(student_config)
    return [name for name in names if os.path.isdir(os.path.expanduser(name))]


def check_teacher(student: Checkpoint, teacher: Checkpoint, name: str) -> None:
    """Refuse a teacher the student was not pruned from: another family, any shape field of the config
    (sizes, heads, vocabulary, tying, experts, dense layers), another tokenizer, or more blocks pruned.
    The first mismatch is named."""
    from qprune.cost import Shape
    from qprune.healing.kd import tokenizer_digest
    from qprune.io.experts import kept_counts, recorded_experts
    from qprune.io.width import recorded_width
    from qprune.plan import Plan

    student_config, teacher_config = student.config, teacher.config
    student_family, teacher_family = family_of(student_config), family_of(teacher_config, str(teacher.dir))
    if student_family is not teacher_family:
        raise QpruneError(
            f"the base {name} is a {teacher_family.title} model, the pruned model a {student_family.title}: "
            "not the model it was pruned from (give the right {base})"
        )
    student_shape, teacher_shape = Shape.from_config(student_config).to_dict(), Shape.from_config(teacher_config)
    removed = recorded_experts(student_config)  # an expert cut: its base had that many more experts per layer
    if removed:
        counts = kept_counts(student_config, Plan())
        student_shape["experts"] = max((n + len(removed.get(i, ())) for i, n in counts.items()), default=0)
        student_shape["layer_experts"] = ()  # its base had one count in every layer
    width = recorded_width(student_config)  # a width cut: each layer of its base was that much wider
    if width.has_width:
        student_shape |= _base_widths(student_config, width)
    for field_name, teacher_value in teacher_shape.to_dict().items():
        if teacher_value != student_shape[field_name]:
            label = _SHAPE_FIELDS.get(field_name, field_name)
            raise QpruneError(
                f"the base {name} has {label} {teacher_value}, the pruned model {student_shape[field_name]}: "
                "not the model it was pruned from (give the right {base})"
            )
    if tokenizer_digest(student) != tokenizer_digest(teacher) and not _same_vocabulary(student, teacher):
        raise QpruneError(
            f"the base {name} has another tokenizer than the pruned model (its vocabulary or token ids differ): "
            "not the model it was pruned from (give the right {base})"
        )
    student_plan, teacher_plan = Plan.from_config(student_config), Plan.from_config(teacher_config)
    if not (set(teacher_plan.attn) <= set(student_plan.attn) and set(teacher_plan.mlp) <= set(student_plan.mlp)):
        raise QpruneError(f"the base {name} prunes blocks the student keeps ({teacher_plan}): it cannot teach them")


def _base_widths(config: dict, width) -> dict:
    """The `cost.Shape` width fields of the model a width cut came from: each layer that runs, its
    width plus what the cut removed there (`width`, the recorded lists). Where those differ between
    layers the base was not one stock model, and the first layer's stands (any teacher then differs)."""
    from qprune.arch.qwen3 import layer_widths
    from qprune.io.width import kept_widths

    channels, groups = kept_widths(config)
    ffn, kv = dict(width.ffn), dict(width.kv_heads)
    inner = [n + len(ffn.get(i, ())) for i, n in channels.items()] or [layer_widths(config)[0][0]]
    kv_heads = [n + len(kv.get(i, ())) for i, n in groups.items()] or [layer_widths(config)[0][1]]
    _, kv_top, heads_top = layer_widths(config)[0]
    rep = heads_top // kv_top
    return {
        "intermediate": inner[0],
        "kv_heads": kv_heads[0],
        "heads": kv_heads[0] * rep,
        "layer_intermediate": () if len(set(inner)) == 1 else tuple(inner),
        "layer_kv_heads": () if len(set(kv_heads)) == 1 else tuple(kv_heads),
    }


def _same_vocabulary(student: Checkpoint, teacher: Checkpoint) -> bool:
    """Whether two tokenizers whose files differ in bytes (another transformers wrote them) still map
    the same tokens to the same ids, special tokens included."""
    from qprune.runtime.load import load_tokenizer

    try:
        theirs = load_tokenizer(teacher)
    except QpruneError:
        return False  # a teacher without a loadable tokenizer cannot be shown to match
    ours = load_tokenizer(student)
    return theirs.get_vocab() == ours.get_vocab() and theirs.eos_token_id == ours.eos_token_id


def _resolve_teacher(student_checkpoint, pruned: str, base: str | None):
    """The teacher's checkpoint (`base`, else where PRUNED records its base), checked against the
    student by `check_teacher`."""
    from qprune.io.source import open_checkpoint

    config = student_checkpoint.config
    names = [base] if base is not None else _base_candidates(config)
    if not names:
        raise QpruneError(f"{pruned} records no base model: give {{base}}")
    failure = None
    for name in names:
        try:
            teacher = open_checkpoint(name)
            break
        except QpruneError as error:
            if base is not None:
                raise
            failure = failure or error
    else:
        raise QpruneError(
            f"the base model {pruned} records ({' or '.join(names)}) is unavailable: {failure.template}; give {{base}}"
        ) from None
    check_teacher(student_checkpoint, teacher, teacher.name)
    return teacher.name, teacher


# -- paths -----------------------------------------------------------------------------------------


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def check_cache_dir(teacher_cache: str | Path | None, out: str | Path, inputs: list[str | Path]) -> Path | None:
    """The teacher cache's file, refused before any work when --teacher-cache is a file, lies inside OUT
    (the output is replaced as a whole) or inside an input (qprune never writes into what it reads)."""
    from qprune.healing.kd import CACHE_FILE

    if teacher_cache is None:
        return None
    directory = Path(teacher_cache).expanduser()
    if directory.exists() and not directory.is_dir():
        raise QpruneError(f"{{teacher_cache}} {teacher_cache} is a file; give the directory to keep the cache in")
    real, real_out = _real(directory), _real(out)
    if real == real_out or real.is_relative_to(real_out):
        raise QpruneError(
            f"{{teacher_cache}} {teacher_cache} is inside the output directory {out}, which is written as a "
            "whole: keep the cache outside it"
        )
    for source in inputs:
        if os.path.exists(source) and real.is_relative_to(_real(source)):
            raise QpruneError(
                f"{{teacher_cache}} {teacher_cache} is inside {source}, which heal reads and never writes into: "
                "keep the cache outside it"
            )
    if (directory / CACHE_FILE).is_dir():
        raise QpruneError(f"{{teacher_cache}} {teacher_cache}: {CACHE_FILE} there is a directory")
    return directory / CACHE_FILE


# -- the run ---------------------------------------------------------------------------------------


def _rank() -> tuple[int, int]:
    """(this process's rank, processes): from torchrun's environment, known before torch.distributed
    starts (the Trainer starts it)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _training_sequences(data: DataSpec, tokenizer, settings: HealSettings, world: int, progress: Progress):
    """The sequences the budget trains on and no more: the first steps x batch x accumulation x
    processes windows of `seq_len` tokens, read and tokenized as a stream (the Trainer shuffles their
    order with the seed). Data shorter than that is trained on several times over, with a warning; data
    shorter than one optimizer step is refused."""
    import torch

    from qprune.measure.data import take_tokens

    count = settings.steps(world) * settings.sequences_per_step(world)
    needed = count * settings.seq_len
    source = data.describe()["source"]
    start = time.monotonic()
    tokens = take_tokens(data, tokenizer, needed)  # noted after: a short-data error stays one line
    available = len(tokens) // settings.seq_len
    if available < settings.sequences_per_step(world):
        step = settings.sequences_per_step(world) * settings.seq_len
        raise QpruneError(
            f"the training data {source} holds {len(tokens):,} tokens, fewer than one optimizer step of {step:,} "
            f"({settings.sequences_per_step(world)} sequences of {settings.seq_len}): give more text ({{data}}), "
            "or lower {batch_size} or {seq_len}"
        )
    if available < count:
        warn(
            f"the training data {source} holds {len(tokens):,} tokens, fewer than the {needed:,} that {{tokens}} "
            f"{settings.tokens:,} needs: training on it {needed / (available * settings.seq_len):.1f} times over "
            "(give more text with {data} for as many distinct tokens)"
        )
        count = available
    seconds = time.monotonic() - start
    progress.note(f"training data: {count} sequences of {settings.seq_len} tokens from {source} ({seconds:.0f}s)")
    return torch.tensor(tokens[: count * settings.seq_len], dtype=torch.long).view(count, settings.seq_len)


def _card(student_dir: Path, out: Path) -> str:
    """PRUNED's model card renamed for OUT: its title (the name PRUNED had when it was written) and
    the name its code snippets load."""
    path = student_dir / "README.md"
    card = path.read_text() if path.exists() else ""
    titles = [line[2:].strip() for line in card.splitlines() if line.startswith("# ")]
    old, new = (titles[0] if titles else student_dir.name), out.name
    renamed = [
        f"# {new}" if line.strip() == f"# {old}" else line.replace(f'"{old}"', f'"{new}"') for line in card.splitlines()
    ]
    return "\n".join(renamed)


def heal(
    pruned: str | Path | Checkpoint,
    out: str | Path,
    settings: HealSettings = HealSettings(),
    *,
    base: str | Path | Checkpoint | None = None,
    data: DataSpec = DataSpec(),
    eval_data: DataSpec = DataSpec(HELDOUT_SOURCE),
    teacher_cache: str | Path | None = None,
    force: bool = False,
    progress: bool | Progress = True,
) -> HealResult:
    """Heal PRUNED into OUT; see the module docstring. Every argument is checked before anything
    expensive; OUT is claimed (locked) before the data is read, and held for the whole run."""
    from qprune.io.output import atomic_output, check_output
    from qprune.io.source import open_checkpoint

    progress = as_progress(progress)
    settings.validate()
    rank, world = _rank()
    check_output(out, force, sources=[pruned, *_local_base({}, base)])
    check_cache_dir(teacher_cache, out, [pruned, *_local_base({}, base)])
    student_checkpoint = open_checkpoint(pruned)
    settings.check_layers(student_checkpoint.config["num_hidden_layers"])
    inputs = [pruned, student_checkpoint.dir, *_local_base(student_checkpoint.config, base)]
    check_output(out, force, sources=inputs)
    check_cache_dir(teacher_cache, out, inputs)
    if settings.lora is not None:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise QpruneError("{lora} needs peft: pip install peft") from None
    teacher_name, teacher_checkpoint = _resolve_teacher(student_checkpoint, str(pruned), base)
    inputs.append(teacher_checkpoint.dir)
    check_output(out, force, sources=inputs)
    cache_path = check_cache_dir(teacher_cache, out, inputs)
    per_step = settings.sequences_per_step(world) * settings.seq_len
    if settings.tokens < per_step:
        warn(
            f"{{tokens}} {settings.tokens} is less than one optimizer step: rounding up to one step of "
            f"{per_step:,} tokens ({settings.sequences_per_step(world)} sequences of {settings.seq_len})"
        )
    # Rank 0 claims OUT now and holds it (locked) for the whole run: a second heal to the same OUT is
    # refused at once, and any error or signal removes everything this run wrote, the Trainer's
    # scratch directory included (it lives in the partial output).
    claim = atomic_output(out, force, sources=inputs) if rank == 0 else tempfile.TemporaryDirectory()
    with claim as tmp:
        result = _run(
            student_checkpoint, teacher_checkpoint, teacher_name, str(pruned), Path(out), Path(tmp), settings,
            data, eval_data, cache_path, world, progress,
        )  # fmt: skip
        if rank == 0:
            progress.note(f"saving the healed checkpoint to {out}")
            _write_output(student_checkpoint, result, Path(out), Path(tmp))
    result.model = None  # saved (or, on other ranks, not to be): its memory can go
    return result


def _run(
    student_checkpoint, teacher_checkpoint, teacher_name: str, pruned: str, out: Path, tmp: Path,
    settings: HealSettings, data: DataSpec, eval_data: DataSpec, cache_path: Path | None, world: int,
    progress: Progress,
) -> HealResult:  # fmt: skip
    import torch

    from qprune.healing.kd import cache_identity, checkpoint_digest, tensor_digest, tokenizer_digest
    from qprune.io.source import portable_name
    from qprune.measure.data import take_tokens
    from qprune.measure.evaluate import perplexity
    from qprune.runtime.load import load, load_tokenizer

    tokenizer = load_tokenizer(student_checkpoint)
    train_ids = _training_sequences(data, tokenizer, settings, world, progress)
    eval_ids = torch.tensor(take_tokens(eval_data, tokenizer, settings.eval_tokens), dtype=torch.long)
    if eval_ids.numel() < 2:
        raise QpruneError(
            f"the evaluation data {eval_data.describe()['source']} holds fewer than 2 tokens ({{eval_data}})"
        )
    progress.note(f"held-out text: {eval_ids.numel():,} tokens of {eval_data.describe()['source']}")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    progress.note(f"loading the teacher {portable_name(teacher_name)} and the student {pruned}")
    teacher = load(teacher_checkpoint, dtype=torch.float32).to(device)
    student = load(student_checkpoint, dtype=torch.float32).to(device)
    stride = max(1, settings.seq_len // 2)

    def held_out(model) -> float:
        return perplexity(model, eval_ids, settings.seq_len, stride, batch_size=settings.batch_size).value

    progress.note(f"held-out perplexity before healing ({eval_ids.numel():,} tokens), teacher and student")
    ppl_teacher, ppl_before = held_out(teacher), held_out(student)

    cache = None
    if settings.loss in ("kd", "mix") and cache_path is not None:
        from qprune.healing.kd import build_teacher_cache, load_teacher_cache

        k = min(settings.top_k or teacher.config.vocab_size, teacher.config.vocab_size)
        identity = cache_identity(
            teacher=checkpoint_digest(teacher_checkpoint.dir, teacher_checkpoint.config),
            tokenizer=tokenizer_digest(student_checkpoint),
            top_k=k,
            data={key: data.describe()[key] for key in ("source", "text_field", "split")},
            seq_len=settings.seq_len,
            seed=settings.seed,
            input_ids=tensor_digest(train_ids),
        )
        cache, why = load_teacher_cache(cache_path, identity, train_ids)
        if cache is not None:
            progress.note(f"teacher cache: reusing {cache_path}")
        else:
            if why:
                progress.note(f"teacher cache {cache_path} {why}: rebuilding it")
            progress.note(f"teacher cache: computing top-{k} log-probabilities of {train_ids.shape[0]} sequences")
            cache = build_teacher_cache(teacher, train_ids, cache_path, settings.top_k, settings.batch_size, identity)
        teacher = None  # the teacher need not stay in memory
    elif settings.loss == "lm":
        teacher = None

    student.train()
    settings = replace(settings, lr=learning_rate(settings, student.num_parameters()))
    trainee, trainable = _trainable(student, settings)
    trainable_parameters = sum(p.numel() for p in trainee.parameters() if p.requires_grad)
    progress.note(
        f"training {trainable}: {settings.steps(world)} steps of {settings.sequences_per_step(world)} sequences"
    )
    history, seconds, steps = train(trainee, teacher, Sequences(train_ids, cache), settings, progress, scratch=tmp)
    if settings.lora is not None:
        student = trainee.merge_and_unload()
    student.eval()
    progress.note("held-out perplexity after healing")
    ppl_after = held_out(student)

    gap = ppl_before - ppl_teacher
    tokens_trained = steps * settings.sequences_per_step(world) * settings.seq_len
    report = {
        "student": pruned,
        "teacher": portable_name(teacher_name),
        "settings": asdict(settings),
        "data": data.describe() | {"seq_len": settings.seq_len, "samples": int(train_ids.shape[0])},
        "eval": eval_data.describe() | {"tokens": int(eval_ids.numel()), "window": settings.seq_len, "stride": stride},
        "teacher_cache": str(cache_path.parent) if cache_path is not None else None,
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
    result = HealResult(out.absolute(), report)
    result.model = student
    return result


def _write_output(student_checkpoint, result: HealResult, out: Path, tmp: Path) -> None:
    """The healed checkpoint, its report, loss plot and card, into the partial output `tmp`."""
    report = result.report
    _write_checkpoint(result.model, student_checkpoint, tmp, out)
    result.model = None
    (tmp / HEAL_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    plot = _plot_loss(report["loss_history"], tmp / LOSS_PLOT)
    card = _card(student_checkpoint.dir, out.absolute())
    (tmp / "README.md").write_text(card.rstrip() + "\n\n" + healing_section(report, plot) + "\n")


def _write_checkpoint(student, checkpoint, tmp: Path, out: Path) -> None:
    """The healed weights in PRUNED's format: its config, code, tokenizer files and dtype; only kept
    tensors (the model holds no others). A full disk is one line (atomic_output removes the rest)."""
    import torch
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from qprune.healing.kd import reason_of
    from qprune.io.safetensors import SAFE_INDEX
    from qprune.ops.prune import DEFAULT_MAX_SHARD_SIZE

    dtype = getattr(torch, str(checkpoint.config.get("dtype") or checkpoint.config.get("torch_dtype") or "float32"))
    state = family_of(checkpoint.config).checkpoint_state(student.state_dict())  # on-disk names (MoE experts)
    state = {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in state.items()}
    if student.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    shards = split_torch_state_dict_into_shards(state, max_shard_size=DEFAULT_MAX_SHARD_SIZE)
    for filename, names in shards.filename_to_tensors.items():
        try:
            save_file({name: state[name] for name in names}, str(tmp / filename), metadata={"format": "pt"})
        except SafetensorError as error:  # safetensors reports OS errors (no space left) as its own type
            raise QpruneError(f"cannot write {out}: {reason_of(error)}") from None
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
