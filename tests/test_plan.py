import json

import pytest
from conftest import cli

from qprune.arch import tensor_block
from qprune.errors import QpruneError
from qprune.modeling.configuration_pruned_qwen3 import PrunedQwen3Config
from qprune.modeling.pruned_blocks import tensor_block as modeling_tensor_block
from qprune.plan import Plan

NAMES = [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_norm.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.12.mlp.down_proj.weight",
    "model.layers.12.post_attention_layernorm.weight",
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    "layers.3.mlp.up_proj.weight",
    "model.layers.5.mlp.gate.weight",
    "model.layers.5.mlp.experts.17.down_proj.weight",
]


def test_tensor_blocks():
    assert [tensor_block(n) for n in NAMES] == [
        (0, "attn"),
        (0, "attn"),
        (0, "attn"),
        (12, "mlp"),
        (12, "mlp"),
        None,
        None,
        None,
        (3, "mlp"),
        (5, "mlp"),
        (5, "mlp"),
    ]


def test_plan_and_checkpoint_config_agree_on_blocks():
    # the modeling file cannot import qprune, so it carries its own copy of the mapping
    assert [tensor_block(n) for n in NAMES] == [modeling_tensor_block(n) for n in NAMES]
    config = PrunedQwen3Config(num_hidden_layers=16, pruned_attn_layers=[0], pruned_mlp_layers=[12])
    plan = Plan(attn=(0,), mlp=(12,))
    assert [plan.prunes(n) for n in NAMES] == [config.is_pruned_tensor(n) for n in NAMES]


def test_parse_normalises():
    plan = Plan.parse("5, 0,5", "3")
    assert (plan.attn, plan.mlp, plan.num_blocks) == ((0, 5), (3,), 3)
    assert Plan.parse(None, None).num_blocks == 0


def test_parse_ranges():
    assert Plan.parse("20-23, 2", "5 - 5").to_dict() == {"attn": [2, 20, 21, 22, 23], "mlp": [5]}


@pytest.mark.parametrize(
    ("attn", "message"),
    [
        ("x", "'x' is not a layer number"),
        ("1,-2", "layer -2 is negative"),
        ("1.5", "'1.5'"),
        ("7-3", "runs backwards"),
        ("1-x", "'1-x' is not a layer number or a range"),
    ],
)
def test_parse_rejects(attn, message):
    with pytest.raises(QpruneError, match=message):
        Plan.parse(attn, None)


def test_validate_names_the_layer():
    with pytest.raises(QpruneError, match=r"^mlp: layer 4 is out of range: the model has 4 layers \(0..3\)"):
        Plan(mlp=(4,)).validate(4)


def test_json_round_trip_and_errors(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(Plan(attn=(1,), mlp=(2, 0)).to_dict()))
    assert Plan.from_json(path) == Plan(attn=(1,), mlp=(0, 2))
    path.write_text('{"attn": ["a"]}')
    with pytest.raises(QpruneError, match="must be a list of layer numbers"):
        Plan.from_json(path)
    path.write_text("{not json")
    with pytest.raises(QpruneError, match="not valid JSON"):
        Plan.from_json(path)
    with pytest.raises(QpruneError, match="does not exist"):
        Plan.from_json(tmp_path / "missing.json")


def test_union_combines():
    assert Plan(attn=(1,)).union(Plan(attn=(2,), mlp=(0,))) == Plan(attn=(1, 2), mlp=(0,))


def test_errors_name_parameters_in_python_and_flags_on_the_command_line():

    with pytest.raises(QpruneError) as raised:
        Plan.parse(attn="3-1")
    assert str(raised.value) == "attn: the range '3-1' runs backwards"
    assert raised.value.for_cli() == "--attn: the range '3-1' runs backwards"
    assert QpruneError("{batches} and {seq_len}").for_cli() == "--batch and --seq-len"
    result = cli("prune", "src", "out", "--attn", "3-1")
    assert result.exit_code == 2 and result.output == "error: --attn: the range '3-1' runs backwards\n"
