"""Build the emulated CUDA kernels: every csrc/ops/cuda/*.cu compiled as C++ with HAL_SIMT against the
SIMT emulator (csrc/simt/), into one library that registers the CUDA launchers as
torch.ops.hal_ext_simt.* on CPU tensors (tests/simt.py loads it). Test-only: not part of the package.

    python scripts/build_simt.py [--variant plain|asan|tsan] [--src DIR] [--out DIR] [--jobs N]
                                 [--test [PYTEST_ARGS...]]

Variants: plain (-O2); asan (AddressSanitizer, the emulator announces its fiber stacks); tsan
(ThreadSanitizer on the kernels; the emulator itself is compiled uninstrumented and tells TSan the
barriers' happens-before edges). ninja rebuilds only what changed. Prints the library's path.
--test then runs tests/test_simt.py (or PYTEST_ARGS) against it, with the sanitizer runtime preloaded
into Python (make test-simt-sanitize).
"""
import argparse
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import sysconfig

ROOT = pathlib.Path(__file__).resolve().parent.parent

VARIANTS = {
    "plain": {"kernels": ["-O2"], "emulator": ["-O2"], "link": []},
    "asan": {"kernels": ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"],
             "emulator": ["-O1", "-g", "-fsanitize=address", "-DHAL_SIMT_ASAN"],
             "link": ["-fsanitize=address"]},
    "tsan": {"kernels": ["-O1", "-g", "-fsanitize=thread"],
             "emulator": ["-O1", "-g", "-DHAL_SIMT_TSAN"],
             "link": ["-fsanitize=thread"]},
}


# allocator_may_return_null: an impossible allocation (the fuzz asks for some) is torch's RuntimeError,
# not an ASan abort, as in scripts/asan.sh.
SANITIZER_RUNTIME = {
    "asan": ("libasan.so", "ASAN_OPTIONS", "detect_leaks=0:halt_on_error=1:allocator_may_return_null=1"),
    "tsan": ("libtsan.so", "TSAN_OPTIONS", "halt_on_error=1:report_signal_unsafe=0"),
}


def _compiler_file(name):
    path = subprocess.run([os.environ.get("CXX", "g++"), f"-print-file-name={name}"], capture_output=True,
                          text=True, check=True).stdout.strip()
    if not os.path.isabs(path):  # the compiler echoes a name it does not have
        raise RuntimeError(f"the compiler ({os.environ.get('CXX', 'g++')}) has no {name}")
    return path


def test_env(lib, variant):
    """Environment for running the emulated suite against `lib` (sanitizer runtime preloaded).

    libstdc++ is preloaded with the sanitizer runtime: the runtime intercepts __cxa_throw and looks the
    real one up when it starts, before Python has loaded libstdc++; preloaded alone, it finds none, and
    the process's first C++ exception (the emulator's first reported kernel error) ends it with
    "CHECK failed: ... real___cxa_throw" and exit 1 (scripts/asan.sh does the same)."""
    env = {**os.environ, "HAL_EXT_SIMT_LIB": str(lib), "HAL_EXT_SIMT_VARIANT": variant}
    if variant in SANITIZER_RUNTIME:
        runtime, options_var, options = SANITIZER_RUNTIME[variant]
        env.update({"LD_PRELOAD": f"{_compiler_file(runtime)} {_compiler_file('libstdc++.so.6')}",
                    options_var: options})
    if variant == "tsan":
        # torch's own CPU ops (the tests' oracles) run on OpenMP threads, whose barriers TSan cannot see
        # (libgomp is not instrumented): it reports every parallel TensorIterator as a race. One thread
        # hides nothing of the kernels': the emulator runs every launch on the calling thread.
        env["OMP_NUM_THREADS"] = "1"
    return env


def library_path(variant, out=None):
    out = pathlib.Path(out) if out else ROOT / "build" / f"simt-{variant}"
    return out / "hal_ext_simt.so"


