#!/bin/bash
# tools/gpu_check.sh: the checks that need an NVIDIA GPU, as one prepared script (at most 9 minutes).
#
#   bash tools/gpu_check.sh              # on the GPU machine, from the repository root
#   bash tools/gpu_check.sh --dry-run    # anywhere: the steps, their time limits and commands; runs nothing
#   bash tools/gpu_check.sh --pack       # as the first, then bench/ is packed into bench.tar.gz
#
# Steps, each under its own time limit (a step that fails or runs out of time is recorded and the
# script goes on; the exit status is 1 if any step did not pass):
#   1. install   megatron-core from the wheels in $WHEELS (where it is not installed already), then
#                `pip install --no-deps -e .`; versions (torch, CUDA, device) -> $OUT/versions.txt
#   2. tests     the CUDA-relevant tests that exist -> $OUT/tests.txt
#   3. tiny      the tiny recipes' models on the GPU, world size 1, mock data -> $OUT/tiny.txt
#   4. bench     each examples/bench/ recipe with three kernel paths (MOETRAIN_KERNELS), then
#                tools/benchmark.py -> $OUT/bench/<recipe>_<path>/ (report.{json,md,png}, run.log)
#   5. summary   $OUT/summary.md: every step's result and a table of tokens/s/p, TFLOPS and MFU
#
# Environment: OUT (results, default ./gpu_check_out), WHEELS (default .whl), PYTHON (default python3),
# BENCH_ITERS (6), BENCH_WARMUP (2), GPU_CHECK_BUDGET_S (540: the whole script's limit),
# GPU_CHECK_WORK (scratch for the tiny runs, default /tmp/moetrain_gpu_check).
set -uo pipefail

DRY_RUN=0
PACK=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        --pack) PACK=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: error: unknown argument $arg (expected --dry-run, --pack or --help)" >&2; exit 2 ;;
    esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
OUT=${OUT:-./gpu_check_out}
WHEELS=${WHEELS:-.whl}
PY=${PYTHON:-python3}
BENCH_ITERS=${BENCH_ITERS:-6}
BENCH_WARMUP=${BENCH_WARMUP:-2}
TOTAL_S=${GPU_CHECK_BUDGET_S:-540}
WORK=${GPU_CHECK_WORK:-/tmp/moetrain_gpu_check}
SITE=$WORK/site  # megatron-core from the wheels goes here (pip --target), ahead on PYTHONPATH
RESERVE_S=15     # kept back at every step for the summary

# Time limits per step (seconds): install 1 min, tests 1.5 min, tiny 1 min, 6 benchmark runs and their
# reports 5 min. A benchmark run gets at least BENCH_RUN_S, more when the steps before it left time over.
INSTALL_S=60
TESTS_S=90
TINY_S=60
BENCH_RUN_S=45
REPORTS_S=30

# What the steps use (the dry run prints these; tests/test_gpu_check.py checks them).
OPTIONAL_TESTS=(tests/test_cuda_kernels.py)
TESTS=(tests/test_device_wiring.py tests/test_kernels.py tests/test_attention_flex.py)
TINY_FLAVORS=(grok1-tiny llama-tiny mixtral-tiny)
RECIPES=(examples/bench/pretrain_grok1_moe_1gpu_mock.sh examples/bench/pretrain_llama_1b_mock.sh)
KERNEL_PATHS=(default flex prechange)
declare -A KERNELS=(
    [default]=""  # the CUDA backend's own table
    [flex]="grouped_gemm=torch-grouped-mm,softcap_attention=flex"
    [prechange]="grouped_gemm=torch-loop,softcap_attention=torch-reference"
)

GPU_CHECK_KERNEL_PATHS=$(for p in "${KERNEL_PATHS[@]}"; do echo "$p ${KERNELS[$p]}"; done)
unset MOETRAIN_KERNELS  # each benchmark path sets its own
export PYTHON=$PY PYTHONUNBUFFERED=1 REPO WHEELS SITE BENCH_ITERS BENCH_WARMUP GPU_CHECK_KERNEL_PATHS
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"

START=$(date +%s)
FAILED=0
STEPS=()  # "name<TAB>result<TAB>seconds<TAB>log"

