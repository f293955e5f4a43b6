"""Speed and memory of a pruned model against its dense model, and against what the plan allows at best.

    report = run_bench(shape="qwen3-0.6b", plan=Plan.parse("21-27", "21-27"))   # random weights
    report = run_bench(model="qwen3-pruned", base="Qwen/Qwen3-0.6B")            # real checkpoints
    print(report.table()); report.to_dict()["decode_speedup"]

Both models live in one process and are measured interleaved (dense, pruned, pruned, dense, ...) after
warm-up, so a noisy machine slows both alike. Tokens/s are medians over the repetitions; a speedup is
the median of the per-repetition ratios, each from two runs back to back.
- prefill: one forward over a random prompt of `prompt_len` tokens with the KV cache on and logits for
  the last position only, as `generate` runs it. Tokens/s counts the prompt tokens of the whole batch.
- decode: `new_tokens` greedy steps, each one forward of one token per sequence on the KV cache
  (what `generate` does, without its logits processors). Tokens/s counts generated tokens.
- memory: parameter bytes; KV-cache bytes after the prompt and every generated token; peak bytes, the
  weights plus the most memory the prefill and decode add (CUDA's allocator peak; on Linux CPUs the
  process's peak resident set, reset before each run).
The ideal speedups come from `cost.py`; measured / ideal says how much of the plan's saving is real.
The table's speed-up is the ratio of the tok/s medians it shows beside it (so the row reads
consistently); the JSON's `*_speedup` is the median of paired ratios. Sizes are in decimal units, as
everywhere in qprune (`words.human_bytes`).
Random-weight models stand in for real ones of the same shape: speed does not depend on the values.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from qprune.cost import Shape, ideal_speedups, kv_bytes, shape_named
from qprune.errors import QpruneError
from qprune.plan import Plan
from qprune.progress import Progress, as_progress
from qprune.runtime.memory import return_freed_memory
from qprune.runtime.precision import check_dtype_name, resolve_auto
from qprune.runtime.quantize import mode_named, parameter_bytes
from qprune.runtime.quantize import quantize as quantize_model
from qprune.setting import setting

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from qprune.io.source import Checkpoint


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise QpruneError(f"{{batches}}: {text!r} is not a list of batch sizes like 1,8") from None


@dataclass(frozen=True)
class BenchSettings:
    prompt_len: int = setting(512, "Prompt tokens per sequence (prefill).", metavar="N")
    new_tokens: int = setting(64, "Decode steps per sequence.", metavar="N")
    batches: tuple[int, ...] = setting(
        (1,), "Batch sizes, e.g. 1,8 (a table for each).", metavar="SIZES", flag="--batch", text="1",
        parse=parse_batches,
    )  # fmt: skip
    repeats: int = setting(5, "Timed repetitions (the median is reported).", metavar="N")
    warmup: int = setting(1, "Untimed repetitions first.", metavar="N")
    seed: int = setting(0, "Seed for the random prompts (and --shape's random weights).")

    def validate(self) -> None:
        for name, value, least in (
            ("prompt_len", self.prompt_len, 1),
            ("new_tokens", self.new_tokens, 1),
            ("repeats", self.repeats, 1),
            ("warmup", self.warmup, 0),
        ):
            if value < least:
                raise QpruneError(f"{{{name}}} must be at least {least}, not {value}")
        if not self.batches or any(b < 1 for b in self.batches):
            raise QpruneError(f"{{batches}}: batch sizes must be at least 1, not {list(self.batches)}")


@dataclass
class ModelFigures:
    param_bytes: int
    kv_bytes: int = 0
    peak_bytes: int | None = None
    prefill_seconds: list[float] = field(default_factory=list)
    decode_seconds: list[float] = field(default_factory=list)

    def to_dict(self, tokens_prefill: int, tokens_decode: int) -> dict:
        prefill, decode = statistics.median(self.prefill_seconds), statistics.median(self.decode_seconds)
        return {
            "param_bytes": self.param_bytes,
            "kv_bytes": self.kv_bytes,
            "peak_bytes": self.peak_bytes,
            "prefill_tokens_per_s": tokens_prefill / prefill,
            "decode_tokens_per_s": tokens_decode / decode,
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds": self.decode_seconds,
        }


@dataclass
class BenchReport:
    source: dict
    shape: Shape
    dense_plan: Plan
    pruned_plan: Plan
    settings: BenchSettings
    device: str
    dtype: str
    batches: list[dict]
    quantize: str | None = None

    def to_dict(self) -> dict:
        head = {k: v for k, v in self.batches[0].items() if k != "batch"}  # headline: the first batch size
        return {
            "source": self.source,
            "shape": self.shape.to_dict(),
            "dense_plan": self.dense_plan.to_dict(),
            "pruned_plan": self.pruned_plan.to_dict(),
            "device": self.device,
            "dtype": self.dtype,
            "quantize": self.quantize,
            "settings": {**self.settings.__dict__, "batches": list(self.settings.batches)},
            "batch": self.batches[0]["batch"],
            **head,
            "batches": self.batches,
        }

    def table(self) -> str:
        s = self.settings
        lines = [
            f"{self.source['description']}: {self.dtype}{f' quantized {self.quantize}' if self.quantize else ''} "
            f"on {self.device}, prompt {s.prompt_len} tokens, "
            f"{s.new_tokens} new tokens, median of {s.repeats}",
            f"pruned: {self.pruned_plan}"
            + (f"  (base already prunes {self.dense_plan})" if self.dense_plan.num_blocks else ""),
        ]
        for row in self.batches:
            d, p = row["dense"], row["pruned"]
            lines += [
                "",
                f"batch {row['batch']:<12}{'dense':>12}{'pruned':>12}{'pruned/dense':>14}{'ideal':>8}{'of ideal':>10}",
                _speed_row("prefill tok/s", d["prefill_tokens_per_s"], p["prefill_tokens_per_s"], row, "prefill"),
                _speed_row("decode tok/s", d["decode_tokens_per_s"], p["decode_tokens_per_s"], row, "decode"),
            ]
            for label, key in (("param bytes", "param_bytes"), ("KV bytes", "kv_bytes"), ("peak bytes", "peak_bytes")):
                ratio = f"{p[key] / d[key]:>13.3f}x" if d[key] and p[key] is not None else ""
                lines.append(f"{label:<18}{_size(d[key]):>12}{_size(p[key]):>12}{ratio}")
        lines += [
            "",
            "pruned/dense of tok/s is the speed-up (the medians shown; --json adds the median of paired runs);",
            "ideal: the speed-up the plan's saved FLOPs (prefill) and bytes read (decode) allow;",
            "of ideal: how much of it was measured.",
        ]
        return "\n".join(lines)

    text = table  # what `cli.options.show` prints


def _speed_row(label: str, dense: float, pruned: float, row: dict, kind: str) -> str:
    # The speed-up of the figures on this row, so that the row reads consistently; the paired median
    # (`{kind}_speedup` in the JSON) can differ from it on a noisy machine.
    speedup = pruned / dense
    ideal = row[f"ideal_{kind}_speedup"]
    return f"{label:<18}{dense:>12.1f}{pruned:>12.1f}{speedup:>13.3f}x{ideal:>7.3f}x{speedup / ideal:>10.0%}"


def _size(n: int | None) -> str:
    from qprune.words import human_bytes

    return "n/a" if n is None else human_bytes(n)


# -- the models -------------------------------------------------------------------------------------


def random_pair(shape: Shape, plan: Plan, dtype: torch.dtype, device: str, seed: int = 0):
    """A dense random-weight model of `shape` (Qwen3 or Qwen3-MoE) and its pruned twin, which shares the
    dense tensors."""
    import torch

    from qprune.arch import family_of

    config_class, model_class = family_of({"model_type": shape.model_type}).pruned_classes()
    plan.validate(shape.layers)
    fields = {**shape.config_fields(), "max_position_embeddings": 40960, "rope_theta": 1e6, "rms_norm_eps": 1e-6}
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):
        dense = model_class(config_class(**fields)).eval()
    with torch.device("meta"):
        pruned = model_class(
            config_class(**fields, pruned_attn_layers=list(plan.attn), pruned_mlp_layers=list(plan.mlp))
        ).eval()
    # keep_vars: the same Parameter objects, so a tied lm_head stays tied and nothing is copied.
    kept = pruned.state_dict().keys()
    pruned.load_state_dict({k: v for k, v in dense.state_dict(keep_vars=True).items() if k in kept}, assign=True)
    for name, buffer in dense.named_buffers():  # rotary frequencies: not in the state dict
        owner, _, attr = name.rpartition(".")
        pruned.get_submodule(owner)._buffers[attr] = buffer
    return dense, pruned


@contextmanager
def _default_dtype(dtype) -> Iterator[None]:
    import torch

    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def checkpoint_pair(
    model: str | Path | Checkpoint,
    base: str | Path | Checkpoint,
    dtype: torch.dtype,
    device: str,
    quantize: str | None = None,
):
    """The base (dense) and pruned checkpoints (paths, hub ids or Checkpoints), loaded; refused before
    loading unless their shapes agree."""
    from qprune.io.source import open_checkpoint
    from qprune.runtime.load import load

    model, base = open_checkpoint(model), open_checkpoint(base)
    shapes = Shape.from_config(model.config), Shape.from_config(base.config)
    if "qprune_pruned_experts" in model.config:  # an expert cut: the same shape but for the expert counts
        shapes = replace(shapes[0], experts=shapes[1].experts, layer_experts=shapes[1].layer_experts), shapes[1]
    if "qprune_pruned_width" in model.config:  # a width cut: the same shape but narrower
        base_shape = shapes[1]
        narrow = dict(intermediate=base_shape.intermediate, heads=base_shape.heads, kv_heads=base_shape.kv_heads)
        shapes = replace(shapes[0], **narrow), base_shape
    if shapes[0] != shapes[1]:
        raise QpruneError(f"{model} and {{base}} {base} are not the same Qwen3 shape: {shapes[0]} vs {shapes[1]}")
    device_map = None if device == "cpu" else device  # transformers 4.57 wants accelerate for any device_map
    return tuple(load(c, dtype=dtype, device_map=device_map, quantize=quantize) for c in (base, model))


def cache_bytes(cache) -> int:
    total = 0
    for layer in getattr(cache, "layers", ()):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None and tensor.numel():
                total += tensor.numel() * tensor.element_size()
    return total


# -- measuring --------------------------------------------------------------------------------------


class _Runner:
    """Prefill and greedy decode of one model, through its cache argument (`cache` from transformers
    5.24, `past_key_values` before)."""

    def __init__(self, model) -> None:
        import inspect

        self.model = model
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def prefill(self, prompt):
        out = self.model(prompt, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1:].argmax(-1), out[self.cache_arg]

    def decode(self, token, cache, steps: int):
        for _ in range(steps):
            out = self.model(token, use_cache=True, **{self.cache_arg: cache})
            token = out.logits[:, -1:].argmax(-1)
        return token, cache


class _Clock:
    def __init__(self, device: str) -> None:
        import torch

        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def __call__(self, fn, *args):
        self.sync()
        start = time.perf_counter()
        result = fn(*args)
        self.sync()
        return time.perf_counter() - start, result


def _peak_extra_bytes(device: str, run) -> int | None:
    """The most memory `run()` adds while it runs, or None where this cannot be measured."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    if not sys.platform.startswith("linux"):
        return None
    return_freed_memory()  # so that the next run's growth shows
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    except OSError:
        return None
    before = _status_bytes("VmRSS")
    run()
    return _status_bytes("VmHWM") - before


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise QpruneError(f"/proc/self/status has no {key}")


