"""The vLLM plugin's registration, in any environment: declared, light, and harmless without vLLM.
(Serving itself is tested in tests/test_vllm.py, in CI's vLLM environment.)"""

import importlib.metadata
import importlib.util
import logging
import subprocess
import sys

import pytest


def test_the_entry_point_names_the_register_function():
    (entry,) = [e for e in importlib.metadata.entry_points(group="vllm.general_plugins") if e.name == "qprune"]
    assert entry.value == "qprune.integrations.vllm_plugin:register"
    assert callable(entry.load())


def test_importing_the_plugin_imports_nothing_heavy():
    code = (
        "import sys, qprune.integrations.vllm_plugin; "
        "print(sorted(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_register_without_vllm_logs_and_returns(caplog):
    from qprune.integrations.vllm_plugin import register

    with caplog.at_level(logging.WARNING):
        register()  # must never raise inside vLLM's plugin loader
    assert "could not register pruned Qwen3 with vLLM" in caplog.text