# x CMD...: run it, or print it in a dry run.
x() {
    if [[ $DRY_RUN == 1 ]]; then
        printf '      $'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}
export DRY_RUN
export -f x

limit_for() {  # the step's limit, cut to what is left of the whole script's
    local want=$1 left
    left=$(( START + TOTAL_S - RESERVE_S - $(date +%s) ))
    (( left < want )) && want=$left
    echo "$want"
}

# run_step NAME WANT_S LOG FUNCTION ARGS...: FUNCTION under `timeout`, output appended to LOG.
run_step() {
    local name=$1 want=$2 log=$3 limit rc t0 result
    shift 3
    if [[ $DRY_RUN == 1 ]]; then
        echo "step $name: limit ${want}s, output -> $log"
        "$@"
        return 0
    fi
    limit=$(limit_for "$want")
    t0=$(date +%s)
    if (( limit < 5 )); then
        result="skipped: no time left"
        rc=1
    else
        echo "== $name (limit ${limit}s)" | tee -a "$log"
        timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" >>"$log" 2>&1
        rc=$?
        case $rc in
            0) result=ok ;;
            124|137) result="timeout after ${limit}s" ;;
            *) result="failed (exit $rc)" ;;
        esac
    fi
    (( rc != 0 )) && FAILED=1
    STEPS+=("$name"$'\t'"$result"$'\t'"$(( $(date +%s) - t0 ))"$'\t'"$log")
    echo "   $name: $result"
    return "$rc"
}

# ---------------------------------------------------------------------------------------------- steps
do_install() {
    if [[ $DRY_RUN != 1 ]] && "$PYTHON" -c "import megatron.core as m, sys; sys.exit(m.__version__ != '0.16.1')" 2>/dev/null; then
        echo "megatron-core 0.16.1 is installed already"
    elif compgen -G "$WHEELS/*.whl" >/dev/null || [[ $DRY_RUN == 1 ]]; then
        x "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl || return 1
    else
        echo "megatron-core 0.16.1 is not installed and $WHEELS holds no wheels (see docs/benchmarking.md)"
        return 1
    fi
    # No index and no build isolation: the machine has no network; setuptools is the installed one.
    x "$PYTHON" -m pip install -q --no-deps --no-index --no-build-isolation -e . ||
        echo "pip install -e . failed: moetrain is imported from $REPO through PYTHONPATH instead"
    [[ $DRY_RUN == 1 ]] && echo "      (then, in python: python, torch, CUDA, megatron-core, device name, default kernel table, nvidia-smi)"
    x "$PYTHON" - <<'EOF'
import os
import platform
import shutil
import subprocess
import warnings

warnings.filterwarnings("ignore", category=UserWarning)  # megatron-core: Apex / Transformer Engine absent
import megatron.core
import torch

import moetrain
from moetrain.device import get_backend, setup_device
from moetrain.kernels.table import apply_overrides, get_kernels

print("python", platform.python_version(), platform.machine())
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version())
print("megatron-core", megatron.core.__version__, "| moetrain", moetrain.__file__)
backend = get_backend("cuda")  # an error here: no CUDA device visible to torch
print("device", backend.device_name())
setup_device("cuda")
print("kernels default:", get_kernels().describe())
for line in os.environ["GPU_CHECK_KERNEL_PATHS"].splitlines():  # each path's table, or why it has none
    path, _, spec = line.partition(" ")
    if spec:
        try:
            table = apply_overrides(backend.kernel_table(), spec, backend.kernel_variants())
            print(f"kernels {path}:", table.describe())
        except ValueError as e:
            print(f"kernels {path}: ERROR {e}")
if shutil.which("nvidia-smi"):
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"],
                         capture_output=True, text=True).stdout.strip())
EOF
}

do_tests() {
    local files=() f
    for f in "${OPTIONAL_TESTS[@]}" "${TESTS[@]}"; do
        if [[ -f $f || $DRY_RUN == 1 ]]; then files+=("$f"); else echo "$f is absent: not run"; fi
    done
    x "$PYTHON" -m pytest -q -p no:cacheprovider "${files[@]}"
}

