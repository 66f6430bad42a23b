#!/usr/bin/env bash
# Everything a session with a GPU should run, as one command (device time is short: about 15 minutes a session).
#   bash scripts/gpu_check.sh                         # every stage, in order (about 20 minutes at most)
#   bash scripts/gpu_check.sh build gpu-tests         # only the named stages (split across device calls;
#                                                     # a warm machine keeps the build between calls)
# Builds the package (C++/CUDA extensions), records the machine, then, most valuable first and each under its own
# time limit: the tests marked gpu (the CUDA InfoNCE op, the CUDA-graph replay of the search steps against eager
# steps, the CUDA MixedOp kernel), the InfoNCE benchmark, the Triton kernel benchmarks (per op and whole steps), the
# saved-activation comparison, seconds per search epoch with the fraction of the GPU floor, and the Triton
# kernel tests on CUDA (`python benchmarks/bench_compile.py --device cuda` is left out: its cold compile takes
# longer than a device call). Results land in benchmarks/results/ and,
# when $OUT is set (the device tool), are copied there after every stage, so a timeout loses nothing measured.
set -uo pipefail
cd "$(dirname "$0")/.."
results=benchmarks/results
log="$results/gpu_check.log"
mkdir -p "$results"
: > "$log"

save() {
    if [ -n "${OUT:-}" ]; then
        cp "$results"/*cuda* "$log" "$OUT"/ 2>/dev/null || true
    fi
}

wanted=" $* "

stage() {  # stage SECONDS NAME COMMAND...: runs unless stages were named and this is not one of them
    local limit="$1" name="$2"
    shift 2
    if [ "$wanted" != "  " ] && [[ "$wanted" != *" $name "* ]]; then
        return
    fi
    echo "== $name (limit ${limit}s) $(date -u +%H:%M:%S)" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tail -n 40 | tee -a "$log"
    echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$log"
    save
}

stage 240 build python -m pip install -q --no-build-isolation --no-deps -e .
stage 30 machine python -c "import torch, triton; print(torch.cuda.get_device_name(0), 'torch', torch.__version__,
    'triton', triton.__version__, 'cuda', torch.version.cuda)"
stage 240 gpu-tests python -m pytest -q -m gpu -rs
stage 150 info-nce-bench python benchmarks/bench_info_nce.py --device cuda
stage 240 kernel-bench-steps python -m pytest -q benchmarks/test_bench_kernels.py -k search_step \
    --benchmark-only --benchmark-json="$results/kernels_steps_cuda.json" --benchmark-columns=mean,stddev,rounds
stage 120 saved-activations python benchmarks/bench_saved_activations.py --device cuda
stage 240 epoch python benchmarks/bench_epoch.py --device cuda --rounds 3
stage 300 kernel-tests python -m pytest -q -x tests/kernels tests/search/executors/test_dispatch.py -m "not slow"
