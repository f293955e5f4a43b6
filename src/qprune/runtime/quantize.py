"""Quantized weights for pruned models: never created, initialised or quantized for pruned blocks.

    model = qprune.load("qwen3-pruned", quantize="int8")        # quantized while loading
    model = qprune.quantize(qprune.load("qwen3-pruned"), "nf4")  # or after loading (the seed's order)
    parameter_bytes(model)                                        # what the weights really take

Modes (`MODES`): bitsandbytes `int8` (LLM.int8) and `nf4`, torchao `torchao-int8` (int8 weight-only)
and `torchao-int4` (int4 weight-only; torchao has no CPU kernel for it, so CUDA only). The libraries
are optional: `pip install bitsandbytes torchao accelerate` (the `quant` extra).

Why the care: transformers' quantizers replace every `nn.Linear` of the model skeleton. Had a pruned
block kept its Linears, they would get fresh weights that the checkpoint cannot fill, which
transformers would initialise at random and quantize. The model code puts `PrunedLinear` placeholders
there instead (not `nn.Linear`s, so any quantizer passes them by, also for users who bring their own
`quantization_config`), and the configs built here name the pruned blocks as modules not to convert
as well. `quantize()` walks only the Linears that run. lm_head stays unquantized, as transformers
does by default for bitsandbytes (its weight is often tied to the embeddings).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qprune.errors import QpruneError

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Mode:
    name: str
    library: str  # the module to import
    description: str
    cuda_only: bool = False


MODES = {
    mode.name: mode
    for mode in (
        Mode("int8", "bitsandbytes", "bitsandbytes LLM.int8: int8 weights, outlier features in 16-bit"),
        Mode("nf4", "bitsandbytes", "bitsandbytes 4-bit NormalFloat weights, blocks of 64"),
        Mode("torchao-int8", "torchao", "torchao int8 weight-only, one scale per output channel"),
        Mode("torchao-int4", "torchao", "torchao int4 weight-only, groups of 128", cuda_only=True),
    )
}
INT4_GROUP_SIZE = 128


def mode_named(name: str, on_cuda: bool) -> Mode:
    """The mode, checked: known, its library installed, and able to run on this device."""
    mode = MODES.get(name)
    if mode is None:
        raise QpruneError(f"{{quantize}} {name!r}: choose one of {', '.join(MODES)}")
    if importlib.util.find_spec(mode.library) is None:
        raise QpruneError(f"{{quantize}} {name} needs {mode.library}: pip install {mode.library}")
    quiet_library_logs()
    if mode.cuda_only and not on_cuda:
        raise QpruneError(
            f"{{quantize}} {name} needs a CUDA GPU: {mode.library} has no CPU kernel for it; "
            "on a CPU use nf4 or torchao-int8"
        )
    return mode


def quiet_library_logs() -> None:
    """Silence log lines that no one can act on: torchao's, for each optional CUDA extension it cannot
    load (transformers imports torchao whenever it is installed), torch's about torchao's enums, and
    bitsandbytes' for every int8 matmul of bfloat16 inputs (it computes in float16; overflow_message
    says so when it matters) and for an optional CPU kernel package."""
    import logging

    for name in (
        "torchao",
        "torch.utils._pytree",
        "bitsandbytes.autograd._functions",
        "bitsandbytes.backends.cpu.ops",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)


def modules_not_to_convert(config) -> list[str]:
    """lm_head and the pruned blocks, by module name (both transformers 4.57's substring match and 5.x's
    prefix match take a block's name to cover the Linears inside it)."""
    attn = getattr(config, "pruned_attn_layers", None) or []
    mlp = getattr(config, "pruned_mlp_layers", None) or []
    return (
        ["lm_head"]
        + [f"model.layers.{i}.self_attn" for i in sorted(attn)]
        + [f"model.layers.{i}.mlp" for i in sorted(mlp)]
    )


def quantization_config(
    name: str, config, compute_dtype: torch.dtype, also_skip: Sequence[str] = (), on_cuda: bool = False
):
    """The transformers quantization config for a mode, with pruned blocks (and `also_skip`) left alone."""
    mode = mode_named(name, on_cuda)
    skip = modules_not_to_convert(config) + list(also_skip)
    if mode.library == "bitsandbytes":
        from transformers import BitsAndBytesConfig

        if mode.name == "int8":
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=skip,
        )
    from transformers import TorchAoConfig

    return TorchAoConfig(_torchao_config(mode), modules_to_not_convert=skip)


