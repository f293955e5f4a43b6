"""How much quality a pruned model lost: perplexity beside its base model's, and generations side by side.

    report = run_eval("qwen3-pruned", base="Qwen/Qwen3-0.6B", prompts="prompts.txt")
    print(report.table())                  # or report.to_dict()
    ppl = perplexity(model, tokens, seq_len=1024, stride=512)   # on a model already loaded

Perplexity uses the standard strided sliding window (the recipe of transformers' perplexity guide):
windows of `seq_len` tokens start every `stride` tokens, and each window scores only the tokens that no
earlier window scored, so every token but the first is scored exactly once, with at least
`seq_len - stride` tokens of context once the first window is past. NLL is summed in float32 over
exact token counts (no mean-of-means). The default text is the held-out sample shipped with qprune,
which calibration never sees.

Models are loaded one at a time (the pruned model, then the base), so eval needs memory for one,
in the checkpoint's dtype unless told otherwise, and quantized with `quantize=` (both models). The
report gives each model's parameter bytes. Non-finite logits stop the run with advice
(`precision.overflow_message`); `check_overflow=True` first traces the hidden states of one window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from qprune.errors import QpruneError, warn
from qprune.measure.data import HELDOUT_SOURCE, DataSpec, check_seq_len, tokenize
from qprune.progress import Progress, as_progress
from qprune.runtime.precision import NonFiniteLogitsError, OverflowReport, overflow_message, parse_dtype, resolve_auto

if TYPE_CHECKING:
    import torch

    from qprune.io.source import Checkpoint


@dataclass(frozen=True)
class Window:
    begin: int  # first token fed to the model
    end: int  # one past the last token fed
    scored_from: int  # first token whose prediction counts


def windows(total: int, seq_len: int, stride: int) -> list[Window]:
    """The sliding windows over `total` tokens; together they score tokens 1..total-1 once each."""
    if seq_len < 2:
        raise QpruneError("{seq_len} must be at least 2")
    if not 1 <= stride < seq_len:
        # Windows must overlap: a window's first token has no context in it and cannot be scored there.
        raise QpruneError(f"{{stride}} must be at least 1 and less than {{seq_len}} ({seq_len}), not {stride}")
    if total < 2:
        raise QpruneError(f"the text has {total} token(s); perplexity needs at least 2")
    spans, scored_to = [], 1  # token 0 has no context, so it is never predicted
    for begin in range(0, total, stride):
        end = min(begin + seq_len, total)
        spans.append(Window(begin, end, scored_to))
        scored_to = end
        if end == total:
            break
    return spans


@dataclass
class Perplexity:
    nll: float  # summed over scored tokens
    tokens: int

    @property
    def value(self) -> float:
        return math.exp(self.nll / self.tokens)


def perplexity(
    model,
    tokens: torch.Tensor,
    seq_len: int = 1024,
    stride: int = 512,
    batch_size: int = 4,
    progress: bool | Progress = False,
    description: str = "perplexity",
) -> Perplexity:
    """Sliding-window perplexity of `model` on a 1-D tensor of token ids; `description` names the loop
    in the progress lines."""
    import torch

    from qprune.measure.ablation import chunked_nll
    from qprune.measure.engine import engine_of

    spans = windows(tokens.numel(), seq_len, stride)
    # Windows of one length are batched; only the last one can be shorter.
    groups: dict[int, list[Window]] = {}
    for span in spans:
        groups.setdefault(span.end - span.begin, []).append(span)
    batches = [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]
    ids = [torch.stack([tokens[w.begin : w.end] for w in batch]) for batch in batches]
    progress = as_progress(progress)
    engine = engine_of(model)  # layer by layer, every window goes through a layer before the next
    states, model = engine.final_states(ids, progress, description), engine.skeleton
    result = Perplexity(0.0, 0)
    with torch.inference_mode():
        for k, hidden in states:
            for row, w in enumerate(batches[k]):
                first = w.scored_from - w.begin  # position of the first scored token in the window
                targets = ids[k][row, first:].to(hidden.device)
                result.nll += chunked_nll(model, hidden[row, first - 1 : -1], targets)
                result.tokens += targets.numel()
            if not math.isfinite(result.nll):  # inf/NaN logits: say why now, not after every window
                raise NonFiniteLogitsError(overflow_message(model))
    return result


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line of a text file; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise QpruneError(f"prompts file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise QpruneError(f"prompts file {path} is not UTF-8 text") from None
    if not prompts:
        raise QpruneError(f"prompts file {path} holds no prompts (one per line)")
    return prompts


@dataclass
class ModelEval:
    path: str
    perplexity: Perplexity
    param_bytes: int
    generations: list[str] = field(default_factory=list)
    overflow: OverflowReport | None = None

    def to_dict(self) -> dict:
        out = {"path": self.path, "perplexity": self.perplexity.value, "param_bytes": self.param_bytes}
        return out | ({"overflow": str(self.overflow)} if self.overflow else {})

    def line(self, label: str) -> str:
        from qprune.words import human_bytes

        return f"  {label:<6} {self.perplexity.value:10.3f}  {self.path}  (parameters: {human_bytes(self.param_bytes)})"


@dataclass
class EvalReport:
    data: dict
    seq_len: int
    stride: int
    model: ModelEval
    base: ModelEval | None
    prompts: list[str]
    dtype: str
    quantize: str | None = None

    def to_dict(self) -> dict:
        out = {
            "data": self.data,
            "seq_len": self.seq_len,
            "stride": self.stride,
            "tokens": self.model.perplexity.tokens,
            "dtype": self.dtype,
            "quantize": self.quantize,
            "model": self.model.to_dict(),
        }
        if self.base is not None:
            out["base"] = self.base.to_dict()
            out["perplexity_change"] = self.model.perplexity.value / self.base.perplexity.value - 1
        if self.prompts:
            out["generations"] = [
                {"prompt": p, "model": self.model.generations[i]}
                | ({"base": self.base.generations[i]} if self.base else {})
                for i, p in enumerate(self.prompts)
            ]
        return out

    def table(self) -> str:
        lines = [
            f"perplexity on {self.data['source']}: {self.model.perplexity.tokens:,} tokens scored, "
            f"windows of {self.seq_len}, stride {self.stride}; {self.dtype}"
            + (f", quantized {self.quantize}" if self.quantize else ""),
            self.model.line("model"),
        ]
        if self.base is not None:
            change = self.model.perplexity.value / self.base.perplexity.value - 1
            lines.append(self.base.line("base"))
            lines.append(f"  change {change:+10.2%}")
        lines += [
            f"{label}: {m.overflow}" for label, m in (("model", self.model), ("base", self.base)) if m and m.overflow
        ]
        for i, prompt in enumerate(self.prompts):
            lines += ["", f"prompt: {prompt}", f"  model: {_one_line(self.model.generations[i])}"]
            if self.base is not None:
                lines.append(f"  base:  {_one_line(self.base.generations[i])}")
        return "\n".join(lines)

    text = table  # what `cli.options.show` prints


def _one_line(text: str) -> str:
    return text.strip().replace("\n", "\\n")


DEFAULT_WINDOW = 1024  # eval's --seq-len when none is given and the model's context allows it


def run_eval(
    model: str | Path | Checkpoint,
    base: str | Path | Checkpoint | None = None,
    spec: DataSpec | None = None,
    seq_len: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    prompts: str | Path | None = None,
    max_new_tokens: int = 40,
    dtype: str | None = None,
    batch_size: int = 4,
    progress: bool | Progress = True,
    quantize: str | None = None,
    check_overflow: bool = False,
    max_memory: int | None = None,
) -> EvalReport:
    """Perplexity of `model` (and of `base`) on the data, and their greedy generations for `prompts`.
    `dtype` defaults to each checkpoint's; `quantize` applies to both models (see quantization.MODES);
    `check_overflow` runs `find_overflow` on the first window first. A model that does not fit
    `max_memory` bytes (or, with none given on a CPU, the memory available) is run layer by layer
    for its perplexity (the same value); generations, quantization and the overflow check need it whole."""
    import torch

    from qprune.io.source import open_checkpoint
    from qprune.runtime.generate import complete
    from qprune.runtime.load import load, load_tokenizer
    from qprune.runtime.precision import find_overflow
    from qprune.runtime.quantize import mode_named, parameter_bytes

    parse_dtype(dtype)  # a bad --dtype or --quantize is refused before anything is loaded
    if quantize is not None:
        mode_named(quantize, on_cuda=torch.cuda.is_available())
    if max_tokens is not None and max_tokens < 2:
        raise QpruneError("{max_tokens} must be at least 2")
    spec = spec or DataSpec(HELDOUT_SOURCE)
    prompt_list = read_prompts(prompts) if prompts is not None else []
    # Everything that can be refused is checked before a model is loaded.
    checkpoints = [open_checkpoint(model)] + ([open_checkpoint(base)] if base is not None else [])
    if len({c.config["vocab_size"] for c in checkpoints}) > 1:
        model, base = (c.name for c in checkpoints)
        raise QpruneError(f"{model} and {{base}} {base} have different vocabularies; perplexities would not compare")
    if seq_len is None:  # the default never asks for more context than a model has
        contexts = [c.config.get("max_position_embeddings") for c in checkpoints]
        seq_len = min([DEFAULT_WINDOW] + [c for c in contexts if isinstance(c, int) and c >= 2])
    stride = max(1, seq_len // 2) if stride is None else stride
    tokenizer = load_tokenizer(checkpoints[0])
    tokens = torch.tensor(tokenize(spec, tokenizer)[:max_tokens], dtype=torch.long)
    windows(tokens.numel(), seq_len, stride)  # bad --seq-len / --stride before loading
    for checkpoint in checkpoints:
        check_seq_len(seq_len, checkpoint, window=tokens.numel())
    if tokens.numel() < 3:  # a perplexity over one token is that token's probability, not a measure
        raise QpruneError(
            f"the text has {tokens.numel()} token(s): perplexity needs at least 2 tokens scored (3 in all); "
            "give more text"
        )
    if tokens.numel() < seq_len:  # one short window: a figure over a handful of tokens reads like any other
        warn(
            f"the text is only {tokens.numel():,} tokens, less than one {{seq_len}} window ({seq_len}): "
            f"the perplexity is over {tokens.numel() - 1:,} tokens"
            + (", too few to compare models" if tokens.numel() - 1 < 100 else "")
        )

    if quantize is not None and max_memory is not None:
        raise QpruneError("{quantize} loads the whole model; it cannot be combined with {max_memory}")
    device_map = "auto" if torch.cuda.is_available() else None
    progress = as_progress(progress)
    dtype = resolve_auto(dtype, progress.note)
    results = []
    for label, checkpoint in zip(("model", "base")[: len(checkpoints)], checkpoints, strict=True):
        name = checkpoint.name
        streamed = (
            None
            if quantize
            else _layer_by_layer(checkpoint, dtype, tokens.numel(), seq_len, stride, batch_size, max_memory, progress)
        )
        if streamed is not None and (prompt_list or check_overflow):
            wanted = "{prompts}" if prompt_list else "{check_overflow}"
            raise QpruneError(f"{name} is measured layer by layer; {wanted} needs the whole model in memory")
        loaded = streamed or load(checkpoint, dtype=dtype, device_map=device_map, quantize=quantize)
        overflow = find_overflow(loaded, tokens[None, :seq_len]) if check_overflow else None
        if overflow is not None and overflow.first is not None:
            raise NonFiniteLogitsError(f"{name}: {overflow}; {overflow_message(loaded, suggest_check=False)}")
        ppl = perplexity(loaded, tokens, seq_len, stride, batch_size, progress, f"perplexity of {label} {name}")
        generations = [complete(loaded, tokenizer, p, max_new_tokens) for p in prompt_list]
        size = loaded.parameter_bytes if streamed is not None else parameter_bytes(loaded)
        results.append(ModelEval(name, ppl, size, generations, overflow))
        dtype_used = str(loaded.dtype if streamed is not None else loaded.get_input_embeddings().weight.dtype)
        dtype_used = dtype_used.removeprefix("torch.")
        del loaded
    return EvalReport(
        {"source": spec.describe()["source"], "text_field": spec.text_field, "max_tokens": max_tokens},
        seq_len,
        stride,
        results[0],
        results[1] if len(results) > 1 else None,
        prompt_list,
        dtype_used,
        quantize,
    )


def _layer_by_layer(
    checkpoint, dtype: str | None, tokens: int, seq_len: int, stride: int, batch_size: int, max_memory, progress
):
    """A `StreamedModel` when the (opened) checkpoint is to be run layer by layer, else None."""
    import torch

    from qprune.measure.memory_plan import MemoryPlan, layer_by_layer_limit
    from qprune.runtime.load import load_config
    from qprune.runtime.precision import choose_dtype
    from qprune.runtime.streamed import StreamedModel

    raw = checkpoint.config
    concrete = choose_dtype(dtype, raw.get("dtype") or raw.get("torch_dtype"), torch.cuda.is_available())
    length = min(seq_len, tokens)
    count = len(windows(tokens, seq_len, stride))
    plan = MemoryPlan.of(
        load_config(checkpoint), concrete, samples=count, seq_len=length, kl=False, micro_batch=batch_size
    )
    limit = layer_by_layer_limit(plan, max_memory, progress)
    return None if limit is None else StreamedModel(checkpoint, concrete, max_memory=limit)
