"""lm-evaluation-harness loads a pruned checkpoint through its own model code and scores a local task
exactly as it scores the stock-Qwen3 oracle (pruned blocks' output projections zeroed).

lm-eval runs in a fresh interpreter that never imports qprune, with the hub and datasets offline: what a
user of `lm_eval --model hf --model_args pretrained=OUT,trust_remote_code=True` gets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import oracle, with_embedded_tokenizer

from qprune.ops.prune import prune
from qprune.plan import Plan
from qprune.shipped import EMBEDDED_MODEL

pytest.importorskip("lm_eval", reason="lm-eval is part of the test extra: pip install -e '.[test]'")

QUESTIONS = [
    ("To add an item to the end of a list, call the list's", ["append method", "banana bread"], 0),
    ("The keyword that defines a function in Python is", ["elephant", "def"], 1),
    ("A dictionary maps keys to", ["values", "rivers"], 0),
    ("To read a file line by line, open it and iterate", ["over the file object", "the moon slowly"], 0),
]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    task_dir, out = sys.argv[1], {}
    for path in sys.argv[2:]:
        lm = HFLM(pretrained=path, trust_remote_code=True, dtype="float32", batch_size=2, device="cpu")
        result = simple_evaluate(
            model=lm, tasks=["qprune_tiny"], task_manager=TaskManager(include_path=task_dir), log_samples=True
        )
        samples = sorted(result["samples"]["qprune_tiny"], key=lambda s: s["doc_id"])
        out[path] = {
            "class": type(lm.model).__module__ + "." + type(lm.model).__name__,
            "acc": result["results"]["qprune_tiny"]["acc,none"],
            "loglikelihoods": [[r[0][0] for r in s["resps"]] for s in samples],
        }
        assert "qprune" not in sys.modules
    print("RESULT " + json.dumps(out))
    """
)


def write_task(directory) -> None:
    directory.mkdir()
    data = directory / "tiny.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    (directory / "qprune_tiny.yaml").write_text(
        textwrap.dedent(
            f"""
            task: qprune_tiny
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: {data}
            test_split: test
            output_type: multiple_choice
            doc_to_text: "{{{{question}}}}"
            doc_to_choice: "{{{{choices}}}}"
            doc_to_target: "{{{{answer}}}}"
            metric_list:
              - metric: acc
                aggregation: mean
                higher_is_better: true
            """
        )
    )


def save_oracle(path, plan: Plan) -> None:
    oracle(EMBEDDED_MODEL, plan).save_pretrained(path)
    with_embedded_tokenizer(path)


@pytest.mark.slow
def test_lm_eval_scores_a_pruned_checkpoint_like_the_oracle(tmp_path):
    plan = Plan(attn=(1, 3), mlp=(4,))
    prune(str(EMBEDDED_MODEL), tmp_path / "pruned", plan)
    save_oracle(tmp_path / "oracle", plan)
    write_task(tmp_path / "tasks")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "tasks"), str(tmp_path / "pruned"), str(tmp_path / "oracle")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.split("RESULT ", 1)[1])
    pruned, oracle = results[str(tmp_path / "pruned")], results[str(tmp_path / "oracle")]
    assert pruned["class"].startswith("transformers_modules.") and pruned["class"].endswith("PrunedQwen3ForCausalLM")
    assert oracle["class"].endswith("Qwen3ForCausalLM") and "Pruned" not in oracle["class"]
    assert len(pruned["loglikelihoods"]) == len(QUESTIONS)
    for got, want in zip(pruned["loglikelihoods"], oracle["loglikelihoods"], strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    assert pruned["acc"] == oracle["acc"]
