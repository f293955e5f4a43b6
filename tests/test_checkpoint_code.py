"""The code copied into checkpoints must run where qprune is not installed."""

import ast
import sys
from pathlib import Path

import pytest

from qprune.ops.prune import MODELING_DIR, MODELING_FILES

ALLOWED = {"torch", "transformers", "__future__"}


@pytest.mark.parametrize("name", MODELING_FILES)
def test_checkpoint_code_imports_only_torch_transformers_and_stdlib(name):
    tree = ast.parse((Path(MODELING_DIR) / name).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):  # relative: only the other checkpoint file
            assert f"{node.module}.py" in MODELING_FILES
    foreign = {module for module in imported if module not in ALLOWED and module not in sys.stdlib_module_names}
    assert not foreign, foreign
