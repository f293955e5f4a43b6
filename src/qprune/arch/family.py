"""What qprune needs to know about a model family, as data: one `Family` per file in `arch/`.

    family = family_of(config)              # from config.json's model_type, stock or pruned
    family.expected_tensors(config)         # every tensor a dense checkpoint holds, with its shape
    family.is_output_projection("model.layers.3.mlp.experts.7.down_proj.weight", "mlp")   # True

Plans, completeness checks, pruning, loading, verification's oracle, export and bench read it; adding
a family is adding one description and its modeling files.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

from qprune.errors import QpruneError


@dataclass(frozen=True)
class Family:
    model_type: str  # stock transformers' model_type, e.g. "qwen3"
    title: str  # as people write it, e.g. "Qwen3-MoE"
    stock_class: str  # transformers' causal-LM class of the stock model
    stock_config_class: str
    pruned_config_class: str  # qprune's classes, in qprune.modeling.<module> and shipped in checkpoints
    pruned_class: str
    config_module: str
    modeling_module: str
    # A pruned block's output projections (parameter names under `model.layers.{i}.`, as fnmatch
    # patterns covering every transformers version's names): zeroed, the stock model computes the
    # pruned one. This is the oracle every test and `qprune verify` compare against.
    output_projections: dict[str, tuple[str, ...]]
    expected_tensors: Callable[[dict], dict[str, tuple[int, ...]]]
    config_defaults: dict
    positive_int_fields: tuple[str, ...] = ()  # family-specific config fields that must be positive ints
    bench_shapes: dict = field(default_factory=dict)  # name -> cost.Shape fields of released models
    # A loaded model's state dict renamed as checkpoints name it (where transformers keeps tensors in
    # memory under other names than on disk); the identity for most families.
    checkpoint_state: Callable[[dict], dict] = dict
    # config.json fields every transformers version reads the same way, for configs qprune writes.
    portable_config: Callable[[dict], dict] = dict
    # Config fields that name layers, for a model keeping only `kept_layers` (renumbered from 0): export.
    renumbered_fields: Callable[[dict, list[int]], dict] = lambda config, kept_layers: {}
    # The family's own fields of `cost.Shape` (what its cost formulas need beyond a dense Qwen3's).
    shape_fields: Callable[[dict], dict] = lambda config: {}

    @property
    def pruned_model_type(self) -> str:
        return f"pruned_{self.model_type}"

    @property
    def modeling_files(self) -> tuple[str, ...]:
        """What a pruned checkpoint ships so that transformers alone loads it (remote code)."""
        return ("pruned_blocks.py", f"{self.config_module}.py", f"{self.modeling_module}.py")

    @property
    def auto_map(self) -> dict[str, str]:
        return {
            "AutoConfig": f"{self.config_module}.{self.pruned_config_class}",
            "AutoModelForCausalLM": f"{self.modeling_module}.{self.pruned_class}",
        }

    def config_field(self, config: dict, name: str):
        """A config.json field, or the stock config class's default where the file leaves it out."""
        return config.get(name, self.config_defaults.get(name))

    def is_output_projection(self, name: str, kind: str) -> bool:
        """Whether parameter `name` (full name, any transformers version) is an output projection of a
        `kind` ("attn" | "mlp") block."""
        parts = name.split(".", 3)  # model.layers.{i}.<rest>
        if len(parts) < 4 or parts[:2] != ["model", "layers"]:
            return False
        rest = parts[3].removesuffix(".weight").removesuffix(".bias")
        return any(fnmatch.fnmatchcase(rest, pattern) for pattern in self.output_projections[kind])

    def pruned_classes(self):
        """(config class, model class) of qprune's modeling for this family."""
        import importlib

        config_module = importlib.import_module(f"qprune.modeling.{self.config_module}")
        modeling = importlib.import_module(f"qprune.modeling.{self.modeling_module}")
        return getattr(config_module, self.pruned_config_class), getattr(modeling, self.pruned_class)

    def stock_classes(self):
        """(config class, model class) of stock transformers for this family."""
        import transformers

        return getattr(transformers, self.stock_config_class), getattr(transformers, self.stock_class)


def family_for(config: dict, families: tuple[Family, ...], where: str) -> Family:
    model_type = config.get("model_type")
    for family in families:
        if model_type in (family.model_type, family.pruned_model_type):
            return family
    kind = model_type if isinstance(model_type, str) and model_type else "model of unknown type"
    supported = ", ".join(f"{f.title} ({f.model_type})" for f in families)
    raise QpruneError(f"{where} holds a {kind} model; qprune supports {supported}")
