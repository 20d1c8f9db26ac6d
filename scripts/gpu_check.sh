#!/usr/bin/env bash
# One prepared command for a GPU machine (issue 7): build hal_ext for the local GPU from source with
# every core, run the test suite's CUDA cases, the benchmark suite on cuda and a per-kernel profile of
# the memory-bound ops, optionally compute-sanitizer, and write everything under $OUT. Finishes in
# under 8 minutes (a deadline is shared by the phases; each runs under `timeout`) and prints where the
# time went.
#
#   OUT=/tmp/gpu_out scripts/gpu_check.sh          # or: make gpu-check
#
# Environment:
#   OUT              output folder (default ./gpu_check_out); at most 8 files are written there:
#                    summary.md (phases, environment, test and benchmark summaries), tests.log,
#                    junit.xml, bench.json, bench.md, chart.png|svg, kernel_profile.txt, logs.tar.gz
#                    (every raw log)
#   PY               the Python to use (default: python, else python3; the system one, no venv)
#   ARCH             TORCH_CUDA_ARCH_LIST (default 9.0: H100/H200)
#   JOBS             MAX_JOBS (default: nproc)
#   BUDGET_S         total wall-clock budget in seconds (default 470)
#   DRY_RUN=1        no GPU needed: build (compile only), collect the tests, skip the runs; the
#                    build may then take the whole budget (2 cores need about 7 min: BUDGET_S=900)
#   SKIP_SANITIZER=1 skip compute-sanitizer
#   STEPS            which steps to run (default "build tests bench sanitizer"), e.g. a rerun of
#                    STEPS="tests" after a fix; BENCH_DEVICE (default cuda) for the benchmarks
#   BENCH_LARGE_ARGS the `python -m benchmarks` arguments of the large memory-bound run
#   PROFILE_OPS      the ops of benchmarks.kernel_profile (per-kernel device time at the largest shape)
#   TEST_ARGS        extra pytest arguments (default "-k cuda": the CUDA cases alone, since CI runs the
#                    CPU cases against the GPU machine's Python and torch, `make test-gpu-env`);
#                    TEST_ARGS= (empty) runs the whole suite
#   TEST_TIMEOUT_S   per-test limit when pytest-timeout is installed (default 120), so that one hung
#                    kernel costs one test rather than the whole phase
set -u -o pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

# The sources' content hash, which names the code that ran even where the device copy's git metadata
# lags its files (a device session's copy keeps the session's first commit as HEAD).
source_hash() {
    find csrc hal_ext setup.py -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \
        -o -name '*.py' \) -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha1sum | sha1sum | cut -c1-12
}
if [[ ${1:-} == --source-hash ]]; then
    source_hash
    exit 0
fi
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/hal_ext_gpu_logs.XXXXXX")
PY=${PY:-$(command -v python || command -v python3)}
ARCH=${ARCH:-9.0}
JOBS=${JOBS:-$(nproc)}
BUDGET_S=${BUDGET_S:-470}
DRY_RUN=${DRY_RUN:-0}
START=$SECONDS
SUMMARY=$OUT/summary.md
PHASES=$LOGS/phases.tsv
: >"$PHASES"

log() { printf '[gpu_check %4ds] %s\n' "$((SECONDS - START))" "$*"; }
left() { echo $((BUDGET_S - (SECONDS - START))); }