do_tiny() {
    local flavor port=29610 rc=0
    for flavor in "${TINY_FLAVORS[@]}"; do
        port=$((port + 1))
        x rm -rf "$WORK/tiny_$flavor"
        # The tiny recipes' batch and learning-rate settings, at world size 1 (they are written for
        # 4-8 CPU ranks, with a TP / PP / EP layout and a corpus this machine does not have).
        x env MOETRAIN_DEVICE=cuda "$PYTHON" -m torch.distributed.run --nproc-per-node 1 --master-port "$port" \
            -m moetrain.pretrain --model "$flavor" --mock-data --micro-batch-size 2 --global-batch-size 16 \
            --seq-length 64 --train-iters 10 --lr 3e-3 --min-lr 3e-4 --lr-warmup-iters 2 --log-interval 1 \
            --eval-iters 0 --log-dir "$WORK/tiny_$flavor" --no-tensorboard || rc=1
    done
    return $rc
}

do_bench() {  # do_bench RECIPE LOG_DIR PORT SPEC
    local recipe=$1 dir=$2 port=$3 spec=$4
    if [[ -n $spec ]]; then
        x env MOETRAIN_DEVICE=cuda MOETRAIN_KERNELS="$spec" LOG_DIR="$dir" MASTER_PORT="$port" \
            bash "$recipe" --train-iters "$BENCH_ITERS"
    else
        x env -u MOETRAIN_KERNELS MOETRAIN_DEVICE=cuda LOG_DIR="$dir" MASTER_PORT="$port" \
            bash "$recipe" --train-iters "$BENCH_ITERS"
    fi
}

do_reports() {  # do_reports LOG_DIR...: tools/benchmark.py on each run that logged iterations
    local dir rc=0
    for dir in "$@"; do
        if [[ $DRY_RUN == 1 || -s $dir/metrics.jsonl ]]; then
            x "$PYTHON" tools/benchmark.py --log-dir "$dir" --warmup "$BENCH_WARMUP" || rc=1
        else
            echo "$dir: no iterations logged, no report"
            rc=1
        fi
    done
    return $rc
}

export OPTIONAL_TESTS_LIST="${OPTIONAL_TESTS[*]}" TESTS_LIST="${TESTS[*]}" TINY_LIST="${TINY_FLAVORS[*]}" WORK
export -f do_install do_tests do_tiny do_bench do_reports
# Arrays do not cross `bash -c`: the functions rebuild them from the lists.
LISTS_INIT='read -ra OPTIONAL_TESTS <<<"$OPTIONAL_TESTS_LIST"; read -ra TESTS <<<"$TESTS_LIST"; read -ra TINY_FLAVORS <<<"$TINY_LIST"'
export LISTS_INIT
with_lists() { eval "$LISTS_INIT"; "$@"; }
export -f with_lists

summary() {
    local steps_file=$1
    "$PY" - "$OUT" "$steps_file" "$BENCH_WARMUP" "$BENCH_ITERS" <<'EOF'
import json
import sys
from pathlib import Path

out, steps_file, warmup, iters = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
steps = [line.split("\t") for line in steps_file.read_text().splitlines() if line.strip()]
lines = ["# GPU check", "", "| step | result | seconds | output |", "|---|---|---|---|"]
lines += [f"| {name} | {result} | {secs} | {log} |" for name, result, secs, log in steps]
results = {name: result for name, result, _, _ in steps}
lines += ["", f"## Throughput ({iters} iterations, the first {warmup} excluded)", "",
          "| recipe | path | MOETRAIN_KERNELS | result | tokens/s/p | s/step | TFLOPS/device | MFU | peak mem |",
          "|---|---|---|---|---|---|---|---|---|"]
device = None
for spec_line in (out / "bench" / "runs.tsv").read_text().splitlines() if (out / "bench" / "runs.tsv").exists() else []:
    name, recipe, path, spec = spec_line.split("\t")
    report = out / "bench" / name / "report.json"
    cells = ["n/a"] * 5
    if report.exists():
        r = json.loads(report.read_text())
        device = device or r["device"]
        mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
        tflops = "n/a" if r["tflops_per_device"] is None else f"{r['tflops_per_device']:.1f}"
        mem = "n/a" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.1f} GB"
        cells = [f"{r['tokens_per_sec_per_device']:.0f}", f"{r['step_seconds']:.3f}", tflops, mfu, mem]
    result = results.get(f"bench {name}", "not run")
    lines.append(f"| {recipe} | {path} | {spec or '(backend default)'} | {result} | " + " | ".join(cells) + " |")
