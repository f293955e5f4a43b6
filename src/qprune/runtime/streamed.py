"""A model whose weights stay on disk until a module needs them: for measuring models larger than memory.

    streamed = StreamedModel.open("Qwen/Qwen3-8B", dtype=torch.float32, max_memory=16 * 10**9)
    layer = streamed.skeleton.model.layers[3]       # qprune's class, built on the meta device
    with streamed.resident(layer):                  # its weights read from the safetensors, then dropped
        hidden = layer(hidden, **kwargs)

The skeleton is the family's pruned class built without weights (every parameter on the meta device;
the rotary embedding's buffers are computed, as they are never stored). `resident(module)` fills one
module's parameters from the checkpoint's safetensors (read straight into the parameters, converted to
the dtype exactly as `from_pretrained` converts them) and puts them back on the meta device on
leaving, so at most the modules inside `resident` blocks hold memory. Tensor names go through the
family's `checkpoint_state`, so transformers 5.x's fused expert parameters are filled from the
per-expert tensors on disk.

The layer-by-layer measurement engine (`measure/layerwise.py`) runs on it; `qprune.load` is for
everything else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from qprune.arch import family_of
from qprune.errors import QpruneError
from qprune.io.safetensors import TORCH_DTYPES
from qprune.io.source import Checkpoint, open_checkpoint

if TYPE_CHECKING:
    import torch
    from torch import nn


class StreamedModel:
    """A checkpoint's skeleton model and the means to fill one module at a time; see the module docstring."""

    def __init__(
        self, checkpoint: Checkpoint, dtype: torch.dtype, max_memory: int | None = None, device: str = "cpu"
    ) -> None:
        import torch

        from qprune.runtime.load import load_config, register

        register()
        self.checkpoint, self.dtype, self.device = checkpoint, dtype, torch.device(device)
        self.max_memory = max_memory  # what measurements on it may hold (None: no limit)
        self.family = family_of(checkpoint.config)
        config = load_config(checkpoint)
        _, model_class = self.family.pruned_classes()
        with torch.device("meta"):
            # _from_config chooses the attention implementation as from_pretrained does.
            model = model_class._from_config(config, dtype=dtype)
        rotary = model.model.rotary_emb
        with self.device:
            model.model.rotary_emb = type(rotary)(config=model.config)
        self.skeleton = model.eval()
        self.config = model.config
        self._names = {module: name for name, module in model.named_modules()}
        self._tied = self.family.config_field(checkpoint.config, "tie_word_embeddings")
        head = model.lm_head.weight
        untied_copy = self._tied and head is not model.model.embed_tokens.weight  # the skeleton may not tie
        # What the model's parameters take once loaded (tied embeddings counted once).
        self.parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) - (
            head.numel() * head.element_size() if untied_copy else 0
        )

    @classmethod
    def open(
        cls, source: str | Path | Checkpoint, dtype: torch.dtype, max_memory: int | None = None, device: str = "cpu"
    ) -> StreamedModel:
        """Check `source` (a directory, hub id or opened Checkpoint) as `qprune.load` does, and build its skeleton."""
        return cls(open_checkpoint(source), dtype, max_memory, device)

    @contextmanager
    def resident(self, *modules: nn.Module) -> Iterator[None]:
        """Fill the modules' parameters from the checkpoint for the duration of the block."""
        try:
            for module in modules:
                self._fill(module)
            yield
        finally:
            for module in modules:
                self._empty(module)

    def _fill(self, module: nn.Module) -> None:
        import torch

        prefix = self._names[module]
        for name, meta in list(module.named_parameters()):
            full_name = f"{prefix}.{name}" if prefix else name
            value = torch.empty(meta.shape, dtype=meta.dtype, device=self.device)
            # The checkpoint's names and the views of `value` they fill (one to one, or per expert).
            for stored, view in self.family.checkpoint_state({full_name: value}).items():
                self._read_into(stored, view)
            _set_parameter(module, name, value)

    def _empty(self, module: nn.Module) -> None:
        import torch

        for name, value in list(module.named_parameters()):
            _set_parameter(module, name, torch.empty_like(value, device="meta"))

    def _read_into(self, name: str, out: torch.Tensor) -> None:
        """Read a stored tensor's bytes straight into `out` when the dtypes agree, else through a
        temporary of at most `_CONVERT_BYTES`, converted as `from_pretrained` converts. Plain reads,
        not a memory map: mapped pages would count toward the process's resident memory for as long
        as the file stays mapped."""
        import torch

        if name not in self.checkpoint.tensors and name == "lm_head.weight" and self._tied:
            name = "model.embed_tokens.weight"
        entry = self.checkpoint.tensors[name]
        stored = getattr(torch, TORCH_DTYPES[entry.dtype])
        with open(entry.file, "rb", buffering=0) as file:
            file.seek(entry.start)
            if out.is_contiguous() and out.dtype == stored and out.device.type == "cpu":
                _read_exactly(file, out.view(-1), name)
                return
            flat = out.view(-1) if out.is_contiguous() else None
            if flat is None:  # a strided view (one expert of a fused parameter): one temporary
                out.copy_(_read_exactly(file, torch.empty(entry.shape, dtype=stored).view(-1), name).view(out.shape))
                return
            step = max(1, _CONVERT_BYTES // stored.itemsize)
            for start in range(0, flat.numel(), step):
                piece = torch.empty(min(step, flat.numel() - start), dtype=stored)
                flat[start : start + piece.numel()].copy_(_read_exactly(file, piece, name))


# A dtype conversion reads this much at a time: a float32 head never needs its bf16 copy whole.
_CONVERT_BYTES = 64 * 2**20


def _read_exactly(file, target: torch.Tensor, name: str) -> torch.Tensor:
    """Fill the 1-D tensor `target` from the file's current position; returns it."""
    import torch

    buffer = memoryview(target.view(torch.uint8).numpy())
    done = 0
    while done < len(buffer):
        count = file.readinto(buffer[done:])
        if not count:
            raise QpruneError(f"{file.name} ends inside tensor {name} (damaged checkpoint)")
        done += count
    return target


def _set_parameter(module: nn.Module, name: str, value: torch.Tensor) -> None:
    from torch import nn

    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
