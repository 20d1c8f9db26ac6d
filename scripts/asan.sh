#!/usr/bin/env bash
# hal_ext's CPU kernels under AddressSanitizer and UndefinedBehaviorSanitizer (`make test-asan`).
#
# Builds a copy of the working tree (tracked and untracked, not ignored, files) in $ASAN_DIR/tree
# (default build/asan/tree) with -fsanitize=address,undefined, so the normal in-place build is never
# touched, then runs pytest there with the sanitizer runtime preloaded. Arguments go to pytest
# (default: the whole suite).
#
#   PY          the Python with torch (default python3)
#   ASAN_DIR    where the copy and its build live (default <repo>/build/asan); incremental
#   MAX_JOBS    parallel compile jobs
#
# Preloading libasan alone aborts inside torch's exception path (CHECK failed ... real___cxa_throw):
# libstdc++ must come with it. Python and torch leak on purpose: leak detection is off.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$(command -v "${PY:-python3}")
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute, not resolved (a venv's python is a link)
ASAN_DIR=${ASAN_DIR:-$ROOT/build/asan}
TREE=$ASAN_DIR/tree
CXX=${CXX:-c++}

SANITIZE="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
# -O1 -g1: the usual sanitizer build (line numbers in reports, a tolerable slowdown); -fno-wrapv undoes
# Python's -fwrapv so that UBSan checks signed overflow.
CPU_FLAGS="-O1 -g1 -fno-wrapv $SANITIZE"
if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
  CPU_FLAGS="-mavx2 -mfma $CPU_FLAGS"  # setup.py's default, which HAL_EXT_CPU_FLAGS replaces
fi

echo "==> sanitizer build of the CPU kernels in $TREE"
mkdir -p "$TREE"
# The sources as they are now, copied over the previous copy file by file where they differ (a changed
# file gets a new mtime, so ninja rebuilds what depends on it and nothing else); the copy's build
# folder, library and generated config stay; files gone from the tree go from the copy.
INCOMING=$ASAN_DIR/incoming
rm -rf "$INCOMING" && mkdir -p "$INCOMING"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 ls -d 2>/dev/null | tr '\n' '\0' \
  | tar --null -T - -cf -) | tar -xf - -C "$INCOMING"
(cd "$INCOMING" && find . -type f) | while read -r f; do
  cmp -s "$INCOMING/$f" "$TREE/$f" || { mkdir -p "$(dirname "$TREE/$f")" && cp "$INCOMING/$f" "$TREE/$f"; }
done
(cd "$TREE" && find . -type f ! -path './build/*' ! -name '_C*.so' ! -name _build_config.py ! -path '*/__pycache__/*' \
  ! -path './.pytest_cache/*' ! -path './.hypothesis/*') | while read -r f; do
  [[ -e $INCOMING/$f ]] || rm -f "$TREE/$f"
done

start=$(date +%s)
(cd "$TREE" && HAL_EXT_CUDA=0 HAL_EXT_CPU_FLAGS="$CPU_FLAGS" LDFLAGS="$SANITIZE" "$PY" setup.py build_ext --inplace \
  > "$ASAN_DIR/build.log" 2>&1) || { tail -40 "$ASAN_DIR/build.log"; echo "==> sanitizer build failed" >&2; exit 1; }
echo "==> built in $(( $(date +%s) - start )) s (log: $ASAN_DIR/build.log)"

LIBASAN=$("$CXX" -print-file-name=libasan.so)
LIBSTDCXX=$("$CXX" -print-file-name=libstdc++.so.6)
[[ -e $LIBASAN ]] || { echo "==> $CXX has no libasan.so" >&2; exit 1; }
export LD_PRELOAD="$LIBASAN $LIBSTDCXX"
# allocator_may_return_null: an impossible allocation is torch's RuntimeError, not an ASan abort.
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:print_summary=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

cd "$TREE"
# This build has no CUDA kernels, whatever the caller asked of the main build (CI exports HAL_EXT_CUDA=1,
# which makes tests/test_build.py require them).
export HAL_EXT_CUDA=0
"$PY" -c "import hal_ext, sys; info = hal_ext.build_info(); print('==> build_info:', info); sys.exit(0 if info['compiled'] else 1)"
start=$(date +%s)
status=0
# Without arguments: the whole suite. (The keypoint losses' float32 row sums are blocked, block sums
# in double, so this -O1 build, whose loops GCC does not vectorise, meets SPEC's tolerances too.)
if (( $# == 0 )); then
  set -- tests
fi
"$PY" -m pytest "$@" || status=$?
echo "==> tests under ASan+UBSan took $(( $(date +%s) - start )) s (exit $status)"
exit $status