# phase NAME CAP_S LOGFILE CMD...: runs CMD under `timeout min(CAP_S, time left)`, output to LOGFILE
# (and the tail to stdout); records name, seconds and exit status. Returns CMD's status.
phase() {
    local name=$1 cap=$2 logfile=$3
    shift 3
    local budget
    budget=$(left)
    ((budget < cap)) && cap=$budget
    if ((cap < 10)); then
        log "$name: skipped, budget spent"
        printf '%s\t0\tskipped (budget)\n' "$name" >>"$PHASES"
        return 99
    fi
    log "$name: starting (limit ${cap}s, log $(basename "$logfile"))"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$cap" "$@" >"$logfile" 2>&1
    rc=$?
    local dt=$((SECONDS - t0)) status=ok
    ((rc == 124 || rc == 137)) && status="TIMEOUT after ${cap}s"
    ((rc != 0 && rc != 124 && rc != 137)) && status="FAILED (exit $rc)"
    printf '%s\t%s\t%s\n' "$name" "$dt" "$status" >>"$PHASES"
    log "$name: $status in ${dt}s; last lines:"
    tail -n 8 "$logfile" | sed 's/^/    /'
    return $rc
}

finish() {
    log "writing $SUMMARY"
    {
        echo "# hal_ext GPU check"
        echo
        echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "- commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
        echo "- sources: $(source_hash) (scripts/gpu_check.sh --source-hash on a checkout gives the same for the same files)"
        echo "- machine: $(hostname), $(nproc) cores"
        echo "- gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo none)"
        echo "- python/torch: $("$PY" -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null)"
        echo "- nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo none)"
        echo "- settings: ARCH=$ARCH JOBS=$JOBS BUDGET_S=$BUDGET_S DRY_RUN=$DRY_RUN TEST_ARGS=${TEST_ARGS--k cuda}"
        echo
        echo "## Where the time went"
        echo
        echo "| phase | seconds | status |"
        echo "| --- | ---: | --- |"
        while IFS=$'\t' read -r n s st; do echo "| $n | $s | $st |"; done <"$PHASES"
        echo "| **total** | $((SECONDS - START)) | |"
        echo
        if [[ -f $LOGS/build.log ]]; then
            echo "## build_info"
            echo
            echo '```'
            grep -E '^build_info|hal_ext build configuration|^  (torch|CUDA|arch|MAX_JOBS|sources)' "$LOGS/build.log" | head -20
            grep -iE 'error' "$LOGS/build.log" | head -20
            echo '```'
            echo
        fi
        if [[ -f $OUT/tests.log ]]; then
            echo "## Tests (tail of tests.log)"
            echo
            echo '```'
            grep -E '^(FAILED|ERROR)' "$OUT/tests.log" | head -60
            tail -n 25 "$OUT/tests.log"
            echo '```'
            echo
        fi
        for f in "$LOGS"/sanitizer_*.log; do
            [[ -f $f ]] || continue
            echo "## $(basename "$f" .log)"
            echo
            echo '```'
            grep -E 'ERROR SUMMARY|Invalid|Race|error' "$f" | head -20
            tail -n 5 "$f"
            echo '```'
            echo
        done
        if [[ -f $OUT/bench.md ]]; then
            echo "## Benchmarks (bench.md)"
            echo
            cat "$OUT/bench.md"
            echo
        elif [[ -f $LOGS/bench_quick.log ]]; then
            echo "## Benchmarks (tail of the benchmark log)"
            echo
            echo '```'
            tail -n 40 "$LOGS/bench_quick.log"
            echo '```'
        fi
    } >"$SUMMARY"
    tar -czf "$OUT/logs.tar.gz" -C "$LOGS" . 2>/dev/null
    echo
    echo "==================== where the time went ===================="
    column -t -s $'\t' "$PHASES" 2>/dev/null || cat "$PHASES"
    echo "total $((SECONDS - START))s; outputs in $OUT:"
    ls -la "$OUT"
    rm -rf "$LOGS"
}

log "root $ROOT, output $OUT, python $PY, budget ${BUDGET_S}s"
phase environment 30 "$LOGS/environment.log" bash -c "
    nvidia-smi || echo 'nvidia-smi: not available'
    '$PY' -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"gpu\", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"\")'
    nvcc --version || true; command -v ninja ccache compute-sanitizer || true; free -g; nproc"
cat "$LOGS/environment.log" | grep -E 'torch|NVIDIA-SMI|H200|H100' | head -5