def _torchao_config(mode: Mode):
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

    return Int8WeightOnlyConfig() if mode.name == "torchao-int8" else Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE)


def quantize(model: nn.Module, mode: str) -> nn.Module:
    """Quantize a model already loaded, in place: every Linear that runs except lm_head.

    Pruned blocks are skipped: those whose weights were released and those skipped by flags (their
    weights stay as they are, so `set_pruned` can still bring them back). Returns the model."""
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "qprune_quantized", None):
        raise QpruneError("the model is already quantized")
    device = model.get_input_embeddings().weight.device
    spec = mode_named(mode, on_cuda=device.type == "cuda")
    targets = [name for name, module in model.named_modules() if _runs(model, name, module)]
    if spec.library == "torchao":
        from torchao.quantization import quantize_

        wanted = set(targets)
        quantize_(model, _torchao_config(spec), filter_fn=lambda _module, name: name in wanted)
    else:
        compute_dtype = model.get_input_embeddings().weight.dtype
        for name in targets:
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent)
            setattr(owner, child, _bitsandbytes_linear(getattr(owner, child), spec.name, compute_dtype))
    model.qprune_quantized = spec.name
    from qprune.runtime.memory import return_freed_memory

    return_freed_memory()
    return model


def _runs(model, name: str, module) -> bool:
    from torch import nn

    if type(module) is not nn.Linear or module.weight is None or name == "lm_head":
        return False
    parts = name.split(".")
    if len(parts) > 3 and parts[:2] == ["model", "layers"]:
        layer = model.model.layers[int(parts[2])]
        if (parts[3] == "self_attn" and getattr(layer, "prune_self_attn", False)) or (
            parts[3] == "mlp" and getattr(layer, "prune_mlp", False)
        ):
            return False
    return True


def _bitsandbytes_linear(linear, mode: str, compute_dtype):
    # The same modules and parameters transformers builds when it loads with BitsAndBytesConfig's
    # defaults (threshold 6.0; nf4 without double quantization, blocks of 64), so both orders agree.
    import bitsandbytes as bnb

    weight = linear.weight.data
    shape = (linear.in_features, linear.out_features)
    bias = linear.bias is not None
    if mode == "int8":
        new = bnb.nn.Linear8bitLt(*shape, bias=bias, has_fp16_weights=False, threshold=6.0, device="meta")
        quantized = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False)
    else:
        new = bnb.nn.Linear4bit(
            *shape, bias=bias, compute_dtype=compute_dtype, compress_statistics=False, quant_type="nf4", device="meta"
        )
        quantized = bnb.nn.Params4bit(weight.cpu(), requires_grad=False, compress_statistics=False, quant_type="nf4")
    new.weight = quantized.to(weight.device)  # moving the parameter to a device is what quantizes it
    if bias:
        new.bias = linear.bias
    return new.train(linear.training)  # bitsandbytes picks its int8 kernel by training mode


def parameter_bytes(model: nn.Module) -> int:
    """Bytes the parameters take in memory, quantization state included (bitsandbytes scales, torchao's
    packed data and scales); tied parameters counted once."""
    return sum(tensor_bytes(p) for p in model.parameters())


def tensor_bytes(tensor: torch.Tensor) -> int:
    import torch

    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()  # a torchao tensor subclass: sum its inner tensors
        return sum(tensor_bytes(getattr(tensor, n)) for n in names)
    size = tensor.numel() * tensor.element_size()
    state = getattr(tensor, "quant_state", None)  # bitsandbytes 4-bit: absmax per block, code book
    if state is not None:
        size += sum(tensor_bytes(v) for v in state.as_dict().values() if isinstance(v, torch.Tensor))
    scales = getattr(tensor, "SCB", None)  # bitsandbytes 8-bit: one scale per row
    if isinstance(scales, torch.Tensor):
        size += tensor_bytes(scales)
    return size


def describe(model: nn.Module) -> str:
    """One line: the quantization mode (if any) and the parameters' bytes."""
    from qprune.words import human_bytes

    mode = getattr(model, "qprune_quantized", None)
    return f"{mode or 'unquantized'}: parameters take {human_bytes(parameter_bytes(model))}"
