"""Precision safety for Qwen3: the right default dtype, a warning for float16, and overflow detection.

    dtype = choose_dtype(None, "bfloat16", on_cuda=False)   # the checkpoint's; float32 without bf16
    dtype, why = auto_dtype(on_cuda=False)                   # --dtype auto: what the hardware runs fast
    check_logits(logits, model)                              # raises NonFiniteLogitsError, with advice
    print(find_overflow(model, input_ids))                   # the first layer whose hidden states overflow

Qwen3 was trained in bfloat16. In float16 its activations overflow (max 65504) and the output turns
to NaN or "!!!!". bfloat16 has float32's range; float32 is the fallback where bfloat16 is unsupported.
Supported is not fast: CPUs without AVX512-BF16 or AMX (most laptops, AVX2 servers) emulate bfloat16
matmuls, measured ~4.5x slower than float32 on an AVX2 machine, so `--dtype auto` (the CLI's default)
takes float32 there.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from qprune.errors import QpruneError, QpruneWarning

if TYPE_CHECKING:
    import torch

DTYPES = ("bfloat16", "float32", "float16")
# Names the argument in braces (errors.py): Python reads "dtype=bfloat16", the CLI "--dtype=bfloat16".
FLOAT16_ADVICE = "load it in bfloat16 ({dtype}=bfloat16), or float32 where bfloat16 is unsupported"


class Float16Warning(QpruneWarning):
    """float16 was asked for a model trained in bfloat16."""


class NonFiniteLogitsError(QpruneError):
    """The model produced inf or NaN logits."""


def check_dtype_name(name: str, *, float16: bool = True) -> str:
    """`name` if it is "auto" or one of `DTYPES`, the one vocabulary every command's dtype uses.
    Measurements (scan, search, eval) pass `float16=False`: Qwen3's activations overflow in it."""
    allowed = ("auto", *DTYPES) if float16 else ("auto", "bfloat16", "float32")
    if name not in allowed:
        why = "" if float16 else " (Qwen3 overflows in float16)"
        raise QpruneError(f"{{dtype}} {name}: choose one of {', '.join(allowed)}{why}")
    return name


def parse_dtype(name: str | None) -> torch.dtype | None:
    """A dtype from its name; None means the checkpoint's and "auto" the hardware's (`auto_dtype`)."""
    import torch

    if name is None or check_dtype_name(name) == "auto":
        return None
    return getattr(torch, name)


def cpu_bfloat16() -> tuple[bool, str]:
    """Whether this CPU computes bfloat16 natively, and the instruction set that says so."""
    import platform

    import torch

    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        for name, probe in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported")):
            if getattr(torch.cpu, probe, lambda: False)():
                return True, name
        return False, torch.backends.cpu.get_cpu_capability()
    if machine in ("aarch64", "arm64"):
        try:
            features = Path("/proc/cpuinfo").read_text()
        except OSError:  # macOS: Apple's CPUs are left on float32
            return False, machine
        if re.search(r"^Features\s*:.*\bbf16\b", features, re.MULTILINE):
            return True, "Arm BF16"
        return False, f"{machine} without BF16"
    return False, machine


def auto_dtype(on_cuda: bool | None = None) -> tuple[torch.dtype, str]:
    """`--dtype auto`: bfloat16 (Qwen3's own dtype) where the device computes it natively, else
    float32 (never float16, which overflows). Returns the dtype and why, for a line to the user."""
    import torch

    if on_cuda is None:
        on_cuda = torch.cuda.is_available()
    if on_cuda:
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "the GPU computes bfloat16 natively"
        return torch.float32, "the GPU has no bfloat16, and Qwen3 overflows in float16"
    native, isa = cpu_bfloat16()
    if native:
        return torch.bfloat16, f"the CPU computes bfloat16 natively ({isa})"
    return torch.float32, f"the CPU has no native bfloat16 ({isa}): emulated bfloat16 is several times slower"


def resolve_auto(
    name: str | None, note: Callable[[str], None] | None = None, on_cuda: bool | None = None
) -> str | None:
    """A dtype name with "auto" made concrete by `auto_dtype`, which `note` (if given) is told in one
    line with the reason; other names pass through unchanged."""
    if name != "auto":
        return name
    dtype, why = auto_dtype(on_cuda)
    chosen = str(dtype).removeprefix("torch.")
    if note is not None:
        note(f"dtype: {chosen} ({why}; --dtype chooses another)")
    return chosen


def choose_dtype(requested: torch.dtype | str | None, checkpoint: str | None, on_cuda: bool) -> torch.dtype:
    """The dtype to load in: the one requested, else the checkpoint's (float32 if it names none), with
    bfloat16 replaced by float32 on a GPU without it. float16 warns."""
    import torch

    if requested == "auto":
        return auto_dtype(on_cuda)[0]
    dtype = parse_dtype(requested) if isinstance(requested, str) or requested is None else requested
    if dtype is None:
        dtype = parse_dtype(checkpoint) if checkpoint in DTYPES else torch.float32
        if dtype == torch.bfloat16 and on_cuda and not torch.cuda.is_bf16_supported():
            dtype = torch.float32  # a pre-Ampere GPU: float16 would overflow, so float32
    if dtype == torch.float16:
        warnings.warn(
            Float16Warning(
                f"float16 asked for a Qwen3 model: Qwen3 was trained in bfloat16 and its activations overflow "
                f"in float16 (NaN or '!!!!' output); {FLOAT16_ADVICE}"
            ),
            stacklevel=3,
        )
    return dtype


