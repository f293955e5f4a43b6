"""What qprune ships inside the package, and the `qprune:` names that reach it with no network.

    from qprune.shipped import EMBEDDED_MODEL      # the small trained Qwen3 (a checkpoint directory)
    resolve_model_dir("qprune:qwen3-pydocs")       # io.source reads MODELS; measure.data reads the texts

The one place that knows where the assets lie: the CLI, the library, tests and benchmarks read it.
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "qprune:"  # qprune:qwen3-pydocs, qprune:pydocs-heldout.txt
ASSETS = Path(__file__).resolve().parent / "assets"
MODELS = {"qwen3-pydocs": ASSETS / "qwen3-pydocs"}  # by short name
EMBEDDED_MODEL = MODELS["qwen3-pydocs"]
TEXT_DIR = ASSETS / "text"
CALIBRATION_TEXT = TEXT_DIR / "pydocs-calibration.txt"
HELDOUT_TEXT = TEXT_DIR / "pydocs-heldout.txt"