def measure(dense, pruned, settings: BenchSettings, device: str, progress: bool | Progress = True) -> list[dict]:
    """Figures for each batch size; see the module docstring for what is timed."""
    import torch

    models = {"dense": _Runner(dense), "pruned": _Runner(pruned)}
    clock = _Clock(device)
    generator = torch.Generator().manual_seed(settings.seed)
    vocab = dense.config.vocab_size
    rows = []
    total = len(settings.batches) * (settings.warmup + settings.repeats + 1)
    rounds = iter(as_progress(progress)(range(total), "bench rounds"))
    next(rounds, None)  # started; each next() below counts one finished round
    with torch.inference_mode():
        for batch in settings.batches:
            prompt = torch.randint(vocab, (batch, settings.prompt_len), generator=generator).to(device)
            figures = {name: ModelFigures(parameter_bytes(runner.model)) for name, runner in models.items()}
            for repeat in range(settings.warmup + settings.repeats):
                order = list(models) if repeat % 2 == 0 else list(models)[::-1]
                for name in order:
                    runner = models[name]
                    prefill_s, (token, cache) = clock(runner.prefill, prompt)
                    decode_s, _ = clock(runner.decode, token, cache, settings.new_tokens)
                    figures[name].kv_bytes = cache_bytes(cache)
                    del cache
                    if repeat >= settings.warmup:
                        figures[name].prefill_seconds.append(prefill_s)
                        figures[name].decode_seconds.append(decode_s)
                next(rounds, None)
            for name, runner in models.items():

                def run(runner=runner, prompt=prompt) -> None:
                    token, cache = runner.prefill(prompt)
                    runner.decode(token, cache, settings.new_tokens)

                extra = _peak_extra_bytes(device, run)
                figures[name].peak_bytes = None if extra is None else figures[name].param_bytes + extra
            next(rounds, None)
            rows.append(_batch_row(batch, figures, settings))
    return rows


