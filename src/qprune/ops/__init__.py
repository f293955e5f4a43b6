"""Operations that write checkpoints: `prune` (slim pruned checkpoints), `export` (an exact stock Qwen3),
both streaming safetensors without building a model; `auto` (`prune --auto`: a search from `measure`,
then `prune`); and the card's words (`report`, also `qprune info`)."""
