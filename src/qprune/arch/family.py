"""What qprune needs to know about a model family, as data: one `Family` per file in `arch/`.

    family = family_of(config)              # from config.json's model_type, stock or pruned
    family.expected_tensors(config)         # every tensor a dense checkpoint holds, with its shape
    family.is_output_projection("model.layers.3.mlp.experts.7.down_proj.weight", "mlp")   # True
    family.tensor_block("model.layers.3.mlp.up_proj.weight")    # (3, "mlp")
    family.check_config(config, "config.json")  # its own fields' types and ranges, or a QpruneError

Plans, completeness checks, pruning, loading, verification's oracle, export and bench read it; adding
a family is adding one description and its modeling files.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from qprune.errors import QpruneError

# Mirrors `tensor_block` in modeling/pruned_blocks.py, which must stay free of qprune
# imports because it is copied into checkpoints; tests/test_plan.py checks that the two agree.
_LAYER_TENSOR = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|input_layernorm|mlp|post_attention_layernorm)\.")
_ATTN_SUBMODULES = ("self_attn", "input_layernorm")


def tensor_block(name: str) -> tuple[int, str] | None:
    """The block a tensor belongs to, as (layer, "attn" | "mlp"), or None for tensors outside blocks.

    A layer has two blocks. Attention is `self_attn.*` plus `input_layernorm`, the norm in front of it;
    the MLP is `mlp.*` plus `post_attention_layernorm`. Pruning a block removes exactly these tensors.
    Every family names its blocks this way (model.layers.N.self_attn / .mlp; Qwen3-MoE's router and
    experts sit under `mlp.`), so this one rule is every family's `Family.tensor_block`, and callers that
    hold a tensor name and no config (`Plan.prunes`, and with it the pruned-tensor check) use it
    directly. A family naming its blocks otherwise would need those callers to be given a family."""
    match = _LAYER_TENSOR.search(name)
    if match is None:
        return None
    return int(match.group(1)), "attn" if match.group(2) in _ATTN_SUBMODULES else "mlp"


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class FieldKind:
    """What a config.json field must be where the file states it: `test(value, config)`, and `must_be`
    for the error ("{name} must be {must_be}, not {value!r}"; `{last}` is the last layer's number).
    A `nullable` field may be null (the stock default); the others may only be left out."""

    must_be: str
    test: Callable[[object, dict], bool]
    nullable: bool = True

    def check(self, config: dict, name: str, where: str) -> None:
        if name not in config or (self.nullable and config[name] is None):
            return
        if not self.test(config[name], config):
            must_be = self.must_be.format(last=config["num_hidden_layers"] - 1)
            raise QpruneError(f"{where}: {name} must be {must_be}, not {config[name]!r}")


def _positive_number(value: object, config: dict) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


# The kinds of config fields, for the tables of `check_config` (io/source.py) and `Family.config_checks`.
POSITIVE_INT = FieldKind("a positive integer", lambda value, config: is_int(value) and value > 0, nullable=False)
OPTIONAL_POSITIVE_INT = FieldKind("a positive integer", POSITIVE_INT.test)
OPTIONAL_COUNT = FieldKind("a non-negative integer", lambda value, config: is_int(value) and value >= 0)
OPTIONAL_POSITIVE_NUMBER = FieldKind("a positive number", _positive_number)
OPTIONAL_BOOL = FieldKind("true or false", lambda value, config: isinstance(value, bool))
OPTIONAL_STRING = FieldKind("a string", lambda value, config: isinstance(value, str))
OPTIONAL_STRINGS = FieldKind(
    "a list of strings (one per layer)",
    lambda value, config: isinstance(value, list) and all(isinstance(item, str) for item in value),
)
OPTIONAL_OBJECT = FieldKind("an object", lambda value, config: isinstance(value, dict))
OPTIONAL_LAYERS = FieldKind(  # any order, as stock transformers reads them
    "a list of layer numbers in 0..{last}",
    lambda value, config: (
        isinstance(value, list) and all(is_int(i) and 0 <= i < config["num_hidden_layers"] for i in value)
    ),
)


def no_sliding_window(config: dict) -> bool:
    """Whether attention blocks may be pruned: not in sliding-window models, whose KV-cache slots are
    typed by position, and the compact slots of a pruned model would mix sliding and full layers."""
    return not config.get("use_sliding_window")


SLIDING_WINDOW_ATTENTION = "attention blocks of a sliding-window Qwen3 cannot be pruned"


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
    # The family's own config.json fields and what each must be (the fields every family reads are
    # checked by io/source.py's `check_config`).
    config_checks: dict[str, FieldKind] = field(default_factory=dict)
    # A rule between the family's fields, as the problem it finds in a config (None: none).
    config_relations: Callable[[dict], str | None] = lambda config: None
    # Which block a tensor belongs to (see `tensor_block`), and whether a config's attention blocks may
    # be pruned (`SLIDING_WINDOW_ATTENTION` says why not).
    tensor_block: Callable[[str], tuple[int, str] | None] = tensor_block
    attention_prunable: Callable[[dict], bool] = no_sliding_window
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

    def check_config(self, config: dict, where: str) -> None:
        """Types and ranges of the family's own config fields, in a config whose num_hidden_layers is
        valid (io/source.py's `check_config` checks it first); the error names `where` and the field."""
        for name, kind in self.config_checks.items():
            kind.check(config, name, where)
        problem = self.config_relations(config)
        if problem is not None:
            raise QpruneError(f"{where}: {problem}")

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
