"""Loading pruned (and dense) checkpoints of every supported family as qprune's classes, safely.

    model = qprune.load("qwen3-pruned")                  # dtype of the checkpoint
    model = qprune.load("Qwen/Qwen3-0.6B", dtype=torch.float32)   # a dense Qwen3, no block pruned
    model = qprune.load("qwen3-moe-pruned")              # a Qwen3-MoE: PrunedQwen3MoeForCausalLM
    model = qprune.load("qwen3-pruned", quantize="nf4")  # pruned blocks are not quantized (none exist)

No remote code is needed: the classes are registered with transformers' auto classes here. Only
safetensors are read, and only after `open_checkpoint` has checked them: a tensor the plan keeps but
the checkpoint lacks, or one of a block the plan prunes, is an error naming it (the model class checks
this itself too; transformers would fill a missing one with random values).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qprune.arch import FAMILIES, family_of
from qprune.errors import QpruneError
from qprune.io.source import Checkpoint, open_checkpoint, read_model_config, resolve_model_dir
from qprune.runtime.memory import return_freed_memory

if TYPE_CHECKING:
    import torch

    from qprune.modeling.modeling_pruned_qwen3 import PrunedQwen3ForCausalLM


def register() -> None:
    """Make AutoConfig / AutoModelForCausalLM resolve `pruned_qwen3` (and every family's pruned
    model_type) to qprune's classes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for family in FAMILIES:
        config_class, model_class = family.pruned_classes()
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)


def load_tokenizer(source: str | Path | Checkpoint):
    """The checkpoint's tokenizer, loaded once per Checkpoint. The auto classes are registered first: a
    pruned checkpoint's config names remote code, and transformers would otherwise stop to ask whether
    to run it."""
    from transformers import AutoTokenizer

    checkpoint = open_checkpoint(source)
    if "tokenizer" not in checkpoint.memo:
        register()
        try:
            checkpoint.memo["tokenizer"] = AutoTokenizer.from_pretrained(checkpoint.dir)
        except Exception as error:  # a damaged or missing tokenizer file: tokenizers and transformers raise many types
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise QpruneError(f"cannot load the tokenizer of {checkpoint.name}: {reason}") from None
    return checkpoint.memo["tokenizer"]


def load_config(source: str | Path | Checkpoint):
    """The pruned config class of the checkpoint's family (`PrunedQwen3Config`, ...), for a pruned or a
    dense checkpoint (a dense one prunes nothing). A path: only its config.json is read and checked."""
    if isinstance(source, Checkpoint):
        config_dir, config = source.dir, source.config
    else:
        config_dir = resolve_model_dir(str(source))
        config = read_model_config(config_dir)
    family = family_of(config)
    raw = family.portable_config(config)  # a config.json another transformers version wrote
    config_class, _ = family.pruned_classes()
    try:
        return config_class.from_dict({k: v for k, v in raw.items() if k not in ("model_type", "auto_map")})
    except (TypeError, ValueError, KeyError, AttributeError) as error:  # a field check_config does not know
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise QpruneError(f"{config_dir / 'config.json'}: transformers cannot read it: {reason}") from None


def load(
    source: str | Path | Checkpoint,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    quantize: str | None = None,
    **kwargs: Any,
) -> PrunedQwen3ForCausalLM:
    """Load a checkpoint (directory, hub id or opened Checkpoint) in eval mode.

    dtype defaults to the checkpoint's (float32 on a GPU without bfloat16); float16 warns, as Qwen3
    overflows in it. `quantize` names a mode of `qprune.runtime.quantize.MODES` ("int8", "nf4",
    "torchao-int8", "torchao-int4"): the kept Linears are quantized as they load, and nothing is built
    for pruned blocks. A quantized load goes to the GPU when there is one (device_map "auto")."""
    from qprune.runtime.quantize import quantization_config, quiet_library_logs

    quiet_library_logs()  # before transformers is imported: it imports torchao, which logs on import
    import torch

    from qprune.modeling.pruned_blocks import MissingTensorsError
    from qprune.runtime.precision import choose_dtype

    register()
    checkpoint = open_checkpoint(source)  # config, headers and tensors checked before transformers reads them
    model_dir = checkpoint.dir
    config = load_config(checkpoint)
    _, model_class = family_of(checkpoint.config).pruned_classes()
    if quantize is not None and device_map is None and torch.cuda.is_available():
        device_map = "auto"
    on_cuda = device_map is not None and torch.cuda.is_available() and device_map != "cpu"
    raw = checkpoint.config
    dtype = choose_dtype(dtype, raw.get("dtype") or raw.get("torch_dtype"), on_cuda)
    if quantize is not None:
        kwargs["quantization_config"] = quantization_config(quantize, config, dtype, on_cuda=on_cuda)
    try:
        model = model_class.from_pretrained(
            model_dir, config=config, dtype=dtype, device_map=device_map, use_safetensors=True, **kwargs
        )
    except MissingTensorsError as error:
        raise QpruneError(f"{model_dir}: {error}") from None
    model.qprune_quantized = quantize
    if quantize is not None:
        return_freed_memory()
    return model.eval()
