"""`BlockRunner`'s results for models larger than memory: one layer's weights at a time, states spilled to disk.

    streamed = StreamedModel.open(path, torch.float32)
    with LayerwiseRunner(streamed, batch, kl=True, max_memory=600 * 10**6) as runner:
        stats = runner.evaluate(runner.candidates())     # {block: TokenStats}, equal to BlockRunner's
        runner.remove((3, "mlp"))

The in-memory runner replays the layers after a candidate, candidate by candidate, with every weight
resident. This one turns the loops around: a pass over the layers loads layer j once and advances
every candidate's state through it, for every micro-batch, so a pass reads the weights once. The
states are the same: the residual stream entering every block (recorded by a pass of the current
model, kept in a `StateStore` that spills to disk beyond its budget) and one stream per candidate
being advanced. When the candidates' streams do not all fit, they go in groups, a pass per group.

Every layer runs on exactly the inputs, flags and keyword arguments it gets in the in-memory engine,
micro-batch by micro-batch, and stats accumulate in the same order, so the results are equal, not
close (the tests compare them). The memory plan (`memory_plan.py`) decides what is resident.
`final_states(streamed, batches)` runs one model over batches of token ids the same way: eval's
perplexity layer by layer. `engine.py` puts this engine and the in-memory one behind one interface.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from qprune.measure.ablation import (
    Block,
    RecordingRunner,
    TokenStats,
    expand,
    micro_batches,
    removed_blocks,
    token_stats,
    token_stats_of_many,
)
from qprune.measure.memory_plan import MemoryPlan
from qprune.measure.states import StateStore
from qprune.runtime.memory import return_large_frees

if TYPE_CHECKING:
    from qprune.runtime.streamed import StreamedModel


class _Stop(Exception):
    """Ends a forward once the decoder layers' arguments are recorded."""


class _Recorder(nn.Module):
    """Stands in for a decoder layer while the model's forward computes the layers' arguments."""

    def __init__(self, layer: nn.Module, calls: list, index: int) -> None:
        super().__init__()
        self.calls, self.index = calls, index
        self.attention_type = getattr(layer, "attention_type", None)  # 5.x picks each layer's mask by it
        self.prune_self_attn = True  # the compact cache slots skip it

    def forward(self, hidden_states, *args, **kwargs):
        self.calls[self.index] = (args, kwargs)
        return hidden_states