def _batch_row(batch: int, figures: dict[str, ModelFigures], settings: BenchSettings) -> dict:
    tokens_prefill, tokens_decode = batch * settings.prompt_len, batch * settings.new_tokens
    dense, pruned = (figures[n].to_dict(tokens_prefill, tokens_decode) for n in ("dense", "pruned"))
    # Speedups are medians of the ratios within each repetition, whose two runs were back to back:
    # steadier than a ratio of medians when the machine's speed drifts.
    return {
        "batch": batch,
        "prefill_speedup": _paired(dense["prefill_seconds"], pruned["prefill_seconds"]),
        "decode_speedup": _paired(dense["decode_seconds"], pruned["decode_seconds"]),
        "dense": dense,
        "pruned": pruned,
    }


def _paired(dense: list[float], pruned: list[float]) -> float:
    return statistics.median(d / p for d, p in zip(dense, pruned, strict=True))


# -- the command ------------------------------------------------------------------------------------


def run_bench(
    model: str | Path | Checkpoint | None = None,
    base: str | Path | Checkpoint | None = None,
    shape: str | None = None,
    plan: Plan | None = None,
    settings: BenchSettings = BenchSettings(),
    dtype: str = "auto",
    device: str | None = None,
    progress: bool | Progress = True,
    quantize: str | None = None,
    layers: int | None = None,
) -> BenchReport:
    """Benchmark a pruned checkpoint against `base`, or a random model of a released `shape` (Qwen3 or
    Qwen3-MoE) under `plan`; `layers` keeps only the shape's first layers, for shapes that do not fit."""
    import torch

    settings.validate()
    check_dtype_name(dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QpruneError(f"{{device}} {device}: no CUDA device is available")
    progress = as_progress(progress)
    dtype = resolve_auto(dtype, progress.note, on_cuda=device.startswith("cuda"))
    if quantize is not None:
        mode_named(quantize, on_cuda=device.startswith("cuda"))
    if shape is not None:
        if model is not None or base is not None:
            raise QpruneError("give either {shape} (random weights) or a checkpoint with {base}, not both")
        the_shape = shape_named(shape)
        if layers is not None:
            if not 1 <= layers <= the_shape.layers:
                raise QpruneError(f"{{layers}} {layers}: {shape} has 1..{the_shape.layers} layers")
            the_shape = the_shape.with_layers(layers)
            source_note = f", first {layers} of its layers"
        else:
            source_note = ""
        plan = plan or Plan()
        plan.validate(the_shape.layers)
        if not plan.num_blocks:
            raise QpruneError("{shape} needs blocks to prune: {attn} and/or {mlp}")
        dense, pruned = random_pair(the_shape, plan, getattr(torch, dtype), device, settings.seed)
        if quantize is not None:  # each separately: the pair shares its unquantized tensors
            dense, pruned = quantize_model(dense, quantize), quantize_model(pruned, quantize)
        source = {"shape": shape, "description": f"{shape} shape{source_note}, random weights"}
        pruned_shape = the_shape
    else:
        if model is None:
            raise QpruneError("give a pruned checkpoint and {base}, or {shape} with {attn}/{mlp}")
        if base is None:
            raise QpruneError(f"bench {model} needs {{base}}: the dense model it was pruned from")
        if plan is not None and plan.num_blocks:
            raise QpruneError("{attn}/{mlp} go with {shape}; a checkpoint brings its own plan")
        if layers is not None:
            raise QpruneError("{layers} goes with {shape}")
        dense, pruned = checkpoint_pair(model, base, getattr(torch, dtype), device, quantize)
        the_shape, pruned_shape = Shape.from_config(dense.config), Shape.from_config(pruned.config)
        source = {"model": str(model), "base": str(base), "description": f"{model} vs {base}"}
    dense_plan = Plan.from_config(dense.config.to_dict())
    pruned_plan = Plan.from_config(pruned.config.to_dict())
    rows = measure(dense, pruned, settings, device, progress)
    element = dense.get_input_embeddings().weight.element_size()
    for row in rows:
        ideal = ideal_speedups(
            the_shape, dense_plan, pruned_plan, row["batch"], settings.prompt_len, settings.new_tokens, element,
            pruned_shape=pruned_shape,
        )  # fmt: skip
        row["ideal_prefill_speedup"], row["ideal_decode_speedup"] = ideal.prefill, ideal.decode
        row["prefill_vs_ideal"] = row["prefill_speedup"] / ideal.prefill
        row["decode_vs_ideal"] = row["decode_speedup"] / ideal.decode
        tokens = settings.prompt_len + settings.new_tokens
        row["expected_kv_bytes"] = {
            "dense": kv_bytes(the_shape, dense_plan, row["batch"], tokens, element),
            "pruned": kv_bytes(the_shape, pruned_plan, row["batch"], tokens, element),
        }
    return BenchReport(source, the_shape, dense_plan, pruned_plan, settings, device, dtype, rows, quantize)