if [[ $DRY_RUN != 1 ]] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    log "WARNING: torch sees no GPU: the CUDA tests will not be collected (set DRY_RUN=1 to only build and collect)"
fi

# ---- 1. build (sm_$ARCH only, every core) -------------------------------------------------------
export TORCH_CUDA_ARCH_LIST=$ARCH HAL_EXT_CUDA=1 MAX_JOBS=$JOBS
STEPS=" ${STEPS:-build tests bench sanitizer} "
BENCH_DEVICE=${BENCH_DEVICE:-cuda}
want() { [[ $STEPS == *" $1 "* ]]; }
BUILD_RC=0
want build || log "build: not in STEPS"
# 240 s is ample for 16 cores; a dry run (a build check on a small machine) may use the whole budget.
BUILD_CAP=240
[[ $DRY_RUN == 1 ]] && BUILD_CAP=$(left)
want build && { phase build "$BUILD_CAP" "$LOGS/build.log" bash -c "
    '$PY' setup.py build_ext --inplace && \
    '$PY' -c 'import hal_ext, sys; i = hal_ext.build_info(); print(\"build_info\", i); sys.exit(0 if i[\"compiled\"] and i[\"cuda\"] else 1)'" || BUILD_RC=$?; }
if ((BUILD_RC != 0)); then
    log "BUILD FAILED: see logs.tar.gz/build.log; errors:"
    grep -E 'error|Error' "$LOGS/build.log" | head -30
    finish
    exit 1
fi

# ---- 2. the whole test suite on CUDA ------------------------------------------------------------
# Tests are parametrised over helpers.DEVICES, which includes cuda when a GPU is present. The large
# (>2^31 element) tests are enabled; every public op must be importable (no silently absent op).
export HAL_EXT_LARGE_TESTS=cuda HAL_EXT_REQUIRE_ALL_OPS=1 HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
PYTEST=("$PY" -m pytest -p no:cacheprovider -ra --durations=20 --continue-on-collection-errors)
"$PY" -c 'import pytest_timeout' 2>/dev/null && PYTEST+=(--timeout "${TEST_TIMEOUT_S:-120}")
# shellcheck disable=SC2206
PYTEST+=(${TEST_ARGS--k cuda} tests)
if ! want tests; then
    log "tests: not in STEPS"
elif [[ $DRY_RUN == 1 ]]; then
    phase collect 120 "$OUT/tests.log" "${PYTEST[@]}" --collect-only -q
    log "collected: $(grep -cE '::' "$OUT/tests.log") tests, $(grep -cE 'cuda' "$OUT/tests.log") with cuda in their id"
else
    # leave about 3 minutes for the benchmarks and the sanitizer, when they are to run
    RESERVE=0
    want bench && RESERVE=$((RESERVE + 200))
    want sanitizer && [[ ${SKIP_SANITIZER:-0} != 1 ]] && RESERVE=$((RESERVE + 30))
    TESTS_CAP=$(($(left) - RESERVE))
    ((TESTS_CAP > 300)) && TESTS_CAP=300
    phase tests "$TESTS_CAP" "$OUT/tests.log" "${PYTEST[@]}" --junitxml="$OUT/junit.xml"
    TESTS_RC=$?
fi

# ---- 3. benchmarks on cuda (suite from the `bench` branch) ------------------------------------
BENCH_TMP=$(mktemp -d)
if ! want bench; then
    log "benchmarks: not in STEPS"
elif [[ ! -f benchmarks/__main__.py ]]; then
    log "benchmarks: no benchmarks/__main__.py in this tree (the suite lands from branch 'bench'); skipped"
    printf 'benchmarks\t0\tabsent (no benchmarks/__main__.py)\n' >>"$PHASES"
elif [[ $DRY_RUN == 1 ]]; then
    phase bench_list 60 "$LOGS/bench_list.log" "$PY" -m benchmarks --list
else
    BENCH_DIR=$BENCH_TMP/results
    phase bench_quick 150 "$LOGS/bench_quick.log" "$PY" -m benchmarks --quick --device "$BENCH_DEVICE" --out "$BENCH_DIR" --name quick
    # The memory-bound ops at large sizes: the suite's --sweep preset (larger shapes on CUDA), no
    # training steps, with whatever time is left (overridable with BENCH_LARGE_ARGS).
    # No eager contender: tllib's RegDA composition alone takes 1 s per call at 256x21x64x64, which
    # left the first GPU run's sweep unfinished; the quick run compares with eager.
    LARGE_ARGS=${BENCH_LARGE_ARGS:---sweep --device $BENCH_DEVICE --train none --contenders compile,hal_ext,floor --ops classifier_discrepancy,shift_log,classification_mdd,regression_mdd_l1,pseudo_label_2d,joints_mse,joints_kl,regression_disparity}
    LARGE_CAP=$(($(left) - 130))
    ((LARGE_CAP > 150)) && LARGE_CAP=150
    # shellcheck disable=SC2086
    phase bench_large "$LARGE_CAP" "$LOGS/bench_large.log" "$PY" -m benchmarks $LARGE_ARGS --out "$BENCH_DIR" --name sweep
    # The quick run's JSON, Markdown and chart come back flat; the sweep's with the raw logs.
    for ext in json md png svg; do
        newest=$(ls -t "$BENCH_DIR"/quick*."$ext" 2>/dev/null | head -1)
        case $ext in png | svg) dest=$OUT/chart.$ext ;; *) dest=$OUT/bench.$ext ;; esac
        [[ -n $newest ]] && cp "$newest" "$dest" && log "bench: $(basename "$newest") -> $dest"
    done
    if [[ -f $OUT/bench.md ]]; then
        for f in "$BENCH_DIR"/sweep*.md; do [[ -f $f ]] && { echo; echo "## Large shapes (--sweep)"; echo; cat "$f"; } >>"$OUT/bench.md"; done
    fi
    tar -czf "$LOGS/bench_results.tar.gz" -C "$BENCH_DIR" . 2>/dev/null
    # Where the memory-bound ops' time goes, kernel by kernel, hal_ext against torch.compile.
    PROFILE_CAP=$(($(left) - 40))
    ((PROFILE_CAP > 90)) && PROFILE_CAP=90
    phase kernel_profile "$PROFILE_CAP" "$OUT/kernel_profile.txt" "$PY" -W ignore -m benchmarks.kernel_profile \
        --device "$BENCH_DEVICE" --ops "${PROFILE_OPS:-shift_log,classification_mdd,joints_kl,joints_mse,regression_disparity}"
