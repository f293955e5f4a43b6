"""Measure a model with blocks removed, computing only what comes after the first removed block.

Scan and search both ask one question many times: how do the calibration NLL (and the KL divergence
from the dense model) change if block b is removed as well as those removed already? Running the whole
model for every candidate wastes the layers before b, whose output does not depend on removing b. So:

    with BlockRunner(model, batch, kl=True) as runner:      # one forward per micro-batch, states kept
        stats = runner.evaluate(runner.candidates())        # {block: TokenStats}, each from its block on
        runner.remove((3, "mlp"))                            # commit; states after it are recomputed

A pass over the model records, per micro-batch, the residual stream entering every block and the
keyword arguments (mask, rotary embeddings) each decoder layer was called with. Removing block b then
replays the decoder layers from b onward on the stored state, with b skipped by the model's own flags,
so the arithmetic is exactly that of a full forward: `FullForwardRunner`, the same interface computed by a
full forward per candidate, is the reference the tests and benchmarks compare against. States are kept
for every micro-batch and block (samples x seq_len x hidden x 2 x layers values); this memory is what
buys the speed.

Blocks are `(layer, "attn" | "mlp")` in forward order. A candidate may also be a whole layer,
`(layer, "layer")`: both its blocks removed at once (`expand`). Metrics accumulate in float32.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qprune.measure.goal import Block

KINDS = ("attn", "mlp")
_LOGIT_BUDGET = 2**20  # float32 logits computed at once (4 MB): big chunks spill out of CPU caches


def all_blocks(num_layers: int) -> list[Block]:
    return [(layer, kind) for layer in range(num_layers) for kind in KINDS]


def expand(candidate: Block) -> set[Block]:
    """The blocks a candidate removes: itself, or both blocks of a layer for `(layer, "layer")`."""
    layer, kind = candidate
    return {(layer, k) for k in KINDS} if kind == "layer" else {candidate}


@dataclass
class TokenStats:
    """Sums over predicted tokens; `mean_nll` / `mean_kl` are per token."""

    nll: float = 0.0
    kl: float = 0.0
    tokens: int = 0

    def __iadd__(self, other: TokenStats) -> TokenStats:
        self.nll, self.kl, self.tokens = self.nll + other.nll, self.kl + other.kl, self.tokens + other.tokens
        return self

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens

    @property
    def mean_kl(self) -> float:
        return self.kl / self.tokens

    def metric(self, name: str) -> float:
        return self.mean_nll if name == "nll" else self.mean_kl


def removed_blocks(model) -> set[Block]:
    """The blocks the model's flags skip right now."""
    return {
        (i, kind)
        for i, layer in enumerate(model.model.layers)
        for kind, skipped in (("attn", layer.prune_self_attn), ("mlp", layer.prune_mlp))
        if skipped
    }


@contextmanager
def skipping(model, blocks: Iterable[Block]) -> Iterator[None]:
    """Set the model's flags to skip exactly `blocks`, and restore them afterwards."""
    blocks = set(blocks)
    before = removed_blocks(model)
    _set_flags(model, blocks)
    try:
        yield
    finally:
        _set_flags(model, before)


def _set_flags(model, blocks: set[Block]) -> None:
    # Through the model's own setter, which refuses to un-prune a block whose weights were never loaded.
    model.set_pruned(attn=[i for i, kind in blocks if kind == "attn"], mlp=[i for i, kind in blocks if kind == "mlp"])


