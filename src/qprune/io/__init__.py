"""What qprune reads and writes: a model reference resolved once (`source`: local directory or hub
snapshot, its checked config and tensors), safetensors headers and shard copies (`safetensors`),
atomic, locked output directories (`output`), and a pruned checkpoint as its stock family's config and
tensors (`stock`: what export writes and verify's self-oracle loads). No torch here."""