fi
rm -rf "$BENCH_TMP"

# ---- 4. compute-sanitizer on a small drive of every op (only with time left) ------------------
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [[ $DRY_RUN == 1 || ${SKIP_SANITIZER:-0} == 1 ]] || ! want sanitizer; then
    log "sanitizer: skipped (DRY_RUN or SKIP_SANITIZER)"
elif [[ -z $SANITIZER ]]; then
    log "sanitizer: compute-sanitizer not found; skipped"
    printf 'sanitizer\t0\tabsent\n' >>"$PHASES"
else
    # scripts/soak.py --iters 2 runs every op forward and backward on small CUDA inputs.
    for tool in memcheck racecheck; do
        cap=$(($(left) - 15))
        ((cap > 90)) && cap=90
        phase "sanitizer_$tool" "$cap" "$LOGS/sanitizer_$tool.log" \
            "$SANITIZER" --tool "$tool" --error-exitcode 3 --target-processes all \
            "$PY" scripts/soak.py --iters 2 --device cuda --small
    done
fi

finish
if [[ $DRY_RUN != 1 ]] && want tests && [[ ${TESTS_RC:-1} != 0 ]]; then
    log "RESULT: tests FAILED (exit ${TESTS_RC:-none}); see $OUT/tests.log"
    exit 1
fi
log "RESULT: done"
