"""`--max-memory`: peak memory, wall time and results of scan and `prune --auto`, layer by layer against
in memory, measured side by side in one run (each command a subprocess; peak = its maximum resident set).

    python benchmarks/max_memory.py                      # Qwen3-0.6B shape, bf16, 600MB (about 25 minutes here)
    python benchmarks/max_memory.py --shape qwen3-8b --only-limited --max-memory none --dtype auto \
        --samples 4 --seq-len 128                         # a 16 GB checkpoint on a 24 GB machine

A random checkpoint of the shape is written first (bf16, as released; into --work, reused when there),
with the tokenizer of the model qprune ships. Each command runs with --json / writes its report, and the
scores (every block's four measures) and the chosen plans are compared for equality.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {  # the released config.json fields that matter
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, tie_word_embeddings=False),
}  # fmt: skip


def write_checkpoint(path: Path, shape: str) -> None:
    """A random bf16 checkpoint, written tensor by tensor (an 8B never exists in memory whole)."""
    import torch
    from safetensors.torch import save_file

    from qprune.arch import family_of
    from qprune.shipped import EMBEDDED_MODEL

    config = {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "vocab_size": 151936,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rope_theta": 1000000,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
        **SHAPES[shape],
    }
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    shard, shard_bytes, weight_map, index = {}, 0, {}, 0

    def flush():
        nonlocal shard, shard_bytes, index
        index += 1
        name = f"model-{index:05d}.safetensors"
        save_file(shard, tmp / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard, shard_bytes = {}, 0

    for name, dims in family_of(config).expected_tensors(config).items():
        if name == "lm_head.weight" and config["tie_word_embeddings"]:
            continue
        if name.endswith("norm.weight"):
            tensor = torch.ones(dims, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(dims, generator=generator) * 0.02).to(torch.bfloat16)
        shard[name] = tensor
        shard_bytes += tensor.numel() * 2
        if shard_bytes > 2 * 10**9:
            flush()
    if shard:
        flush()
    total = sum((tmp / f).stat().st_size for f in set(weight_map.values()))
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))  # fmt: skip
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(EMBEDDED_MODEL / name, tmp / name)
    tmp.rename(path)


def measured(args: list[str]) -> dict:
    """Run `qprune ARGS` in a subprocess: its wall time, its peak resident memory (its own rusage,
    ru_maxrss) and its output."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "qprune.cli", *args], stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0), stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    if process.returncode != 0:
        raise SystemExit(f"qprune {' '.join(args)} failed:\n{err}")
    return {"wall_s": wall, "peak_bytes": usage.ru_maxrss * 1024, "stdout": out, "stderr": err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--max-memory", default="600MB", help="the limit; 'none': the default (what is available)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=2, help="prune --auto --blocks N (0: no search)")
    parser.add_argument("--only-limited", action="store_true", help="skip the in-memory runs")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "qprune-max-memory")
    parser.add_argument("--out", type=Path, help="append the figures to this JSON-lines file")
    options = parser.parse_args()

    model = options.work / options.shape
    if not model.exists():
        print(f"writing a random {options.shape} checkpoint to {model}", flush=True)
        write_checkpoint(model, options.shape)
    data = ["--samples", str(options.samples), "--seq-len", str(options.seq_len), "--dtype", options.dtype]
    limit = [] if options.max_memory == "none" else ["--max-memory", options.max_memory]
    variants = [("layer by layer", limit)] + ([] if options.only_limited else [("in memory", [])])
    rows, scans, plans = [], {}, {}
    for label, extra in variants:
        scan = measured(["scan", str(model), "--json", *data, *extra])
        scans[label] = json.loads(scan["stdout"])
        row = {"engine": label, "scan_s": round(scan["wall_s"], 1), "scan_peak_bytes": scan["peak_bytes"]}
        notes = [line for line in scan["stderr"].splitlines() if "memory" in line]
        if options.blocks:
            out = options.work / f"pruned-{label.replace(' ', '-')}"
            search = measured(["prune", str(model), str(out), "--auto", "--blocks", str(options.blocks), *data,
                               *extra, "--force"])  # fmt: skip
            plans[label] = json.loads((out / "qprune_search.json").read_text())["plan"]
            row |= {"auto_s": round(search["wall_s"], 1), "auto_peak_bytes": search["peak_bytes"]}
            shutil.rmtree(out)
        rows.append(row)
        print(json.dumps(row), *notes, sep="\n", flush=True)

    print(f"\n{options.shape}, {options.dtype}, {options.samples} x {options.seq_len} tokens, "
          f"--max-memory {options.max_memory}")  # fmt: skip
    for row in rows:
        shown = " / ".join(f"{row[k] / 1e9:.2f} GB" for k in ("scan_peak_bytes", "auto_peak_bytes") if k in row)
        auto = f"   auto {row['auto_s']:>8.1f} s" if "auto_s" in row else ""
        print(f"  {row['engine']:<15} scan {row['scan_s']:>8.1f} s{auto}   peak {shown}")
    if len(rows) == 2:
        same_scores = scans["layer by layer"]["blocks"] == scans["in memory"]["blocks"]
        print(f"  scores equal: {same_scores}; plans equal: {plans.get('layer by layer') == plans.get('in memory')}")
        print(f"  time ratio (layer by layer / in memory): scan {rows[0]['scan_s'] / rows[1]['scan_s']:.2f}"
              + (f", auto {rows[0]['auto_s'] / rows[1]['auto_s']:.2f}" if options.blocks else ""))  # fmt: skip
    if options.out:
        with options.out.open("a") as f:
            for row in rows:
                f.write(
                    json.dumps(
                        {
                            "shape": options.shape,
                            "dtype": options.dtype,
                            "samples": options.samples,
                            "seq_len": options.seq_len,
                            "max_memory": options.max_memory,
                            **row,
                        }
                    )
                    + "\n"
                )


if __name__ == "__main__":
    main()
