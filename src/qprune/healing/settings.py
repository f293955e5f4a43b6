"""What `qprune heal` is asked to do: `HealSettings`, checked by `validate`, and the default learning rate.

settings = HealSettings(tokens=500_000, lora=16)
settings.validate()
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qprune.errors import QpruneError
from qprune.setting import setting

LOSSES = ("kd", "lm", "mix")
SMALL_MODEL = 100_000_000  # parameters; small models take a larger default learning rate


@dataclass(frozen=True)
class HealSettings:
    tokens: int = setting(500_000, "Training budget in tokens (summed over processes).", metavar="N")
    seq_len: int = setting(256, "Tokens per training sequence.", metavar="N")
    # Sequences per optimizer step and process (before accumulation).
    batch_size: int = setting(8, "Sequences per step (per process).", metavar="N")
    grad_accum: int = setting(1, "Gradient accumulation steps.", metavar="N")
    # None: 1e-3 below SMALL_MODEL parameters, 1e-4 above (see `learning_rate`).
    lr: float | None = setting(
        None,
        "Peak learning rate, warm-up then cosine decay (default: 1e-3 below 100M parameters, else 1e-4).",
        metavar="RATE",
    )
    warmup: float = 0.05  # share of the steps (no flag)
    loss: str = setting("kd", "kd (distillation), lm (next token) or mix (kd + --lm-weight x lm).", metavar="kd|lm|mix")
    # "mix": loss = KD + lm_weight * LM; must be > 0 (0 would be "kd").
    lm_weight: float = setting(0.5, "--loss mix: weight of the LM loss.", metavar="WEIGHT")
    # None trains the weights themselves.
    lora: int | None = setting(None, "Train LoRA adapters of this rank, merged at the end.", metavar="RANK")
    last_layers: int | None = setting(None, "Train only the last K layers, the final norm and lm_head.", metavar="K")
    seed: int = setting(0, "Seed for the data order and the LoRA initialisation.")
    # None: the whole vocabulary.
    top_k: int | None = setting(None, "--teacher-cache: log-probs kept per token (default: all).", metavar="K")
    eval_tokens: int = setting(40_000, "Held-out tokens scored before and after.", metavar="N")
    gradient_checkpointing: bool = setting(False, "Trade compute for memory.")

    def validate(self) -> None:
        """Every setting on its own (what needs the model, like `last_layers` against its depth, is
        checked by `heal` as soon as it has read the config). Messages name the parameter in braces."""
        for name in ("tokens", "seq_len", "batch_size", "grad_accum", "eval_tokens"):
            if getattr(self, name) < 1:
                raise QpruneError(f"{{{name}}} must be positive, not {getattr(self, name)}")
        if self.seq_len < 2:
            raise QpruneError(f"{{seq_len}} must be at least 2 (a next token to predict), not {self.seq_len}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise QpruneError(f"{{lr}} must be positive and finite, not {self.lr}")
        if not (math.isfinite(self.warmup) and 0 <= self.warmup < 1):
            raise QpruneError(f"{{warmup}} must be a share of the steps in [0, 1), not {self.warmup}")
        if self.loss not in LOSSES:
            raise QpruneError(f"{{loss}} {self.loss!r}: choose {', '.join(LOSSES)}")
        if not (math.isfinite(self.lm_weight) and self.lm_weight > 0):
            raise QpruneError(
                f"{{lm_weight}} must be positive and finite, not {self.lm_weight} (for distillation alone, use kd)"
            )
        for name in ("lora", "last_layers", "top_k"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise QpruneError(f"{{{name}}} must be positive, not {getattr(self, name)}")
        if self.lora is not None and self.last_layers is not None:
            raise QpruneError("give {lora} or {last_layers}, not both")

    def check_layers(self, num_layers: int) -> None:
        """`last_layers` against the model's depth: called right after reading its config."""
        if self.last_layers is not None and self.last_layers > num_layers:
            raise QpruneError(f"{{last_layers}} {self.last_layers}: the model has only {num_layers} layers")

    def sequences_per_step(self, world: int = 1) -> int:
        """Training sequences one optimizer step consumes, over all `world` processes."""
        return self.batch_size * self.grad_accum * world

    def steps(self, world: int = 1) -> int:
        """Optimizer steps the budget buys: `tokens` rounded down to whole steps, and at least one."""
        return max(1, self.tokens // (self.sequences_per_step(world) * self.seq_len))


def learning_rate(settings: HealSettings, parameters: int) -> float:
    """The peak learning rate: as given, else 1e-3 for small models (measured on the embedded model:
    85% of the gap recovered with 500k tokens, against 78% at 2e-4) and 1e-4 for larger ones, the usual
    scale for fine-tuning LLMs of 0.5B parameters and up."""
    if settings.lr is not None:
        return settings.lr
    return 1e-3 if parameters < SMALL_MODEL else 1e-4