def check_logits(logits: torch.Tensor, model=None) -> None:
    """Raise `NonFiniteLogitsError`, with advice, if the logits hold inf or NaN."""
    import torch

    if bool(torch.isfinite(logits).all()):
        return
    raise NonFiniteLogitsError(overflow_message(model))


def nonfinite_weights(model) -> list[str]:
    """The model's weights that hold NaN or inf, by their names in the checkpoint (one per expert where
    transformers 5.x fuses experts); quantized and meta-device tensors are not inspected."""
    import torch

    from qprune.arch import family_of

    try:
        split = family_of(model.config.to_dict()).checkpoint_state
    except Exception:  # not a family qprune knows: parameter names as they are
        split = dict
    bad = []
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not parameter.is_floating_point() or parameter.device.type == "meta":
                continue
            if bool(torch.isfinite(parameter).all()):
                continue
            bad += [stored for stored, view in split({name: parameter}).items() if not bool(torch.isfinite(view).all())]
    return bad


def overflow_message(model=None, suggest_check: bool = True) -> str:
    """Why a model's logits hold inf or NaN, with advice that fits: weights that hold NaN/inf
    themselves are named (no dtype helps); float16 and bitsandbytes int8 overflow; float32 is suggested
    only where the model runs in a narrower dtype. Arguments are named in braces (errors.py): the
    message is meant for a `QpruneError`."""
    import torch

    dtype = None if model is None else model.get_input_embeddings().weight.dtype
    message = "the model's logits hold inf or NaN"
    bad = [] if model is None else nonfinite_weights(model)
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    if bad and dtype == torch.float16:  # finite on disk, perhaps, but beyond float16's 65504
        return f"{message}: {bad[0]}{more} holds NaN or inf in float16; {FLOAT16_ADVICE}"
    if bad:
        return (
            f"{message}: the checkpoint's weights themselves hold NaN or inf ({bad[0]}{more}), so no dtype "
            "helps; the checkpoint is damaged: make it again from its source"
        )
    if dtype == torch.float16:
        message += f": Qwen3 overflows in float16; {FLOAT16_ADVICE}"
    elif getattr(model, "qprune_quantized", None) == "int8":
        message += (
            " (bitsandbytes int8 casts activations to float16, where Qwen3 can overflow; try nf4 or torchao-int8)"
        )
    elif dtype in (torch.float32, torch.float64):
        message += f" in {str(dtype).removeprefix('torch.')}, although its weights are finite"
    else:
        message += f" in {str(dtype).removeprefix('torch.') if dtype else 'this dtype'}; try float32"
    return message + (". {check_overflow} names the first layer that overflows." if suggest_check else "")


@dataclass
class OverflowReport:
    """Where the hidden states first stop being finite, and how large they get before that."""

    dtype: str
    first: str | None = None  # e.g. "layer 3 MLP"
    largest: list[tuple[str, float]] = field(default_factory=list)  # (place, max |finite value|)

    def __str__(self) -> str:
        peak = max(self.largest, key=lambda item: item[1], default=None)
        size = f"; largest |hidden state| {peak[1]:.3g} after {peak[0]}" if peak else ""
        if self.first is None:
            return f"overflow check ({self.dtype}): hidden states finite in every layer{size}"
        return f"overflow check ({self.dtype}): hidden states first overflow (inf/NaN) at {self.first}{size}"


def find_overflow(model, input_ids: torch.Tensor) -> OverflowReport:
    """Run one forward pass with hooks after the embeddings, every attention and MLP block that runs,
    and every layer; report the first place whose output is not finite."""
    import torch

    dtype = model.get_input_embeddings().weight.dtype
    report = OverflowReport(str(dtype).removeprefix("torch."))

    def watch(place: str):
        def hook(_module, _inputs, output) -> None:
            tensor = output[0] if isinstance(output, tuple) else output
            finite = torch.isfinite(tensor)
            if not bool(finite.all()) and report.first is None:
                report.first = place
            values = tensor.detach().abs().float()[finite]
            report.largest.append((place, values.max().item() if values.numel() else float("nan")))

        return hook

    inner = model.model
    hooks = [inner.embed_tokens.register_forward_hook(watch("the embeddings"))]
    for i, layer in enumerate(inner.layers):
        hooks.append(layer.self_attn.register_forward_hook(watch(f"layer {i} attention")))
        hooks.append(layer.mlp.register_forward_hook(watch(f"layer {i} MLP")))
        hooks.append(layer.register_forward_hook(watch(f"layer {i}")))
    hooks.append(inner.norm.register_forward_hook(watch("the final norm")))
    try:
        with torch.no_grad():
            model(input_ids=input_ids.to(inner.embed_tokens.weight.device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    report.largest = [(place, value) for place, value in report.largest if value == value]  # drop NaN
    return report