def layer_calls(model, embeds: torch.Tensor) -> list:
    """The (args, kwargs) each decoder layer of `model` gets from the model's own forward of `embeds`
    (mask, rotary embeddings, ...), with stand-ins for the layers so that no weight is needed: a layer
    run by hand on them computes what it computes inside the forward."""
    decoder = model.model
    calls: list = [None] * len(decoder.layers)
    real = decoder.layers
    decoder.layers = nn.ModuleList(_Recorder(layer, calls, i) for i, layer in enumerate(real))

    def stop(module, args):
        raise _Stop

    handle = decoder.norm.register_forward_pre_hook(stop)
    try:
        decoder(inputs_embeds=embeds, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
        decoder.layers = real
    return calls


@dataclass
class _Stream:
    """One micro-batch-wise residual stream advanced through the layers from `start` on."""

    key: Hashable
    skipped: set[Block]
    start: int  # first layer it runs through
    source: Callable[[int], torch.Tensor]  # its state entering `start`, per micro-batch
    record: bool = False  # keep the state entering each block it passes (the current model's stream)


class LayerPasses:
    """Passes over a `StreamedModel`'s layers for batches of token ids: embedding them (and recording each
    layer's arguments), advancing streams through the layers, and the stores that hold the states."""

    def __init__(self, streamed: StreamedModel, batches: list[torch.Tensor], plan: MemoryPlan, streams: int) -> None:
        plan.check()
        if plan.limit is not None:
            return_large_frees()  # else glibc keeps freed logit chunks: the limit would not hold
        self.streamed, self.plan = streamed, plan
        self.model = streamed.skeleton
        self.layers = self.model.model.layers
        self.removed: set[Block] = removed_blocks(self.model)
        self.batches = batches
        self.progress = None
        self._record: dict | None = None
        entry_budget, live_budget = plan.budgets(streams)
        self.entries = StateStore(entry_budget)  # (micro-batch, layer, kind) -> state entering that block
        self.live = StateStore(live_budget)  # (stream, micro-batch) -> its state now
        self.calls: list[list] = []  # per micro-batch, per layer: (args, kwargs) as the model's forward passes them

    def close(self) -> None:
        self.entries.close()
        self.live.close()

    def final_states(self, description: str, record: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
        """(batch index, final normed hidden states) of every batch through the current model, as
        `model.model(input_ids)` computes them: embedded (recording each layer's arguments), advanced
        through the layers, and yielded while the final norm and head are resident (so the caller can
        compute logits with the skeleton's `lm_head`). With `record`, the state entering every block
        is kept in `self.entries`."""
        decoder = self.model.model
        with self.streamed.resident(decoder.embed_tokens):
            for k, input_ids in enumerate(self.batches):
                embeds = decoder.embed_tokens(input_ids.to(self.streamed.device))
                self.calls.append(layer_calls(self.model, embeds))
                self.live.put(("current", k), embeds)
        current = _Stream("current", self.removed, 0, lambda k: self.live.pop(("current", k)), record=record)
        self.sweep([current], description)
        with self.streamed.resident(decoder.norm, self.model.lm_head):
            for k in range(len(self.batches)):
                yield k, decoder.norm(self.live.pop(("current", k)))

    def sweep(self, streams: list[_Stream], description: str) -> None:
        """Advance every stream through the layers from its start to the last, one layer resident at a
        time; each ends in `self.live` under (its key, micro-batch), before the final norm."""
        first = min(s.start for s in streams)
        layers = range(first, len(self.layers))
        for j in self.progress(layers, description) if self.progress else layers:
            layer = self.layers[j]
            with self.streamed.resident(layer):
                for k in range(len(self.batches)):
                    args, kwargs = self.calls[k][j]
                    for stream in streams:
                        if stream.start <= j:
                            self._advance(stream, layer, j, k, args, kwargs)
            layer.prune_self_attn, layer.prune_mlp = (j, "attn") in self.removed, (j, "mlp") in self.removed
        for stream in streams:
            if stream.start == len(self.layers):  # the last layer's MLP removed: nothing left to run
                for k in range(len(self.batches)):
                    self.live.put((stream.key, k), stream.source(k))

    def _advance(self, stream: _Stream, layer: nn.Module, j: int, k: int, args, kwargs) -> None:
        hidden = stream.source(k) if j == stream.start else self.live.pop((stream.key, k))
        layer.prune_self_attn, layer.prune_mlp = (j, "attn") in stream.skipped, (j, "mlp") in stream.skipped
        if stream.record:
            self._record = {(j, "attn"): hidden}
        try:
            out = layer(hidden, *args, **kwargs)
            if stream.record:
                for (i, kind), state in self._record.items():
                    self.entries.put((k, i, kind), state)
        finally:
            self._record = None
        self.live.put((stream.key, k), out)


class LayerwiseRunner(LayerPasses, RecordingRunner):
    """`BlockRunner`'s interface on a `StreamedModel` within `max_memory` bytes; see the module docstring."""

    def __init__(
        self,
        streamed: StreamedModel,
        batch: torch.Tensor,
        *,
        kl: bool = False,
        progress=None,
        max_memory: int | None = None,
    ) -> None:
        max_memory = max_memory if max_memory is not None else streamed.max_memory
        config = streamed.skeleton.config
        plan = MemoryPlan.of(
            config, streamed.dtype, samples=batch.shape[0], seq_len=batch.shape[1], kl=kl, limit=max_memory
        )
        most = 3 * config.num_hidden_layers  # blocks, and whole layers in a scan
        super().__init__(streamed, micro_batches(batch, config.vocab_size), plan, most)
        self._initial = self.removed
        self.kl = kl
        self.progress = progress
        self.dense_stats = TokenStats()
        self._handles = [
            layer.post_attention_layernorm.register_forward_pre_hook(self._mlp_entered(i))
            for i, layer in enumerate(self.layers)
        ]
        if progress:
            progress.note(plan.describe(most))
        try:
            self._first_pass()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        RecordingRunner.close(self)
        for i, layer in enumerate(self.layers):  # the flags as they were: removals were for measuring
            layer.prune_self_attn, layer.prune_mlp = (i, "attn") in self._initial, (i, "mlp") in self._initial
        LayerPasses.close(self)

    @property
    def spilled_bytes(self) -> int:
        """Bytes of states written to disk so far."""
        return self.entries.written_bytes + self.live.written_bytes

    @torch.inference_mode()
    def _first_pass(self) -> None:
        """Run the current model, keeping the state entering every block; its stats are the dense stats,
        its output the KL reference."""
        for k, normed in self.final_states("forward, layers", record=True):
            self.dense_stats += token_stats(self.model, normed, self.batches[k])
            if self.kl:
                self.entries.put(("reference", k), normed)

    def _entry(self, block: Block) -> tuple[int, Callable[[int], torch.Tensor]]:
        """Where a stream with `block` removed starts, and its state there: the state entering the block
        (an MLP's is already past its layer)."""
        layer, kind = block
        return (layer if kind == "attn" else layer + 1), lambda k: self.entries.get((k, layer, kind))

    @torch.inference_mode()
    def evaluate(
        self, candidates: list[Block], progress=None, description: str = "ablations"
    ) -> dict[Block, TokenStats]:
        """Stats of the model with each candidate removed in addition to `self.removed`."""
        totals = {block: TokenStats() for block in candidates}
        size = self.plan.streams(len(candidates))
        groups = [candidates[i : i + size] for i in range(0, len(candidates), size)]
        for g, group in enumerate(groups, 1):
            streams = [_Stream(c, self.removed | expand(c), *self._entry(min(expand(c)))) for c in group]
            part = f" (pass {g} of {len(groups)})" if len(groups) > 1 else ""
            self.sweep(streams, f"{description}: {len(candidates)} candidates{part}, layers")
            self._finish(group, totals)
        return totals

    def _finish(self, group: list[Block], totals: dict[Block, TokenStats]) -> None:
        """Stats of the group's final states. With KL, per micro-batch, a chunk of the reference's
        log-probs at a time serves every candidate (`token_stats_of_many`): never a micro-batch's whole."""
        decoder = self.model.model
        with self.streamed.resident(decoder.norm, self.model.lm_head):
            for k, input_ids in enumerate(self.batches):
                normed = {block: decoder.norm(self.live.pop((block, k))) for block in group}
                if self.kl:
                    reference = self.entries.get(("reference", k))
                    stats = token_stats_of_many(self.model, normed, input_ids, reference)
                else:
                    stats = {block: token_stats(self.model, states, input_ids) for block, states in normed.items()}
                for block in group:
                    totals[block] += stats[block]

    @torch.inference_mode()
    def remove(self, block: Block) -> None:
        """Remove `block` for good: the states after it are recomputed without it."""
        self.removed = self.removed | expand(block)
        start, source = self._entry(min(expand(block)))
        self.sweep([_Stream("current", self.removed, start, source, record=True)], "removing, layers")
        for k in range(len(self.batches)):
            self.live.discard(("current", k))


@torch.inference_mode()
def final_states(
    streamed: StreamedModel, batches: list[torch.Tensor], progress=None, description: str = "forward, layers"
) -> Iterator[tuple[int, torch.Tensor]]:
    """`LayerPasses.final_states` of these batches of token ids (each [rows, length]) within
    `streamed.max_memory`: what eval's perplexity runs on a model measured layer by layer."""
    config = streamed.skeleton.config
    rows, length = max(b.shape[0] for b in batches), max(b.shape[1] for b in batches)
    plan = MemoryPlan.of(
        config,
        streamed.dtype,
        samples=sum(b.shape[0] for b in batches),
        seq_len=length,
        kl=False,
        limit=streamed.max_memory,
        micro_batch=rows,
    )
    passes = LayerPasses(streamed, batches, plan, streams=1)
    passes.progress = progress
    if progress:
        progress.note(plan.describe(1))
    try:
        yield from passes.final_states(description)
    finally:
        passes.close()