def micro_batches(batch: torch.Tensor, vocab_size: int, budget_bytes: int = 2**28) -> list[torch.Tensor]:
    """Split [samples, seq_len] so a micro-batch's float32 log-probs (the KL reference) fit the budget."""
    per_sequence = batch.shape[1] * vocab_size * 4
    size = max(1, min(8, budget_bytes // per_sequence))
    return list(batch.split(size))


def logit_chunk(vocab_size: int) -> int:
    """Tokens whose logits are computed at once: about `_LOGIT_BUDGET` floats, and at least 64 rows
    (fewer starve the matrix multiply; for Qwen3's vocabulary, 64 rows are 39 MB of float32)."""
    return max(64, _LOGIT_BUDGET // vocab_size)


def token_stats(
    model, normed: torch.Tensor, input_ids: torch.Tensor, reference: torch.Tensor | None = None
) -> TokenStats:
    """NLL of next-token prediction (and KL(reference || model) when reference log-probs are given) from
    final normed hidden states; logits are computed in chunks so they never exist all at once."""
    hidden, targets = _predicting(normed, input_ids)
    if reference is None:
        return TokenStats(chunked_nll(model, hidden, targets), 0.0, hidden.shape[0])
    chunk = logit_chunk(model.lm_head.weight.shape[0])
    nll = kl = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        chunk_nll, chunk_kl = _chunk_terms(model, hidden[rows], targets[rows], reference[rows])
        nll, kl = nll + chunk_nll, kl + chunk_kl
    return TokenStats(float(nll), float(kl), hidden.shape[0])


def token_stats_of_many(
    model, normed: dict, input_ids: torch.Tensor, reference_normed: torch.Tensor
) -> dict[object, TokenStats]:
    """`token_stats` of several models' normed hidden states (by key) on one micro-batch, with the KL
    reference computed from the reference model's normed hidden states a chunk at a time: the same
    arithmetic as `token_stats` with `reference_logprobs`, holding one chunk of reference log-probs."""
    reference_hidden, targets = _predicting(reference_normed, input_ids)
    hiddens = {key: _predicting(states, input_ids)[0] for key, states in normed.items()}
    chunk = logit_chunk(model.lm_head.weight.shape[0])
    zero = torch.zeros((), dtype=torch.float32, device=reference_hidden.device)
    sums = {key: (zero, zero) for key in normed}
    for start in range(0, reference_hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        reference = _reference_chunk(model, reference_hidden[rows])
        for key, hidden in hiddens.items():
            chunk_nll, chunk_kl = _chunk_terms(model, hidden[rows], targets[rows], reference)
            sums[key] = (sums[key][0] + chunk_nll, sums[key][1] + chunk_kl)
    return {key: TokenStats(float(nll), float(kl), reference_hidden.shape[0]) for key, (nll, kl) in sums.items()}


def _predicting(normed: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [N, hidden] of the positions that predict a token, and those tokens [N]."""
    hidden = normed[:, :-1].reshape(-1, normed.shape[-1])
    return hidden, input_ids[:, 1:].reshape(-1).to(hidden.device)


def _chunk_terms(model, hidden: torch.Tensor, targets: torch.Tensor, reference: torch.Tensor):
    """Summed NLL and KL(reference || model) of one chunk of tokens, as float32 scalars. Few
    vocabulary-sized temporaries: the model's log-probs are turned into the KL terms in place."""
    weight = model.lm_head.weight
    logprobs = torch.log_softmax(F.linear(hidden.to(weight.device), weight).float(), -1)
    reference = reference.to(logprobs.device)
    nll = F.nll_loss(logprobs, targets.to(logprobs.device), reduction="sum")  # what cross_entropy computes
    gap = torch.sub(reference, logprobs, out=logprobs)  # reference - logprobs
    kl = reference.exp().mul_(gap).sum(-1).clamp_min(0).sum()  # >= 0 up to rounding
    return nll, kl


def chunked_nll(model, hidden: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed NLL of `targets` [N] given final normed hidden states [N, hidden], in float32; logits are
    computed a chunk of tokens at a time, so [N, vocab] never exists at once."""
    weight = model.lm_head.weight
    chunk = logit_chunk(weight.shape[0])
    nll = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        logits = F.linear(hidden[start : start + chunk].to(weight.device), weight).float()
        nll = nll + F.cross_entropy(logits, targets[start : start + chunk].to(logits.device), reduction="sum")
    return float(nll)


def reference_logprobs(model, normed: torch.Tensor) -> torch.Tensor:
    """Log-probs [N, vocab] of the tokens' predictions, computed a logit chunk at a time as
    `token_stats_of_many` computes them."""
    hidden = normed[:, :-1].reshape(-1, normed.shape[-1])
    weight = model.lm_head.weight
    chunk = logit_chunk(weight.shape[0])
    out = torch.empty(hidden.shape[0], weight.shape[0], dtype=torch.float32, device=weight.device)
    for start in range(0, hidden.shape[0], chunk):
        out[start : start + chunk] = _reference_chunk(model, hidden[start : start + chunk])
    return out


def _reference_chunk(model, hidden: torch.Tensor) -> torch.Tensor:
    weight = model.lm_head.weight
    return torch.log_softmax(F.linear(hidden.to(weight.device), weight).float(), -1)


@dataclass
class _Path:
    """One micro-batch's trip through the model as it is now (with `removed` skipped)."""

    input_ids: torch.Tensor
    layer_calls: list  # per layer: (extra positional args, keyword args) it was called with
    states: dict  # block -> residual stream entering it
    reference: torch.Tensor | None  # dense model's final normed hidden states, for KL


class RecordingRunner:
    """What the block runners share: the candidates left, a hook per layer that records the residual
    stream entering its MLP block while `_record` is a dict, and removing the hooks on close."""

    _record: dict | None = None
    _handles: list
    layers: list
    removed: set[Block]

    def candidates(self) -> list[Block]:
        return [b for b in all_blocks(len(self.layers)) if b not in self.removed]

    def _mlp_entered(self, i: int):
        def hook(module, args):
            if self._record is not None:
                self._record[(i, "mlp")] = args[0]

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BlockRunner(RecordingRunner):
    """Evaluates block removals on calibration batches; see the module docstring."""

    def __init__(self, model, batch: torch.Tensor, *, kl: bool = False, progress=None) -> None:
        self.model = model
        self.layers = model.model.layers
        self.kl = kl
        self.removed = removed_blocks(model)
        self.dense_stats = TokenStats()
        self._record: dict | None = None
        self._calls: list | None = None
        self._handles = []
        for i, layer in enumerate(self.layers):
            self._handles += [
                layer.register_forward_pre_hook(self._layer_entered(i), with_kwargs=True),
                layer.post_attention_layernorm.register_forward_pre_hook(self._mlp_entered(i)),
            ]
        self.paths = []
        try:
            batches = micro_batches(batch, model.config.vocab_size)
            for input_ids in progress(batches, "forward") if progress else batches:
                self.paths.append(self._first_pass(input_ids))
        except BaseException:
            self.close()
            raise

    # -- hooks: record the residual stream entering each block during recorded passes ------------

    def _layer_entered(self, i: int):
        def hook(module, args, kwargs):
            if self._record is not None:
                self._record[(i, "attn")] = args[0] if args else kwargs["hidden_states"]
            if self._calls is not None:
                self._calls[i] = (args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"})

        return hook

    # -- passes ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def _first_pass(self, input_ids: torch.Tensor) -> _Path:
        self._record, self._calls = {}, [None] * len(self.layers)
        try:
            device = self.model.model.embed_tokens.weight.device
            normed = self.model.model(input_ids=input_ids.to(device), use_cache=False).last_hidden_state
            path = _Path(input_ids, self._calls, self._record, normed if self.kl else None)
        finally:
            self._record = self._calls = None
        self.dense_stats += token_stats(self.model, normed, input_ids)
        return path

    def _run_from(self, path: _Path, block: Block) -> torch.Tensor:
        """Final normed hidden states when the layers from `block` on are replayed on its stored input
        (the caller sets the flags, `block` among the skipped)."""
        layer, kind = block
        hidden = path.states[block]
        for i in range(layer if kind == "attn" else layer + 1, len(self.layers)):
            if self._record is not None:
                self._record[(i, "attn")] = hidden
            args, kwargs = path.layer_calls[i]
            hidden = self.layers[i](hidden, *args, **kwargs)
        return self.model.model.norm(hidden)

    def replay(self, path: _Path, layer: int, kind: str = "mlp") -> torch.Tensor:
        """Final normed hidden states when layer `layer`'s `kind` block and every block after it are
        replayed, as the model now computes them, on the residual stream that entered that block (an
        expert masked in it: `measure.experts.expert_kl`; a KV group zeroed: `measure.width`)."""
        if kind == "attn":
            return self._run_from(path, (layer, "attn"))  # the whole layer runs, as its flags say
        hidden = path.states[(layer, "mlp")]
        block = self.layers[layer]
        if not block.prune_mlp:
            out = block.mlp(block.post_attention_layernorm(hidden))
            hidden = hidden + (out[0] if isinstance(out, tuple) else out)  # 4.x's MoE block adds router logits
        for i in range(layer + 1, len(self.layers)):
            args, kwargs = path.layer_calls[i]
            hidden = self.layers[i](hidden, *args, **kwargs)
        return self.model.model.norm(hidden)

    @torch.inference_mode()
    def evaluate(
        self, candidates: list[Block], progress=None, description: str = "ablations"
    ) -> dict[Block, TokenStats]:
        """Stats of the model with each candidate removed in addition to `self.removed`."""
        totals = {block: TokenStats() for block in candidates}
        # One progress step per (micro-batch, candidate), so long steps report candidates done.
        work = [(path, block) for path in self.paths for block in candidates]
        if progress:
            work = progress(work, f"{description} ({len(candidates)} candidates x {len(self.paths)} micro-batches)")
        current, reference = None, None
        for path, block in work:
            if path is not current:
                current = path
                reference = reference_logprobs(self.model, path.reference) if self.kl else None
            with skipping(self.model, self.removed | expand(block)):
                normed = self._run_from(path, min(expand(block)))
            totals[block] += token_stats(self.model, normed, path.input_ids, reference)
        return totals

    @torch.inference_mode()
    def remove(self, block: Block) -> None:
        """Remove `block` for good: later evaluations start from the model without it."""
        self.removed = self.removed | expand(block)
        with skipping(self.model, self.removed):
            for path in self.paths:
                self._record = {}
                try:
                    self._run_from(path, min(expand(block)))
                    path.states.update(self._record)
                finally:
                    self._record = None


class FullForwardRunner:
    """`BlockRunner`'s interface computed the plain way, a full forward per candidate and micro-batch:
    the reference that the runner's results must equal, and the baseline its speed is measured against."""

    def __init__(self, model, batch: torch.Tensor, *, kl: bool = False, progress=None) -> None:
        self.model, self.kl = model, kl
        self.removed = removed_blocks(model)
        self.batches = micro_batches(batch, model.config.vocab_size)
        self.references: list[torch.Tensor] = []
        self.dense_stats = self.stats(self.removed, keep_references=kl)

    @torch.inference_mode()
    def stats(self, blocks: set[Block], keep_references: bool = False) -> TokenStats:
        """Stats of the model with exactly `blocks` skipped."""
        device = self.model.model.embed_tokens.weight.device
        total = TokenStats()
        with skipping(self.model, blocks):
            for k, input_ids in enumerate(self.batches):
                normed = self.model.model(input_ids=input_ids.to(device), use_cache=False).last_hidden_state
                if keep_references:  # log-probs of every micro-batch kept: the memory a plain search spends
                    self.references.append(reference_logprobs(self.model, normed))
                reference = self.references[k] if self.kl else None
                total += token_stats(self.model, normed, input_ids, reference)
        return total

    def candidates(self) -> list[Block]:
        return [b for b in all_blocks(len(self.model.model.layers)) if b not in self.removed]

    def evaluate(
        self, candidates: list[Block], progress=None, description: str = "ablations"
    ) -> dict[Block, TokenStats]:
        return {
            block: self.stats(self.removed | expand(block))
            for block in (progress(candidates, description) if progress else candidates)
        }

    def remove(self, block: Block) -> None:
        self.removed = self.removed | expand(block)

    def close(self) -> None:
        pass

    def __enter__(self) -> FullForwardRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
