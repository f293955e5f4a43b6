"""Operations that write checkpoints: `prune` (slim pruned checkpoints), `export` (an exact stock Qwen3),
and the words they share (`report`, also `qprune info`). They stream safetensors; no model is built."""
