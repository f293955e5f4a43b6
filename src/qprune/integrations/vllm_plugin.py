"""qprune's vLLM plugin: `vllm serve PRUNED` and `vllm.LLM(PRUNED)` with no `--trust-remote-code`.

vLLM runs every `vllm.general_plugins` entry point (pyproject.toml names `register`) in each of its
processes. Registration is cheap and lazy: the config class is the shipped modeling file's (vLLM has
imported transformers already), and the model class is named by string, so vLLM imports
`vllm_model.py` only when a checkpoint asks for `PrunedQwen3ForCausalLM`. A failure here is logged
and never stops vLLM from serving other models.
"""

from __future__ import annotations

import logging

ARCHITECTURE = "PrunedQwen3ForCausalLM"
MODEL_CLASS = "qprune.integrations.vllm_model:PrunedQwen3ForCausalLM"

logger = logging.getLogger(__name__)


def register() -> None:
    """Teach vLLM (and the transformers it uses) the `pruned_qwen3` config and its model."""
    try:
        from transformers import AutoConfig
        from vllm import ModelRegistry

        from qprune.modeling.configuration_pruned_qwen3 import PrunedQwen3Config

        AutoConfig.register(PrunedQwen3Config.model_type, PrunedQwen3Config, exist_ok=True)
        if ARCHITECTURE not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
    except Exception as error:  # a plugin must never take vLLM down with it
        logger.warning("qprune: could not register pruned Qwen3 with vLLM (%s)", error)
