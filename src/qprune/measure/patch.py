"""Recovery without training: for each run of pruned blocks, a linear correction fitted on calibration
activations and folded into the output projection of the nearest kept block before the run
(`prune --patch`; `ops.patch` writes it). No parameter is added: a patched checkpoint holds exactly
the tensors of the unpatched one, so it loads, exports and heals as one.

    patches = fit_patches(model, batch, plan, PatchSettings())   # model: the source, loaded or streamed
    patches.fits                                                  # per run: the block patched, error before/after
    tensors = patches.folded(checkpoint)                          # {output projection name: patched weight}

The algebra. Blocks run in order (layer 0's attention, its MLP, layer 1's attention, ...), each adding
its output to the residual stream. Let P be the kept block just before a run of pruned blocks, with
output projection W (`o_proj` or `down_proj`, out x in) applied to z (the attention heads' output, or
act(gate x) * up x); P adds y = W z. A correction that is linear in z folds into W exactly:
(W + D) z = y + D z. The fit chooses D so that the pruned stream after the run, plus D z, is as close
as least squares can make it, over the calibration tokens, to the target:
- `dense` (default): the source model's stream at the same point, so a fit also corrects what earlier
  runs left behind;
- `local`: the pruned stream plus what the run's blocks would have added to it (each block's own loss).
With Z, Y, R the tokens' z, y and (target - pruned stream) as rows, and ridge λ = `patch_ridge` x the
mean of the Gram matrix's diagonal:
- `full` (default): D = Rᵀ Z (Zᵀ Z + λI)⁻¹, any out x in map: as rich as refitting W;
- `output`: D = A W with A = Rᵀ Y (Yᵀ Y + λI)⁻¹, a map of the block's output (ReplaceMe's form);
- `diagonal`: D = diag(s) W with s = Σ r·y / (Σ y² + λ) per output channel (Prune&Comp's rescaling).
A Qwen3-MoE block's output is a routed sum over experts, each with its own `down_proj`: a map of the
output (A W_e for every expert e) folds there, a map of z does not, so `full` becomes `output` for them.
Runs are fitted in depth order on the already-patched stream (after each fit the pruned stream moves
by its correction), so errors do not compound. A run with no kept block before it (layer 0's attention
pruned) cannot be patched: it is reported.

Both streams advance a block at a time, every micro-batch through a layer before the next, with one
layer resident at a time for a model read from disk (`--max-memory`); both streams' states and the z of
the pending fit stay in memory. Statistics accumulate in float64.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

from qprune.errors import QpruneError, warn
from qprune.measure.goal import Block
from qprune.plan import Plan
from qprune.setting import setting

PATCH_RECORD = "qprune_patch"  # config.json: how the checkpoint was patched (`Patches.record`)
PATCH_MAPS = ("full", "output", "diagonal")
PATCH_TARGETS = ("dense", "local")
_ROWS_AT_ONCE = 8  # sequences per micro-batch
# A full map has as many unknowns per output channel as its input has features; with fewer than this many
# calibration tokens per feature it fits the calibration text, not the model (on the shipped model, 1.3
# tokens per feature made perplexity worse than no patch; 5 recovered 35% of the gap, 21 recovered 53%).
TOKENS_PER_FEATURE = 16


# What `--patch` takes: a plan that prunes blocks, and no experts or width (their cuts are exact slices).
NOT_PATCHABLE = "{patch} corrects for pruned blocks; experts and width are cut without it"


def check_patchable(plan: Plan) -> None:
    if plan.experts or plan.has_width:
        raise QpruneError(NOT_PATCHABLE)
    if not plan.num_blocks:
        raise QpruneError("{patch} corrects for pruned blocks: the plan prunes none (give {attn} or {mlp} layers)")


@dataclass(frozen=True)
class PatchSettings:
    """How `prune --patch` fits its corrections (the data: `DataSpec`, the usual calibration options)."""

    patch_map: str = setting(
        "full",
        "With --patch: the correction's form: full (any map of the patched projection's input), output (a map of "
        "the block's output), or diagonal (a rescaling of each output channel).",
        metavar="full|output|diagonal",
    )
    patch_target: str = setting(
        "dense",
        "With --patch: match the dense model's residual stream after each run (dense), or what the run's blocks "
        "would have added to the pruned stream (local).",
        metavar="dense|local",
    )
    patch_ridge: float = setting(
        1e-3, "With --patch: ridge strength, relative to the mean activation power.", metavar="R"
    )

    def __post_init__(self) -> None:
        if self.patch_map not in PATCH_MAPS:
            raise QpruneError(f"{{patch_map}} {self.patch_map}: choose {' or '.join(PATCH_MAPS)}")
        if self.patch_target not in PATCH_TARGETS:
            raise QpruneError(f"{{patch_target}} {self.patch_target}: choose {' or '.join(PATCH_TARGETS)}")
        if not (isinstance(self.patch_ridge, (int, float)) and self.patch_ridge >= 0):
            raise QpruneError(f"{{patch_ridge}} must be a number >= 0, not {self.patch_ridge}")


@dataclass
class Fit:
    """One run of pruned blocks and the correction folded into the kept block before it."""

    block: Block  # the kept block whose output projection changes
    run: tuple[Block, ...]  # the pruned blocks it stands in for
    form: str  # "full" | "output" | "diagonal"
    matrix: object  # torch.Tensor: D (full, out x in), A (output, out x out) or s (diagonal, out)
    error_before: float  # mean squared distance to the target per token
    error_after: float

    @property
    def recovered(self) -> float:
        return 1 - self.error_after / self.error_before if self.error_before else 0.0


@dataclass
class Patches:
    settings: PatchSettings
    fits: list[Fit] = field(default_factory=list)
    unpatched: list[tuple[Block, ...]] = field(default_factory=list)  # runs with no kept block before them
    tokens: int = 0
    data: dict = field(default_factory=dict)  # the calibration data (`DataSpec.describe()`), for the record

    def folded(self, checkpoint) -> dict:
        """{checkpoint tensor name: the patched tensor, in its stored dtype}: each fit's output projection
        (every expert's `down_proj` for a Qwen3-MoE block) read from the checkpoint and corrected; a map of
        the block's output also maps the projection's bias (attention biases), which is part of it."""
        from safetensors import safe_open

        out = {}
        for fit in self.fits:
            names = _projection_names(checkpoint.tensors, fit.block)
            bias = names[0].removesuffix(".weight") + ".bias"
            if fit.form != "full" and bias in checkpoint.tensors:
                names.append(bias)
            for name in names:
                with safe_open(checkpoint.tensors[name].file, "pt") as f:
                    stored = f.get_tensor(name)
                value, matrix = stored.double(), fit.matrix.double()
                if fit.form == "full":
                    value = value + matrix
                elif fit.form == "output":
                    value = value + matrix @ value
                else:
                    value = value + (matrix[:, None] * value if value.dim() == 2 else matrix * value)
                out[name] = value.to(stored.dtype)
        return out

    def record(self) -> dict:
        """What config.json records (`qprune_patch`): how, on what, and where."""
        return {
            "map": self.settings.patch_map,
            "target": self.settings.patch_target,
            "ridge": self.settings.patch_ridge,
            "data": self.data,
            "tokens": self.tokens,
            "patched": [
                {
                    "block": list(f.block),
                    "run": [list(b) for b in f.run],
                    "form": f.form,
                    "recovered": round(f.recovered, 4),
                }
                for f in self.fits
            ],
            "unpatched": [[list(b) for b in run] for run in self.unpatched],
        }

    def text(self) -> str:
        lines = [f"patched {len(self.fits)} runs of pruned blocks ({self.settings.patch_map} map, "
                 f"{self.settings.patch_target} target, {self.tokens:,} calibration tokens):"]  # fmt: skip
        for fit in self.fits:
            run = ", ".join(_block_words(b) for b in fit.run)
            lines.append(
                f"  {_block_words(fit.block)} stands in for {run}: calibration error {fit.error_before:.4g} -> "
                f"{fit.error_after:.4g} ({fit.recovered:.0%} recovered)"
            )
        for run in self.unpatched:
            lines.append(f"  left unpatched (no kept block before it): {', '.join(_block_words(b) for b in run)}")
        return "\n".join(lines)


def _block_words(block: Block) -> str:
    return f"layer {block[0]} {'attention' if block[1] == 'attn' else 'MLP'}"


_EXPERT_DOWN = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.\d+\.down_proj\.weight$")


def _projection_names(tensors, block: Block) -> list[str]:
    layer, kind = block
    name = f"model.layers.{layer}.{'self_attn.o_proj' if kind == 'attn' else 'mlp.down_proj'}.weight"
    if name in tensors:
        return [name]
    experts = [n for n in tensors if (m := _EXPERT_DOWN.match(n)) and int(m.group(1)) == layer]
    if not experts:
        raise QpruneError(f"the checkpoint has no output projection for {_block_words(block)}")
    return experts


def pruned_runs(order: list[Block], pruned: set[Block], new: set[Block]) -> list[tuple[Block | None, tuple]]:
    """(the kept block before it, or None; the run) for every maximal run of consecutive `pruned` blocks
    in `order` that holds a block of `new` (runs the source had already are its own business)."""
    runs, current, before = [], [], None
    for block in [*order, None]:
        if block is not None and block in pruned:
            current.append(block)
            continue
        if current and any(b in new for b in current):
            runs.append((before, tuple(current)))
        current, before = [], block
    return runs


def fit_patches(model, batch, plan: Plan, settings: PatchSettings = PatchSettings(), progress=None) -> Patches:
    """Fit a correction for every run of `plan`'s blocks on `model` (the source: loaded, or a
    `StreamedModel`) and `batch` ([samples, seq_len] token ids); see the module docstring."""
    import torch

    from qprune.measure.ablation import removed_blocks
    from qprune.measure.engine import engine_of
    from qprune.measure.layerwise import layer_calls

    engine = engine_of(model)
    skeleton = engine.skeleton
    resident = contextlib.nullcontext if engine.whole else engine.streamed.resident
    layers = skeleton.model.layers
    source = removed_blocks(skeleton)
    check_patchable(plan)
    new = {(i, "attn") for i in plan.attn} | {(i, "mlp") for i in plan.mlp}
    if new & source:
        raise QpruneError(f"the source prunes {sorted(new & source)} already")
    order = [(i, kind) for i in range(len(layers)) for kind in ("attn", "mlp")]
    runs = pruned_runs(order, source | new, new)
    patch_at = {before: run for before, run in runs if before is not None}
    ends = {run[-1]: (before, run) for before, run in runs}
    patches = Patches(settings, unpatched=[run for before, run in runs if before is None], tokens=batch.numel())
    device = skeleton.get_input_embeddings().weight.device if engine.whole else engine.streamed.device
    flags = [(layer.prune_self_attn, layer.prune_mlp) for layer in layers]
    with resident(skeleton.model.embed_tokens), torch.inference_mode():
        embeds = [skeleton.model.embed_tokens(ids.to(device)) for ids in batch.split(_ROWS_AT_ONCE)]
        calls = [layer_calls(skeleton, e) for e in embeds]
    dense, pruned = [e.float() for e in embeds], [e.float() for e in embeds]
    pending = None
    try:
        for i in progress(range(len(layers)), "fitting patches, layers") if progress else range(len(layers)):
            layer = layers[i]
            with resident(layer), torch.inference_mode():
                for kind in ("attn", "mlp"):
                    block = (i, kind)
                    for k, per_layer in enumerate(calls):
                        args, kwargs = per_layer[i]
                        if block not in source:
                            dense[k] = _run(layer, kind, dense[k], args, kwargs)
                        if block in new:
                            if pending is not None and pending.local is not None:
                                pending.local[k] = _run(layer, kind, pending.local[k], args, kwargs)
                        elif block not in source:
                            before = pruned[k]
                            z = _capture_input(layer, kind) if block in patch_at else None
                            with z or contextlib.nullcontext():
                                pruned[k] = _run(layer, kind, before, args, kwargs)
                            if block in patch_at:
                                if k == 0:
                                    pending = _Pending(block, _form(layer, kind, settings), settings, len(calls))
                                pending.add(k, pruned[k] - before, z.value if z else None, pruned[k])
                    if block in ends and ends[block][0] is not None:
                        targets = dense if settings.patch_target == "dense" else pending.local
                        patches.fits.append(pending.solve(ends[block][1], targets, pruned))
                        pending = None
    finally:
        for layer, (attn, mlp) in zip(layers, flags, strict=True):
            layer.prune_self_attn, layer.prune_mlp = attn, mlp
    return patches


def _run(layer, kind: str, hidden, args, kwargs):
    """The stream after `layer`'s `kind` block alone, as the layer computes it inside the forward."""
    layer.prune_self_attn, layer.prune_mlp = kind != "attn", kind != "mlp"
    return layer(hidden.to(_dtype(layer)), *args, **kwargs).float()