if device:
    lines += ["", f"Device: {device}. MFU is over the dense bf16 peak of moetrain/device/peak_flops.py."]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
}

# ---------------------------------------------------------------------------------------------- run
if [[ $DRY_RUN == 1 ]]; then
    echo "gpu_check.sh --dry-run: nothing is run. OUT=$OUT WHEELS=$WHEELS PYTHON=$PY"
    for f in "${OPTIONAL_TESTS[@]}"; do echo "test $f (optional)"; done
    for f in "${TESTS[@]}"; do echo "test $f"; done
    for f in "${RECIPES[@]}"; do echo "recipe $f"; done
    for p in "${KERNEL_PATHS[@]}"; do echo "kernels $p ${KERNELS[$p]:--}"; done
    for f in "${TINY_FLAVORS[@]}"; do echo "tiny $f"; done
    runs=$(( ${#RECIPES[@]} * ${#KERNEL_PATHS[@]} ))
    echo "budget $(( INSTALL_S + TESTS_S + TINY_S + runs * BENCH_RUN_S + REPORTS_S + RESERVE_S )) of $TOTAL_S s" \
         "(install $INSTALL_S, tests $TESTS_S, tiny $TINY_S, $runs x bench $BENCH_RUN_S, reports $REPORTS_S," \
         "summary $RESERVE_S)"
else
    mkdir -p "$OUT" "$WORK" || exit 2
    rm -rf "$OUT/versions.txt" "$OUT/tests.txt" "$OUT/tiny.txt" "$OUT/summary.md" "$OUT/bench" "$OUT/bench.tar.gz"
    mkdir -p "$OUT/bench"
    : >"$OUT/bench/runs.tsv"
fi

run_step install "$INSTALL_S" "$OUT/versions.txt" with_lists do_install
run_step tests "$TESTS_S" "$OUT/tests.txt" with_lists do_tests
run_step tiny "$TINY_S" "$OUT/tiny.txt" with_lists do_tiny
port=29620
runs_left=$(( ${#RECIPES[@]} * ${#KERNEL_PATHS[@]} ))
bench_dirs=()
for recipe in "${RECIPES[@]}"; do
    stem=$(basename "$recipe" .sh)
    stem=${stem#pretrain_}
    for path in "${KERNEL_PATHS[@]}"; do
        name="${stem}_${path}"
        dir="$OUT/bench/$name"
        bench_dirs+=("$dir")
        port=$((port + 1))
        want=$BENCH_RUN_S
        if [[ $DRY_RUN != 1 ]]; then
            mkdir -p "$dir"
            printf '%s\t%s\t%s\t%s\n' "$name" "$recipe" "$path" "${KERNELS[$path]}" >>"$OUT/bench/runs.tsv"
            share=$(( (START + TOTAL_S - RESERVE_S - REPORTS_S - $(date +%s)) / runs_left ))
            (( share > want )) && want=$share
        fi
        run_step "bench $name" "$want" "$dir/run.log" do_bench "$recipe" "$dir" "$port" "${KERNELS[$path]}"
        runs_left=$((runs_left - 1))
    done
done
# A run cut short by its time limit still reports the iterations it logged.
run_step reports "$REPORTS_S" "$OUT/bench/reports.txt" do_reports "${bench_dirs[@]}"

if [[ $DRY_RUN == 1 ]]; then
    echo "step summary: -> $OUT/summary.md"
    exit 0
fi
printf '%s\n' "${STEPS[@]}" >"$WORK/steps.tsv"
summary "$WORK/steps.tsv" || FAILED=1
if [[ $PACK == 1 ]]; then
    tar -czf "$OUT/bench.tar.gz" -C "$OUT" bench && rm -rf "$OUT/bench"
fi
echo "gpu_check.sh: $(( $(date +%s) - START )) s; results in $OUT$([[ $FAILED == 1 ]] && echo '; some steps did not pass')"
exit $FAILED
