#!/usr/bin/env bash
# Every stage of gpu_figures.py on a lent GPU, each under its own time limit (about 9 minutes in all);
# figures to $OUT/figures.jsonl, the log to $OUT/log.txt. Then the quantization tests on CUDA
# (torchao-int4, bitsandbytes), with wheels carried in .whl/ when the machine lacks them.
set -u
OUT=${OUT:-gpu-figures}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
log="$OUT/log.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl >>"$log" 2>&1
    export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi >>"$log" 2>&1
stage() {
    local limit=$1 name=$2
    echo "== $name (limit ${limit}s) $(date +%T)" >>"$log"
    timeout "$limit" python3 benchmarks/gpu_figures.py "$name" --out "$OUT/figures.jsonl" >>"$log" 2>&1 \
        || echo "== $name FAILED or timed out (exit $?)" >>"$log"
}
stage 40 env
stage 60 bench-0.6b
stage 100 bench-8b
stage 110 bench-30b-a3b
stage 90 scan-search
stage 75 heal
echo "== quantization tests on CUDA $(date +%T)" >>"$log"
timeout 80 python3 -m pytest -q -p no:cacheprovider tests/test_quantize.py tests/test_moe.py \
    -k "int4_on_cuda or verify_with_quantization or quantized_logits or quantized_moe" >>"$log" 2>&1
echo "== done $(date +%T)" >>"$log"
