"""qprune's vLLM plugin: `vllm serve PRUNED` and `vllm.LLM(PRUNED)` with no `--trust-remote-code`.

vLLM runs every `vllm.general_plugins` entry point (pyproject.toml names `register`) in each of its
processes. Registration is cheap and lazy: the config class is the shipped modeling file's (vLLM has
imported transformers already), and the model class is named by string, so vLLM imports
`vllm_model.py` only when a checkpoint asks for `PrunedQwen3ForCausalLM`. A failure here is logged
and never stops vLLM from serving other models.
"""

from __future__ import annotations

import importlib
import logging

from qprune.arch import FAMILIES

MODULE = "qprune.integrations.vllm_model"

logger = logging.getLogger(__name__)


def register() -> None:
    """Teach vLLM (and the transformers it uses) every family's pruned config (`pruned_qwen3`,
    `pruned_qwen3_moe`) and its model."""
    try:
        from transformers import AutoConfig
        from vllm import ModelRegistry

        for family in FAMILIES:
            config_module = importlib.import_module(f"qprune.modeling.{family.config_module}")
            config_class = getattr(config_module, family.pruned_config_class)
            AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
            if family.pruned_class not in ModelRegistry.get_supported_archs():
                ModelRegistry.register_model(family.pruned_class, f"{MODULE}:{family.pruned_class}")
    except Exception as error:  # a plugin must never take vLLM down with it
        logger.warning("qprune: could not register pruned Qwen3 with vLLM (%s)", error)
