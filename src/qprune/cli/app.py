"""The `qprune` command line. Each command parses and validates its options, then calls one library
function. torch and transformers are imported inside the commands, so `qprune --help` is instant.

Every command runs inside `_Commands.invoke`, the one place that (1) turns SIGTERM and SIGHUP into an
exception, as SIGINT already is, so that temporary files are removed on the way out whichever signal
stopped the run, and (2) prints what is not a bug in one line, `error: ...`: bad input, OS errors,
damaged files, memory; warnings print as one line, `warning: ...`. Exit statuses are listed in
`options.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperCommand, TyperGroup

from qprune.cli.options import (
    AS_JSON,
    ATTN,
    CHECK_OVERFLOW,
    DATA_PANEL,
    DTYPE,
    FORCE,
    LOAD_DTYPE,
    MAX_MEMORY,
    MLP,
    PLAN,
    QUANTIZE,
    QUIET,
    in_panel,
    option,
    parse_memory,
    parse_size,
    read_plan,
    reporter,
    settings_from,
    show,
    user_errors,
    warnings_as_lines,
)
from qprune.errors import Interrupted, QpruneError, signals_interrupt
from qprune.healing.settings import HealSettings
from qprune.measure.bench import BenchSettings
from qprune.measure.data import DataSpec
from qprune.measure.goal import Constraints, ExpertTarget, Target, WidthTarget
from qprune.measure.patch import PatchSettings

# Headings of option groups in --help.
SEARCH = "Search (--auto)"
PATCH = "Recovery without training (--patch)"
MEASURING = "Measuring"
TRAINING = "Training"


class _Commands(TyperGroup):
    """The `qprune` group: every command runs with signals turned into exceptions and user errors
    printed as one line (see the module docstring)."""

    def invoke(self, ctx):
        with signals_interrupt(), user_errors(), warnings_as_lines():
            return super().invoke(ctx)


class _Command(TyperCommand):
    """A command whose usage line reads `qprune prune [OPTIONS] SRC OUT`, not typer's `{SRC} {OUT}`, and
    whose `--help` lists options under their panel's heading (`Search (--auto)`, `Training`, ...)."""

    def collect_usage_pieces(self, ctx):
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in super().collect_usage_pieces(ctx)]

    def format_options(self, ctx, formatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {"Arguments": [], "Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            heading = "Arguments" if param.param_type_name == "argument" else None
            heading = heading or getattr(param, "rich_help_panel", None) or "Options"
            sections.setdefault(heading, []).append(record)
        for heading, records in sections.items():
            if records:
                with formatter.section(heading):
                    formatter.write_dl(records)


app = typer.Typer(
    cls=_Commands,
    help="Prune whole attention and MLP blocks out of Qwen3 models.",
    epilog="""A typical run, on a local directory or a hub id:

\b
  qprune scan Qwen/Qwen3-0.6B                         which blocks matter least
  qprune prune Qwen/Qwen3-0.6B out --auto --blocks 8  remove the 8 that matter least
  qprune verify out --base Qwen/Qwen3-0.6B            check the result
  qprune eval out --base Qwen/Qwen3-0.6B              perplexity before and after
  qprune export out stock                             a stock Qwen3 for other engines

Run `qprune COMMAND --help` for a command's options.""",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: no "<bool>" shown after flags
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"qprune {version('qprune')}")
        raise typer.Exit()


@app.callback()
def _setup(
    _version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Prune whole attention and MLP blocks out of Qwen3 models."""
    from qprune.runtime.quantize import quiet_library_logs

    quiet_library_logs()


@app.command(cls=_Command, short_help="Remove blocks: --attn/--mlp, --plan, or chosen on data by --auto.")
def prune(
    src: str = typer.Argument(..., metavar="SRC", help="Qwen3 or qprune checkpoint: a local directory or a hub id."),
    out: Path = typer.Argument(..., metavar="OUT", help="Directory to write the pruned checkpoint to."),
    attn: Optional[str] = ATTN,
    mlp: Optional[str] = MLP,
    plan: Optional[Path] = PLAN,
    auto: bool = typer.Option(False, "--auto", help="Choose the blocks on calibration data (see Search)."),
    blocks: Optional[int] = option(Target, "blocks", panel=SEARCH),
    param_ratio: Optional[float] = option(Target, "param_ratio", panel=SEARCH),
    method: str = typer.Option(
        "greedy",
        "--method",
        metavar="greedy|oneshot",
        help="greedy, or oneshot (ranks once by a scan).",
        rich_help_panel=SEARCH,
    ),
    metric: Optional[str] = typer.Option(
        None,
        "--metric",
        metavar="METRIC",
        help="greedy ranks by nll (default) or kl; oneshot by cosine (default), update, nll, kl.",
        rich_help_panel=SEARCH,
    ),
    only: Optional[str] = option(Constraints, "only", panel=SEARCH),
    keep_first: int = option(Constraints, "keep_first", panel=SEARCH),
    keep_last: int = option(Constraints, "keep_last", panel=SEARCH),
    whole_layers: bool = option(Constraints, "whole_layers", panel=SEARCH),
    expert_ratio: Optional[float] = option(ExpertTarget, "expert_ratio", panel=SEARCH),
    expert_metric: str = option(ExpertTarget, "expert_metric", panel=SEARCH),
    expert_allocation: str = option(ExpertTarget, "expert_allocation", panel=SEARCH),
    ffn_ratio: Optional[float] = option(WidthTarget, "ffn_ratio", panel=SEARCH),
    kv_head_ratio: Optional[float] = option(WidthTarget, "kv_head_ratio", panel=SEARCH),
    width_metric: str = option(WidthTarget, "width_metric", panel=SEARCH),
    width_allocation: str = option(WidthTarget, "width_allocation", panel=SEARCH),
    dtype: str = in_panel(DTYPE, SEARCH),
    max_memory: Optional[str] = in_panel(MAX_MEMORY, SEARCH),
    patch: bool = typer.Option(
        False,
        "--patch",
        help="For each run of pruned blocks, fold a least-squares correction fitted on calibration data into the "
        "kept block before it (no training, no new tensors).",
        rich_help_panel=PATCH,
    ),
    patch_map: str = option(PatchSettings, "patch_map", panel=PATCH),
    patch_target: str = option(PatchSettings, "patch_target", panel=PATCH),
    patch_ridge: float = option(PatchSettings, "patch_ridge", panel=PATCH),
    source: Optional[str] = option(DataSpec, "source", panel=DATA_PANEL),
    text_field: str = option(DataSpec, "text_field", panel=DATA_PANEL),
    samples: int = option(DataSpec, "samples", panel=DATA_PANEL),
    seq_len: int = option(DataSpec, "seq_len", panel=DATA_PANEL),
    seed: int = option(DataSpec, "seed", panel=DATA_PANEL),
    max_shard_size: str = typer.Option(
        "5GB", "--max-shard-size", metavar="SIZE", help="Largest output shard, e.g. 500MB."
    ),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Write a slim checkpoint without the pruned blocks' tensors (streams shard by shard).

    The blocks come from --attn/--mlp, --plan, or --auto, which searches calibration data for the blocks
    that matter least and records its trace in the output."""
    values = locals()
    with user_errors():
        shard_size = parse_size(max_shard_size)
        memory = parse_memory(max_memory)
        patch_settings = settings_from(PatchSettings, values)
        if not patch and patch_settings != PatchSettings():
            raise QpruneError("--patch-map, --patch-target and --patch-ridge say how to patch: add --patch")
        if not auto:
            chosen = (blocks, param_ratio, expert_ratio, ffn_ratio, kv_head_ratio) + ((memory,) if not patch else ())
            if whole_layers or any(value is not None for value in chosen):
                raise QpruneError(
                    "--blocks, --param-ratio, --whole-layers, --expert-ratio, --ffn-ratio, --kv-head-ratio and "
                    "--max-memory choose what to remove automatically: add --auto"
                )
            if patch:
                from qprune.ops.patch import patch as run_patch

                result = run_patch(
                    src,
                    out,
                    read_plan(attn, mlp, plan),
                    patch_settings,
                    data=settings_from(DataSpec, values),
                    dtype=dtype,
                    max_memory=memory,
                    max_shard_size=shard_size,
                    force=force,
                    progress=reporter(quiet),
                )
            else:
                from qprune.ops.prune import prune as run_prune

                result = run_prune(src, out, read_plan(attn, mlp, plan), max_shard_size=shard_size, force=force)
            show(result)
            return
        if attn or mlp or plan:
            raise QpruneError("give either --auto or --attn/--mlp/--plan, not both")
        from qprune.ops.auto import auto_prune

        joint = expert_allocation == "joint"
        if expert_ratio is not None and (blocks is not None or param_ratio is not None or whole_layers):
            raise QpruneError(
                "--expert-ratio removes experts only: it takes no --blocks, --param-ratio or --whole-layers "
                "(for blocks and experts under one budget: --param-ratio R --expert-allocation joint)"
            )
        if expert_allocation == "nonuniform" and expert_ratio is None:
            raise QpruneError("--expert-allocation nonuniform goes with --expert-ratio (the share of experts removed)")
        if joint and (blocks is not None or whole_layers):
            raise QpruneError("--expert-allocation joint takes --param-ratio, not --blocks or --whole-layers")
        width = ffn_ratio is not None or kv_head_ratio is not None or width_allocation == "joint"
        if width and (blocks is not None or whole_layers or expert_ratio is not None or joint):
            raise QpruneError("--ffn-ratio / --kv-head-ratio / --width-allocation take no --blocks or experts")
        if width and param_ratio is not None and width_allocation != "joint":
            raise QpruneError("--ffn-ratio / --kv-head-ratio remove width only: for blocks and width under one "
                              "budget, --param-ratio R --width-allocation joint")  # fmt: skip
        if width:
            target = settings_from(WidthTarget, values)
        else:
            target = settings_from(ExpertTarget if expert_ratio is not None or joint else Target, values)
        result, found = auto_prune(
            src,
            out,
            settings_from(DataSpec, values),
            target,
            method=method,
            metric=metric,
            constraints=settings_from(Constraints, values),
            dtype=dtype,
            max_shard_size=shard_size,
            force=force,
            progress=reporter(quiet),
            max_memory=memory,
            patch=patch_settings if patch else None,
        )
    show(found)
    typer.echo()
    show(result)


@app.command(cls=_Command, short_help="Write a stock Qwen3 (no custom code) for llama.cpp, MLX, ...")
def export(
    pruned: str = typer.Argument(..., metavar="PRUNED", help="qprune checkpoint: a local directory or a hub id."),
    dest: Path = typer.Argument(..., metavar="DEST", help="Directory to write the stock Qwen3 to."),
    max_shard_size: str = typer.Option(
        "5GB", "--max-shard-size", metavar="SIZE", help="Largest output shard, e.g. 500MB."
    ),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Write an exact stock Qwen3 (no custom code) for engines that know only Qwen3: llama.cpp, MLX, ...

    Layers whose attention and MLP are both pruned are removed; a block pruned alone is stored as zeros,
    which a stock engine still computes. The summary says what that costs against PRUNED."""
    with user_errors():
        from qprune.ops.export import export as run_export

        result = run_export(pruned, dest, max_shard_size=parse_size(max_shard_size), force=force)
    show(result)


@app.command(cls=_Command, short_help="Score how much every attention and MLP block matters.")
def scan(
    model: str = typer.Argument(
        ..., metavar="MODEL", help="Qwen3 or qprune checkpoint: a local directory or a hub id."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", metavar="DIR", help="Write scan.json and scan.png to this directory."
    ),
    source: Optional[str] = option(DataSpec, "source", panel=DATA_PANEL),
    text_field: str = option(DataSpec, "text_field", panel=DATA_PANEL),
    samples: int = option(DataSpec, "samples", panel=DATA_PANEL),
    seq_len: int = option(DataSpec, "seq_len", panel=DATA_PANEL),
    seed: int = option(DataSpec, "seed", panel=DATA_PANEL),
    dtype: str = DTYPE,
    as_json: bool = AS_JSON,
    whole_layers: bool = typer.Option(
        False, "--whole-layers", help="Also score every layer as one unit (both blocks removed), ranked among layers."
    ),
    max_memory: Optional[str] = MAX_MEMORY,
    experts: bool = typer.Option(
        False, "--experts", help="Qwen3-MoE: also score every expert (routing frequency, REAP's saliency)."
    ),
    width: bool = typer.Option(
        False, "--width", help="Dense Qwen3: also score every MLP channel and KV group (activation, output, KL)."
    ),
    expert_kl: bool = typer.Option(
        False, "--expert-kl", help="With --experts: also the KL when each expert alone is masked (a replay each)."
    ),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Score every attention and MLP block: one-pass cosine/update norm, and NLL rise / KL when removed."""
    values = locals()
    with user_errors():
        from qprune.measure.scan import run_scan

        progress = reporter(quiet)
        done = run_scan(
            model,
            settings_from(DataSpec, values),
            out,
            dtype=dtype,
            force=force,
            progress=progress,
            whole_layers=whole_layers,
            max_memory=parse_memory(max_memory),
            experts=experts,
            expert_kl=expert_kl,
            width=width,
        )
    show(done, as_json)


@app.command(name="eval", cls=_Command, short_help="Perplexity beside the base model's, and generations side by side.")
def evaluate(
    model: str = typer.Argument(..., metavar="MODEL", help="Checkpoint to evaluate: a local directory or a hub id."),
    base: Optional[str] = typer.Option(
        None, "--base", metavar="MODEL", help="Dense model to compare with, side by side."
    ),
    data: Optional[str] = typer.Option(
        None,
        "--data",
        metavar="SOURCE",
        help="Text: .txt, .jsonl, .parquet, a datasets id (default: qprune:pydocs-heldout.txt).",
    ),
    text_field: str = option(DataSpec, "text_field"),
    seq_len: Optional[int] = typer.Option(
        None,
        "--seq-len",
        metavar="N",
        help="Tokens per window, at most the model's context (default: 1024, or the context if shorter).",
    ),
    stride: Optional[int] = typer.Option(
        None, "--stride", metavar="N", help="Tokens between window starts; less than the window (default: half)."
    ),
    max_tokens: Optional[int] = typer.Option(
        None, "--max-tokens", metavar="N", help="Score only the first N tokens of the text."
    ),
    prompts: Optional[Path] = typer.Option(
        None, "--prompts", metavar="FILE", help="Text file, one prompt per line: greedy outputs side by side."
    ),
    max_new_tokens: int = typer.Option(40, "--max-new-tokens", min=1, metavar="N", help="Tokens generated per prompt."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, metavar="N", help="Windows per forward."),
    dtype: Optional[str] = LOAD_DTYPE,
    quantize: Optional[str] = QUANTIZE,
    check_overflow: bool = CHECK_OVERFLOW,
    max_memory: Optional[str] = MAX_MEMORY,
    as_json: bool = AS_JSON,
    quiet: bool = QUIET,
) -> None:
    """Perplexity (strided sliding window), beside the base model's, and generations side by side."""
    with user_errors():
        from qprune.measure.data import HELDOUT_SOURCE, DataSpec
        from qprune.measure.evaluate import run_eval

        progress = reporter(quiet)
        report = run_eval(
            model,
            base,
            DataSpec(data or HELDOUT_SOURCE, text_field=text_field),
            seq_len=seq_len,
            stride=stride,
            max_tokens=max_tokens,
            prompts=prompts,
            max_new_tokens=max_new_tokens,
            dtype=dtype,
            batch_size=batch_size,
            progress=progress,
            quantize=quantize,
            check_overflow=check_overflow,
            max_memory=parse_memory(max_memory),
        )
    show(report, as_json)


@app.command(cls=_Command, short_help="Speed and memory: pruned vs dense vs the plan's ideal.")
def bench(
    model: Optional[str] = typer.Argument(None, metavar="MODEL", help="Pruned checkpoint, measured against --base."),
    base: Optional[str] = typer.Option(None, "--base", metavar="MODEL", help="The dense model MODEL was pruned from."),
    shape: Optional[str] = typer.Option(
        None,
        "--shape",
        metavar="NAME",
        help="Instead of checkpoints: random weights of a released shape (qwen3-0.6b ... qwen3-32b, "
        "qwen3-30b-a3b, qwen3-235b-a22b).",
    ),
    layers: Optional[int] = typer.Option(
        None, "--layers", metavar="N", help="--shape: keep only its first N layers (for shapes that do not fit memory)."
    ),
    attn: Optional[str] = typer.Option(
        None, "--attn", metavar="LAYERS", help="--shape: layers whose attention to prune, e.g. 21-27."
    ),
    mlp: Optional[str] = typer.Option(
        None, "--mlp", metavar="LAYERS", help="--shape: layers whose MLP to prune, e.g. 0,5."
    ),
    prompt_len: int = option(BenchSettings, "prompt_len", panel=MEASURING),
    new_tokens: int = option(BenchSettings, "new_tokens", panel=MEASURING),
    batches: str = option(BenchSettings, "batches", panel=MEASURING),
    repeats: int = option(BenchSettings, "repeats", panel=MEASURING),
    warmup: int = option(BenchSettings, "warmup", panel=MEASURING),
    seed: int = option(BenchSettings, "seed", panel=MEASURING),
    dtype: str = typer.Option(
        "auto",
        "--dtype",
        help="auto (bfloat16 where the device computes it natively, else float32), bfloat16, float32 or float16.",
    ),
    device: Optional[str] = typer.Option(
        None, "--device", metavar="cpu|cuda", help="cpu or cuda (default: cuda when there is one)."
    ),
    quantize: Optional[str] = QUANTIZE,
    as_json: bool = AS_JSON,
    quiet: bool = QUIET,
) -> None:
    """Prefill and decode speed, parameter, KV-cache and peak bytes: pruned vs dense vs the plan's ideal."""
    values = locals()
    with user_errors():
        from qprune.measure.bench import run_bench
        from qprune.plan import Plan

        settings = settings_from(BenchSettings, values)
        plan = Plan.parse(attn, mlp)
        report = run_bench(model, base, shape, plan, settings, dtype, device, reporter(quiet), quantize, layers)
    show(report, as_json)


@app.command(cls=_Command, short_help="Distil the base model back into a pruned checkpoint.")
def heal(
    pruned: str = typer.Argument(..., metavar="PRUNED", help="Pruned checkpoint to heal (a qprune output)."),
    out: Path = typer.Argument(..., metavar="OUT", help="Directory to write the healed checkpoint to."),
    base: Optional[str] = typer.Option(None, "--base", help="Teacher (default: the base PRUNED records)."),
    data: Optional[str] = option(DataSpec, "source", panel=DATA_PANEL),
    text_field: str = option(DataSpec, "text_field", panel=DATA_PANEL),
    eval_data: Optional[str] = typer.Option(
        None,
        "--eval-data",
        metavar="SOURCE",
        help="Held-out text for perplexity before/after (default: qprune:pydocs-heldout.txt).",
    ),
    tokens: int = option(HealSettings, "tokens", panel=TRAINING),
    seq_len: int = option(HealSettings, "seq_len", panel=TRAINING),
    batch_size: int = option(HealSettings, "batch_size", panel=TRAINING),
    grad_accum: int = option(HealSettings, "grad_accum", panel=TRAINING),
    lr: Optional[float] = option(HealSettings, "lr", panel=TRAINING),
    loss: str = option(HealSettings, "loss", panel=TRAINING),
    lm_weight: float = option(HealSettings, "lm_weight", panel=TRAINING),
    lora: Optional[int] = option(HealSettings, "lora", panel=TRAINING),
    last_layers: Optional[int] = option(HealSettings, "last_layers", panel=TRAINING),
    teacher_cache: Optional[Path] = typer.Option(
        None, "--teacher-cache", help="Store the teacher's top-k log-probs here once; train without the teacher."
    ),
    top_k: Optional[int] = option(HealSettings, "top_k", panel=TRAINING),
    eval_tokens: int = option(HealSettings, "eval_tokens", panel=TRAINING),
    gradient_checkpointing: bool = option(HealSettings, "gradient_checkpointing", panel=TRAINING),
    seed: int = option(HealSettings, "seed", panel=TRAINING),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Distil the base model back into a pruned checkpoint (transformers' Trainer; PEFT for --lora)."""
    values = locals()
    with user_errors():
        from qprune.healing.distill import heal as run_heal
        from qprune.measure.data import HELDOUT_SOURCE

        result = run_heal(
            pruned,
            out,
            settings_from(HealSettings, values),
            base=base,
            data=DataSpec(data, text_field=text_field),
            eval_data=DataSpec(eval_data or HELDOUT_SOURCE, text_field=text_field),
            teacher_cache=teacher_cache,
            force=force,
            progress=reporter(quiet),
        )
    show(result)


@app.command(cls=_Command, short_help="Print a checkpoint's pruning plan and sizes.")
def info(
    path: str = typer.Argument(..., metavar="PATH", help="Checkpoint directory or hub id."),
    as_json: bool = AS_JSON,
    quiet: bool = QUIET,
) -> None:
    """Print a checkpoint's pruning plan and sizes."""
    with user_errors():
        from qprune.ops.report import describe

        facts = describe(path)
    show(facts, as_json)


@app.command(cls=_Command, short_help="Check a pruned checkpoint: keys, logits against the base, caching.")
def verify(
    path: str = typer.Argument(..., metavar="PATH", help="Pruned checkpoint."),
    base: Optional[str] = typer.Option(None, "--base", help="The model it was pruned from, for the oracle checks."),
    quantize: Optional[str] = typer.Option(
        None,
        "--quantize",
        help="Load quantized (int8, nf4, torchao-int8, torchao-int4); the oracle is quantized alike.",
    ),
    quiet: bool = QUIET,
) -> None:
    """Check key accounting, logits against the oracle, and cached vs uncached decoding."""
    with user_errors():
        from qprune.measure.verify import verify as run_verify

        checks = run_verify(path, base, quantize=quantize, progress=reporter(quiet))
    for check in checks:
        typer.echo(str(check))
    passed = all(check.passed for check in checks)
    typer.echo("PASS" if passed else "FAIL")
    if not passed:
        raise typer.Exit(1)


@app.command(cls=_Command, short_help="Greedy generation from a checkpoint.")
def generate(
    path: str = typer.Argument(..., metavar="PATH", help="Checkpoint directory or hub id."),
    prompt: str = typer.Option(
        ..., "--prompt", metavar="TEXT", help="Text to continue (a user turn if there is a chat template)."
    ),
    max_new_tokens: int = typer.Option(40, "--max-new-tokens", min=1, metavar="N", help="Tokens to generate."),
    dtype: Optional[str] = LOAD_DTYPE,
    quantize: Optional[str] = QUANTIZE,
    check_overflow: bool = CHECK_OVERFLOW,
    quiet: bool = QUIET,
) -> None:
    """Greedy generation from a checkpoint."""
    with user_errors():
        import torch

        from qprune.io.source import open_checkpoint
        from qprune.runtime.generate import complete, encode_prompt, load_with_tokenizer
        from qprune.runtime.precision import find_overflow, parse_dtype, resolve_auto
        from qprune.runtime.quantize import describe

        progress = reporter(quiet)
        parse_dtype(dtype)
        checkpoint = open_checkpoint(path)  # bad input is refused before the dtype line
        on_cuda = quantize is not None and torch.cuda.is_available()  # only quantized loads go to the GPU
        dtype = resolve_auto(dtype, progress.note, on_cuda=on_cuda)
        model, tokenizer = load_with_tokenizer(checkpoint, dtype=dtype, quantize=quantize)
        if check_overflow:
            typer.echo(find_overflow(model, encode_prompt(model, tokenizer, prompt)["input_ids"]))
        typer.echo(complete(model, tokenizer, prompt, max_new_tokens))
        if quantize is not None:  # after a forward pass: bitsandbytes repacks 4-bit weights for CPUs then
            typer.echo(describe(model), err=True)


@app.command(cls=_Command, short_help="Prune the shipped small model, verify it, compare generations.")
def demo(
    model: Optional[str] = typer.Option(
        None, "--model", metavar="MODEL", help="Qwen3 to prune (default: the small model shipped with qprune)."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Write the pruned checkpoint here (default: ./qprune-demo, or -2, -3... if taken)."
    ),
    attn: Optional[str] = ATTN,
    mlp: Optional[str] = MLP,
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Prune a model, verify it, and show dense and pruned generations side by side."""
    with user_errors():
        from qprune.cli.demo import run_demo

        passed = run_demo(model, out, attn, mlp, force=force, echo=typer.echo, progress=reporter(quiet))
    if not passed:
        raise typer.Exit(1)


def main() -> None:
    try:
        app(prog_name="qprune")  # also as `python -m qprune.cli`
    except Interrupted as error:  # a signal outside a command's own handling (while its result prints)
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(error.exit_code) from None


if __name__ == "__main__":
    main()
