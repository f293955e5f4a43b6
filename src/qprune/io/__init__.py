"""What qprune reads and writes: a model reference resolved once (`source`: local directory or hub
snapshot, its checked config and tensors), safetensors headers and shard copies (`safetensors`), and
atomic, locked output directories (`output`). No torch here."""