def _dtype(layer):
    return next(p.dtype for p in layer.parameters() if p is not None)


def _form(layer, kind: str, settings: PatchSettings) -> str:
    if settings.patch_map == "full" and kind == "mlp" and not hasattr(layer.mlp, "down_proj"):
        return "output"  # a MoE block: a map of z does not fold into its experts (see the module docstring)
    return settings.patch_map


class _capture_input:
    """Holds the input of a block's output projection while the block runs (tokens x in, float32)."""

    def __init__(self, layer, kind: str) -> None:
        self.module = layer.self_attn.o_proj if kind == "attn" else getattr(layer.mlp, "down_proj", None)
        self.value = None

    def __enter__(self):
        if self.module is not None:
            self.handle = self.module.register_forward_pre_hook(self._record)
        return self

    def _record(self, module, args) -> None:
        self.value = args[0].float()

    def __exit__(self, *exc) -> None:
        if self.module is not None:
            self.handle.remove()


class _Pending:
    """The patch block's outputs (and projection inputs) per micro-batch, until its run ends."""

    def __init__(self, block: Block, form: str, settings: PatchSettings, count: int) -> None:
        self.block, self.form, self.settings = block, form, settings
        self.outputs: list = [None] * count
        self.inputs: list = [None] * count
        self.local = [None] * count if settings.patch_target == "local" else None

    def add(self, k: int, output, projection_input, stream) -> None:
        self.outputs[k] = output
        self.inputs[k] = projection_input if self.form == "full" else None
        if self.local is not None:
            self.local[k] = stream.clone()

    def solve(self, run: tuple, targets: list, pruned: list) -> Fit:
        """Fit the correction on every micro-batch, move the pruned stream by it, and say how far it got."""
        import torch

        features = self.inputs if self.form == "full" else self.outputs
        width = features[0].shape[-1]
        gram = torch.zeros(width, width, dtype=torch.float64) if self.form != "diagonal" else None
        cross = None
        power = torch.zeros(width, dtype=torch.float64)
        before = 0.0
        for k, x in enumerate(features):
            x = x.reshape(-1, width).double()
            r = (targets[k] - pruned[k]).reshape(x.shape[0], -1).double()
            before += r.pow(2).sum().item()
            if self.form == "diagonal":
                cross = (r * x).sum(0) if cross is None else cross + (r * x).sum(0)
                power += x.pow(2).sum(0)
            else:
                gram += x.T @ x
                cross = r.T @ x if cross is None else cross + r.T @ x
        tokens = sum(x.numel() // width for x in features)
        if self.form == "full" and tokens < TOKENS_PER_FEATURE * width:
            warn(
                f"{_block_words(self.block)}: a full map of {width} features fitted on {tokens:,} tokens may fit the "
                f"calibration text rather than the model; give at least {TOKENS_PER_FEATURE * width:,} tokens "
                "({samples} x {seq_len}) or {patch_map} output"
            )
        if self.form == "diagonal":
            matrix = cross / (power + self.settings.patch_ridge * power.mean())
        else:
            ridge = self.settings.patch_ridge * gram.diagonal().mean()
            system = gram + ridge * torch.eye(width, dtype=torch.float64)
            matrix = torch.linalg.solve(system, cross.T).T  # cross (system)^-1; the system is symmetric
        after = 0.0
        for k, x in enumerate(features):
            x = x.double()
            correction = x * matrix if self.form == "diagonal" else x @ matrix.T
            pruned[k] = pruned[k] + correction.to(pruned[k].dtype)
            after += (targets[k].double() - pruned[k].double()).pow(2).sum().item()
        return Fit(self.block, run, self.form, matrix.float(), before / tokens, after / tokens)
