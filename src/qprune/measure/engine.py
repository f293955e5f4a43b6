"""The two measuring engines behind one interface: scan, search and eval run on either without asking which.

    engine = engine_of(model)                     # a loaded model, or a `StreamedModel` (weights on disk)
    engine.skeleton                               # the structure they read: layers, config, flags, lm_head
    with engine.runner(batch, kl=True) as runner:   # candidates(), evaluate(), remove(), dense_stats
        stats = runner.evaluate(runner.candidates())
    for k, normed in engine.final_states(batches):  # final normed hidden states, batch by batch
        ...

- `InMemory`: a model with every weight resident. Its runner is `ablation.BlockRunner` (or, `naive`,
  `ablation.FullForwardRunner`, the full forward per candidate the others are checked against); its
  final states come from a forward per batch.
- `LayerByLayer`: a `runtime.streamed.StreamedModel`, within its `max_memory`. Its runner is
  `layerwise.LayerwiseRunner`, its final states `layerwise.final_states`: a layer resident at a time.

Both give equal results (the tests compare them). `engine_of` is the one place that tells the two kinds
of model apart: a `StreamedModel` keeps its structure apart from itself, in `skeleton`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from qprune.measure.ablation import BlockRunner, FullForwardRunner
from qprune.measure.layerwise import LayerwiseRunner, final_states

if TYPE_CHECKING:
    from qprune.runtime.streamed import StreamedModel


class InMemory:
    """A loaded model: every weight resident."""

    max_memory = None  # no limit of its own: it is loaded already
    whole = True  # every weight in memory at once: the model runs as transformers runs it

    def __init__(self, model) -> None:
        self.model = self.skeleton = model

    def runner(self, batch: torch.Tensor, *, kl: bool = False, progress=None, naive: bool = False):
        return (FullForwardRunner if naive else BlockRunner)(self.model, batch, kl=kl, progress=progress)

    def final_states(
        self, batches: list[torch.Tensor], progress=None, description: str = "forward"
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(batch index, final normed hidden states) of each batch of token ids, a whole forward each."""
        device = self.model.get_input_embeddings().weight.device
        for k, batch in enumerate(progress(batches, description) if progress else batches):
            # Inference mode for the forward only, never across a yield: a generator suspended (or
            # dropped) inside the context would leave gradients off for its caller.
            with torch.inference_mode():
                states = self.model.model(input_ids=batch.to(device), use_cache=False).last_hidden_state
            yield k, states


class LayerByLayer:
    """A `StreamedModel`: one layer's weights resident at a time, states spilled to disk, within
    `max_memory` bytes."""

    def __init__(self, streamed: StreamedModel) -> None:
        self.streamed, self.skeleton, self.max_memory = streamed, streamed.skeleton, streamed.max_memory
        self.whole = False

    def runner(self, batch: torch.Tensor, *, kl: bool = False, progress=None, naive: bool = False):
        # `naive` asks for the in-memory reference; layer by layer there is one way only.
        return LayerwiseRunner(self.streamed, batch, kl=kl, progress=progress, max_memory=self.max_memory)

    def final_states(
        self, batches: list[torch.Tensor], progress=None, description: str = "forward"
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """As `InMemory.final_states`, every batch through a layer before the next; the final norm and
        `lm_head` are resident while a batch's states are yielded."""
        return final_states(self.streamed, batches, progress, f"{description}, layers")


def engine_of(model) -> InMemory | LayerByLayer:
    """The engine for `model`: `LayerByLayer` for a model whose weights stay on disk (a `StreamedModel`:
    its skeleton is apart from it), else `InMemory`."""
    structure = getattr(model, "skeleton", model)
    return InMemory(model) if structure is model else LayerByLayer(model)
