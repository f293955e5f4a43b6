"""Loading pruned (and dense) Qwen3 checkpoints as `PrunedQwen3ForCausalLM`, safely.

    model = qprune.load("qwen3-pruned")                  # dtype of the checkpoint
    model = qprune.load("Qwen/Qwen3-0.6B", dtype=torch.float32)   # a dense Qwen3, no block pruned

No remote code is needed: the classes are registered with transformers' auto classes here. Only
safetensors are read. A tensor the plan keeps but the checkpoint lacks is an error naming it (the
model class checks this itself; transformers would fill it with random values).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import QpruneError
from .source import read_qwen3_config, resolve_model_dir

if TYPE_CHECKING:
    import torch

    from .modeling.modeling_pruned_qwen3 import PrunedQwen3ForCausalLM


def register() -> None:
    """Make AutoConfig / AutoModelForCausalLM resolve `pruned_qwen3` to qprune's classes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .modeling.configuration_pruned_qwen3 import PrunedQwen3Config
    from .modeling.modeling_pruned_qwen3 import PrunedQwen3ForCausalLM

    AutoConfig.register(PrunedQwen3Config.model_type, PrunedQwen3Config, exist_ok=True)
    AutoModelForCausalLM.register(PrunedQwen3Config, PrunedQwen3ForCausalLM, exist_ok=True)


def load_tokenizer(path: str | Path):
    """The checkpoint's tokenizer. The auto classes are registered first: a pruned checkpoint's config
    names remote code, and transformers would otherwise stop to ask whether to run it."""
    from transformers import AutoTokenizer

    register()
    return AutoTokenizer.from_pretrained(path)


def load_config(path: str | Path):
    """A `PrunedQwen3Config` for a pruned or a dense Qwen3 checkpoint (a dense one prunes nothing)."""
    from .modeling.configuration_pruned_qwen3 import PrunedQwen3Config

    fields = {k: v for k, v in read_qwen3_config(Path(path)).items() if k not in ("model_type", "auto_map")}
    return PrunedQwen3Config.from_dict(fields)


def load(
    path: str | Path,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    **kwargs: Any,
) -> PrunedQwen3ForCausalLM:
    """Load a checkpoint (directory or hub id) in eval mode; dtype defaults to the checkpoint's."""
    from .modeling.modeling_pruned_qwen3 import MissingTensorsError, PrunedQwen3ForCausalLM

    register()
    model_dir = resolve_model_dir(str(path))
    try:
        model = PrunedQwen3ForCausalLM.from_pretrained(
            model_dir,
            config=load_config(model_dir),
            dtype=dtype if dtype is not None else "auto",
            device_map=device_map,
            use_safetensors=True,
            **kwargs,
        )
    except MissingTensorsError as error:
        raise QpruneError(f"{model_dir}: {error}") from None
    return model.eval()
