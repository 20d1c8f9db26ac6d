"""Proof that the emulated CUDA suite catches real GPU bugs: plants each bug below in a copy of csrc/,
builds the emulated kernels from it (scripts/build_simt.py), and runs tests/test_simt.py against that
build, then (when the plain suite passes) under AddressSanitizer and ThreadSanitizer. Every mutant must
be caught; finally the unmodified tree must pass. Exit status 0 only if all of that holds.

    python scripts/simt_mutants.py [--keep] [--only NAME]

Each mutant is built in a temporary copy, from a copy of build/simt-<variant> (only the objects the bug
touches are recompiled). Needs hal_ext built in place (the emulated kernels link its library).
"""
import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import build_simt  # noqa: E402

# name -> (file, original text, planted text, what it is)
MUTANTS = {
    "removed __syncthreads in block reduction": (
        "csrc/common/cuda_reduce.cuh",
        "  if (lane == 0) warp_partials[warp] = v;\n  __syncthreads();\n",
        "  if (lane == 0) warp_partials[warp] = v;\n",
        "block_sum reads the warp partials before every warp wrote its own"),
    "off-by-one shared index": (
        "csrc/common/cuda_reduce.cuh",
        "  if (lane == 0) warp_partials[warp] = v;",
        "  if (lane == 0) warp_partials[warp + 1] = v;",
        "block_sum writes warp w's partial into slot w + 1"),
    "wrong shuffle offset": (
        "csrc/common/cuda_reduce.cuh",
        "v += __shfl_down_sync(0xffffffffu, v, offset);",
        "v += __shfl_down_sync(0xffffffffu, v, offset + 1);",
        "warp_sum reads lane + offset + 1"),
    "grid exceeding grid.y": (
        "csrc/ops/cuda/mcd_entropy_kernel.cu",
        "cuda::grid_dim(splits, cuda::max_grid_y())",
        "static_cast<unsigned>(splits)",
        "mcd_entropy puts every row split on grid.y, as before the fix"),
    "missing bounds check in a grid-stride loop": (
        "csrc/common/cuda_elementwise.cuh",
        "      if (i < n) store(i, v[k]);",
        "      store(i, v[k]);",
        "for_each_unrolled (shift_log's kernels) stores every element of a thread's last step, past n too"),
}

def run_suite(lib, variant, tests="tests/test_simt.py"):
    """Runs the emulated suite against `lib`; returns (passed, last lines of output)."""
    env = build_simt.test_env(lib, variant)
    # --capture=sys: a sanitizer writes its report to file descriptor 2 and ends the process; captured at
    # fd level the report would die with it (build_simt.py --test does the same)
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--capture=sys", tests]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    verdict = next((line for line in reversed(lines) if "passed" in line or "failed" in line or "error" in line),
                   lines[-1] if lines else "")
    evidence = next((line for line in lines if line.startswith("E ") or "ERROR: " in line or "SUMMARY:" in line),
                    verdict)
    return result.returncode == 0, verdict.strip(), evidence.strip()[:200]


def build(src, variant):
    """Builds the mutated copy `src` in src/build/simt-VARIANT, starting from a copy of this tree's up to
    date build directory: only the objects the planted bug touches are rebuilt."""
    build_simt.build(variant, quiet=True)
    out = src / "build" / f"simt-{variant}"
    if not out.exists():
        shutil.copytree(build_simt.library_path(variant).parent, out)
    return build_simt.build(variant, src=src, out=out, quiet=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only the mutant whose name contains this text")
    parser.add_argument("--variants", default="plain,asan,tsan",
                        help="checks tried in order until one catches the mutant (default plain,asan,tsan)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    ok = True
    with tempfile.TemporaryDirectory(prefix="simt-mutants-") as tmp:
        for index, (name, (path, original, planted, what)) in enumerate(MUTANTS.items()):
            if args.only and args.only not in name:
                continue
            src = pathlib.Path(tmp) / f"m{index}"
            shutil.copytree(ROOT / "csrc", src / "csrc")
            target = src / path
            text = target.read_text()
            assert text.count(original) == 1, f"{name}: the original text must occur once in {path}"
            target.write_text(text.replace(original, planted))
            caught_by = None
            for variant in variants:
                start = time.time()
                lib = build(src, variant)
                passed, verdict, evidence = run_suite(lib, variant)
                print(f"[{name}] {variant}: {'passed' if passed else 'FAILED'} ({verdict}; {time.time() - start:.0f} s)"
                      + ("" if passed else f"\n    {evidence}"), flush=True)
                if not passed:
                    caught_by = variant
                    break
            print(f"==> {name} ({what}): " + (f"caught by the {caught_by} run" if caught_by else "NOT CAUGHT"),
                  flush=True)
            ok &= caught_by is not None
    if not args.only:
        passed, verdict, evidence = run_suite(build_simt.build("plain", quiet=True), "plain")
        print(f"==> unmodified tree: {'passes' if passed else 'FAILS'} ({verdict})", flush=True)
        ok &= passed
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