def _torch_flags():
    import torch
    from torch.utils import cpp_extension

    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    libs = [f"-L{lib_dir}", f"-Wl,-rpath,{lib_dir}", "-lc10", "-ltorch", "-ltorch_cpu"]
    # the launchers share host-side argument checks with hal_ext's own library (e.g. mdd_detail): link
    # it by absolute path, so that loading this library reuses the copy `import hal_ext` loaded
    native = sorted((ROOT / "hal_ext").glob("_C*.so"))
    if not native:
        raise RuntimeError("build hal_ext first (python setup.py build_ext --inplace): the emulated kernels link it")
    return includes + [abi, f"-I{sysconfig.get_paths()['include']}"], libs + [str(native[0])]


def write_ninja(variant, src, out):
    """The build file names the sources relative to `out`, so a copy of the tree with a copy of its
    build directory (scripts/simt_mutants.py) rebuilds only what its changes touch."""
    flags = VARIANTS[variant]
    includes, libs = _torch_flags()
    csrc = pathlib.Path(os.path.relpath(src / "csrc", out))
    common = ["-std=c++20", "-fPIC", "-DHAL_SIMT", "-Wno-unknown-pragmas", f"-I{csrc}"] + includes
    kernel_sources = [csrc / "ops" / "cuda" / p.name for p in sorted((src / "csrc" / "ops" / "cuda").glob("*.cu"))]
    lines = [
        f"cxx = {os.environ.get('CXX', 'g++')}",
        f"kernel_flags = {shlex.join(common + flags['kernels'])}",
        f"emulator_flags = {shlex.join(common + flags['emulator'])}",
        f"link_flags = {shlex.join(flags['link'] + libs)}",
        "rule kernel",
        "  command = $cxx -x c++ $kernel_flags -MMD -MF $out.d -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = simt $in",
        "rule emulator",
        "  command = $cxx $emulator_flags -MMD -MF $out.d -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "rule link",
        "  command = $cxx -shared $in -o $out $link_flags",
    ]
    objects = []
    for source in kernel_sources:
        obj = f"{source.stem}.o"
        lines.append(f"build {obj}: kernel {source}")
        objects.append(obj)
    for name in ("simt.cpp", "simt_ops.cpp", "selftest_kernels.cpp"):
        obj = name.replace(".cpp", ".o")
        rule = "emulator" if name == "simt.cpp" else "kernel"
        lines.append(f"build {obj}: {rule} {csrc / 'simt' / name}")
        objects.append(obj)
    lines.append(f"build hal_ext_simt.so: link {' '.join(objects)}")
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    path = out / "build.ninja"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def build(variant="plain", src=None, out=None, jobs=None, quiet=False):
    """Builds (or brings up to date) the emulated library and returns its path."""
    src = pathlib.Path(src) if src else ROOT
    lib = library_path(variant, out)
    write_ninja(variant, src, lib.parent)
    jobs = jobs or int(os.environ.get("MAX_JOBS", "2"))
    ninja = shutil.which("ninja", path=os.path.dirname(sys.executable)) or shutil.which("ninja")
    if ninja is None:
        raise RuntimeError("building the emulated kernels needs ninja (pip install ninja)")
    result = subprocess.run([ninja, "-C", str(lib.parent), f"-j{jobs}"], capture_output=quiet, text=True)
    if result.returncode != 0:
        detail = (result.stdout or "")[-6000:] if quiet else ""
        raise RuntimeError(f"building the emulated kernels ({variant}) failed\n{detail}")
    return lib


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="plain")
    parser.add_argument("--src", help="source tree (default: this checkout)")
    parser.add_argument("--out", help="build directory (default: build/simt-VARIANT)")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--test", nargs=argparse.REMAINDER, help="then run pytest (default: tests/test_simt.py)")
    args = parser.parse_args()
    try:
        lib = build(args.variant, args.src, args.out, args.jobs)
    except RuntimeError as error:
        sys.exit(str(error))
    print(lib, flush=True)
    if args.test is not None:
        # --capture=sys: pytest captures Python's sys.stdout/stderr only, not file descriptor 2, where a
        # sanitizer writes its report before it ends the process (captured at fd level, the report would
        # die with the process, unseen: exit 1 and no report).
        command = ([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--capture=sys"]
                   + (args.test or ["tests/test_simt.py"]))
        print(f"==> {args.variant}: {' '.join(command[1:])}", flush=True)
        sys.exit(subprocess.run(command, cwd=ROOT, env=test_env(lib, args.variant)).returncode)


if __name__ == "__main__":
    main()
