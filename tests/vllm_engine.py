"""Run one vLLM engine on a checkpoint and print what the vLLM tests check, as JSON on a line of its own.

    python tests/vllm_engine.py CHECKPOINT '[[12, 55, 9], [7, 3]]' 24

vLLM starts its engine core in a spawned process, which re-imports the main module: hence a script
of its own with a `__main__` guard, run by tests/test_vllm.py in a subprocess (a fresh engine each).
"""

import json
import os
import sys

RESULT = "vllm-engine-result: "  # vLLM logs to stdout too; the result is the line with this prefix
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: small and fixed, so capacities compare exactly

if __name__ == "__main__":
    from vllm import LLM, SamplingParams

    checkpoint, prompts, max_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    llm = LLM(model=checkpoint, enforce_eager=True, max_model_len=256, dtype="float32", seed=0)
    outputs = llm.generate(
        [{"prompt_token_ids": ids} for ids in prompts],
        SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True),
        use_tqdm=False,
    )
    cache = llm.llm_engine.vllm_config.cache_config
    print(
        RESULT
        + json.dumps(
            {
                "tokens": [list(output.outputs[0].token_ids) for output in outputs],
                "num_gpu_blocks": cache.num_gpu_blocks,
                "block_size": cache.block_size,
                "architecture": llm.llm_engine.vllm_config.model_config.architectures[0],
            }
        ),
        flush=True,
    )
