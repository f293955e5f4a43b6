"""The code copied into checkpoints must run where qprune is not installed."""

import ast
import sys
from pathlib import Path

import pytest

from qprune.arch import FAMILIES
from qprune.ops.prune import MODELING_DIR

ALLOWED = {"torch", "transformers", "__future__"}
CASES = [(family.model_type, name) for family in FAMILIES for name in family.modeling_files]


@pytest.mark.parametrize(("family", "name"), CASES)
def test_checkpoint_code_imports_only_torch_transformers_and_stdlib(family, name):
    files = next(f.modeling_files for f in FAMILIES if f.model_type == family)
    tree = ast.parse((Path(MODELING_DIR) / name).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):  # relative: only the files shipped beside it
            assert f"{node.module}.py" in files
    foreign = {module for module in imported if module not in ALLOWED and module not in sys.stdlib_module_names}
    assert not foreign, foreign
