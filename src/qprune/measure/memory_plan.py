"""What scan and search hold in memory, and how a `max_memory` limit is shared out.

    plan = MemoryPlan.of(config, dtype, samples=32, seq_len=512, kl=True, limit=600 * 10**6)
    plan.check()                 # QpruneError naming the minimum when the limit is below it
    print(plan.describe(84))     # the one-line plan: weights, work, states in memory and on disk

The memory model (b = bytes per value of the dtype; m sequences per micro-batch, at most 8):
- weights: the whole model in memory; layer by layer, only the largest unit at a time (the embeddings,
  one decoder layer, or the final norm with the head);
- work: one micro-batch through one layer, m x seq_len x (4 hidden + 3 intermediate + q/k/v width) x b
  plus attention scores m x heads x seq_len² x 4, or four float32 chunks of log-probabilities,
  4 x 64 tokens x vocab x 4 (the in-memory engine also holds a micro-batch's KL reference,
  m x seq_len x vocab x 4);
- states, the residual stream entering every block for every calibration token:
  samples x seq_len x hidden x b x (2 x layers + 1), the +1 being the KL reference, plus one such
  stream per candidate advanced in a pass (the in-memory engine keeps 2 x layers of them).
Within a limit, weights and work come first; the states fill what is left and spill to disk beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass

from qprune.errors import QpruneError
from qprune.words import human_bytes

MAX_MICRO_BATCH = 8


@dataclass(frozen=True)
class MemoryPlan:
    limit: int | None  # None: no limit
    weights: int  # every weight, resident at once (the in-memory engine)
    unit: int  # the largest unit the layer-by-layer engine holds at once
    unit_name: str
    work: int  # the largest working set beside it
    state: int  # one stream: every calibration token's hidden state
    micro_batch_state: int
    entries: int  # streams of states kept between passes (entering each block, and the KL reference)
    reference: int  # a micro-batch's reference log-probs, which the in-memory engine holds at once

    @classmethod
    def of(
        cls,
        config,
        dtype,
        *,
        samples: int,
        seq_len: int,
        kl: bool,
        limit: int | None = None,
        micro_batch: int | None = None,
    ) -> MemoryPlan:
        """The plan for a model of `config` (a transformers config) measured in `dtype` on `samples` x
        `seq_len` tokens, `micro_batch` sequences at a time (default: as `ablation.micro_batches`)."""
        from qprune.cost import Shape, block_parameters
        from qprune.measure.ablation import logit_chunk

        shape = Shape.from_config(config.to_dict())
        b = dtype.itemsize
        micro = max(1, min(MAX_MICRO_BATCH, 2**28 // (seq_len * shape.vocab * 4)))  # as ablation.micro_batches
        micro = min(micro_batch or micro, samples)
        tokens = micro * seq_len
        layer_sizes = [sum(block_parameters(shape, i).values()) for i in range(shape.layers)]
        embed = shape.vocab * shape.hidden
        head = embed + shape.hidden
        units = {"a decoder layer": max(layer_sizes) * b, "the embeddings": embed * b, "the head": head * b}
        inner = max(shape.intermediate, shape.experts_per_token * shape.expert_intermediate)
        qkv = (shape.heads + 2 * shape.kv_heads) * shape.head_dim
        layer_work = tokens * (4 * shape.hidden + 3 * inner + 2 * qkv) * b + micro * shape.heads * seq_len**2 * 4
        # Four vocabulary-wide float32 chunks: the model's log-probs, the reference's, exp, and the logits.
        logits_work = 4 * min(logit_chunk(shape.vocab), tokens) * shape.vocab * 4
        phases = {
            "a decoder layer": units["a decoder layer"] + layer_work,
            "the head": units["the head"] + logits_work,
            "the embeddings": units["the embeddings"] + tokens * shape.hidden * b,
        }
        name = max(phases, key=phases.get)
        weights = (sum(layer_sizes) + embed + (shape.hidden if shape.tied else head)) * b
        return cls(
            limit,
            weights,
            units[name],
            name,
            phases[name] - units[name],
            samples * seq_len * shape.hidden * b,
            tokens * shape.hidden * b,
            2 * shape.layers + (1 if kl else 0),
            tokens * shape.vocab * 4 if kl else 0,
        )

    @property
    def minimum(self) -> int:
        """The least limit the layer-by-layer engine runs in: a unit, its work, and one micro-batch's
        state in and out (every other state on disk)."""
        return self.unit + self.work + 2 * self.micro_batch_state

    @property
    def in_memory(self) -> int:
        """What the in-memory engine needs: every weight, the work, and the states it keeps."""
        return self.weights + self.work + self.reference + self.entries * self.state

    def check(self) -> None:
        if self.limit is not None and self.limit < self.minimum:
            shown = -(-self.minimum // 10**4) * 10**4  # rounded up: never below the limit it refuses
            raise QpruneError(
                f"{{max_memory}} {human_bytes(self.limit)} is less than the least this model and data need: "
                f"{human_bytes(shown)} ({self.unit_name} {human_bytes(self.unit)}, its work "
                f"{human_bytes(self.work)}, one micro-batch's states {human_bytes(2 * self.micro_batch_state)})"
            )

    @property
    def state_budget(self) -> int | None:
        return None if self.limit is None else self.limit - self.unit - self.work

    def streams(self, candidates: int) -> int:
        """Candidates advanced together in one pass over the layers: all of them when every state fits,
        else as many as half the state budget holds (the other half keeps entry states)."""
        budget = self.state_budget
        if budget is None or (self.entries + candidates) * self.state <= budget:
            return candidates
        return max(1, min(candidates, budget // 2 // self.state))

    def budgets(self, candidates: int) -> tuple[int | None, int | None]:
        """(entry states' budget, live streams' budget) in bytes; None: no limit."""
        budget = self.state_budget
        if budget is None:
            return None, None
        live = self.streams(candidates) * self.state + self.micro_batch_state
        return max(0, budget - live), live

    def describe(self, candidates: int) -> str:
        entry_budget, _ = self.budgets(candidates)
        needed = self.entries * self.state
        kept = needed if entry_budget is None else min(needed, entry_budget)
        where = "all in memory" if kept >= needed else f"{human_bytes(kept)} in memory, the rest on disk"
        limit = "no limit" if self.limit is None else human_bytes(self.limit)
        streams = self.streams(candidates)
        some = f"{streams} candidate{'s' * (streams > 1)} per pass"
        passes = "all candidates in one pass" if streams == candidates else some
        return (
            f"memory plan: {limit} = {self.unit_name} {human_bytes(self.unit)} + work "
            f"{human_bytes(self.work)} + states; states {human_bytes(needed)} ({where}), {passes} over the layers"
        )


def layer_by_layer_limit(plan: MemoryPlan, max_memory: int | None, progress) -> int | None:
    """The memory limit to measure layer by layer within, or None to hold the whole model in memory:
    when it fits `max_memory`, or, with none given, the memory available (on a GPU, with none given,
    always: layer by layer runs on the CPU). A `max_memory` below the plan's minimum is refused."""
    import dataclasses

    import torch

    from qprune.runtime.memory import available_memory

    dataclasses.replace(plan, limit=max_memory).check()
    if max_memory is None:
        available = None if torch.cuda.is_available() else available_memory()
        if available is None or plan.in_memory <= available:
            return None
        progress.note(
            f"the model and its states need about {human_bytes(plan.in_memory)}, more than the "
            f"{human_bytes(available)} available: measuring layer by layer (--max-memory sets the limit)"
        )
        return available
    if plan.in_memory <= max_memory:
        progress.note(f"the model and its states fit in {human_bytes(max_memory)}: measuring in memory")
        return None
    return max_memory
