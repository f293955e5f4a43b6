"""LoRA on pruned models with PEFT: the usual Qwen3 target names, minus the pruned blocks.

    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, qprune.lora_config(model, r=16))            # q/k/v/o, gate/up/down
    config = LoraConfig(r=16, target_modules=["q_proj", "v_proj", "down_proj"],
                        exclude_modules=qprune.pruned_modules(model))          # your own config
    model = get_peft_model(model, config)
    ...train...
    model = model.merge_and_unload()                                           # back to slim Linears

A pruned block's Linears are `PrunedLinear` placeholders that hold nothing; PEFT refuses them when a
target name matches them ("Target module PrunedLinear ... is not supported"). `lora_config` targets
the kept Linears by their full names; `pruned_modules` lists the placeholders for `exclude_modules`.
"""

from __future__ import annotations

from typing import Any

from qprune.errors import QpruneError

QWEN3_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def pruned_modules(model) -> list[str]:
    """Full names of the pruned blocks' placeholder Linears (for PEFT's `exclude_modules`). Works on a
    PEFT-wrapped model too (the names are then the wrapped ones)."""
    from qprune.modeling.pruned_blocks import PrunedLinear

    return [name for name, module in model.named_modules() if isinstance(module, PrunedLinear)]


def lora_config(model, r: int = 16, target_modules: tuple[str, ...] | list[str] = QWEN3_LINEARS, **kwargs: Any):
    """A `peft.LoraConfig` on the kept Linears whose last name is in `target_modules` (lm_head never)."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise QpruneError("LoRA needs peft: pip install peft") from None
    from torch import nn

    wanted = set(target_modules)
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in wanted and name != "lm_head"
    ]
    if not names:
        raise QpruneError(f"no kept Linear is named {', '.join(sorted(wanted))}: nothing for LoRA to adapt")
    kwargs.setdefault("task_type", "CAUSAL_LM")
    return LoraConfig(r=r, target_modules=names, **kwargs)
