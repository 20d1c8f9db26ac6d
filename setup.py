"""Build hal_ext: C++ CPU kernels always, CUDA kernels according to HAL_EXT_CUDA.

Environment switches
  HAL_EXT_CUDA=auto|1|0   auto (default): compile the CUDA kernels whenever a CUDA toolkit and a
                          CUDA build of torch are present (no GPU needed); 1: fail if that is not
                          possible; 0: CPU kernels only.
  CUDA_HOME               the CUDA toolkit; otherwise CUDA_PATH, then /usr/local/cuda, then the
                          newest /usr/local/cuda-*. (`nvcc` on PATH may be a wrapper script, so
                          its folder is never trusted.)
  TORCH_CUDA_ARCH_LIST    GPU architectures (default "8.0;9.0+PTX": A100, H100/H200, and PTX
                          that newer chips JIT-compile).
  HAL_EXT_CPU_FLAGS       compiler flags for the CPU kernels (default: what the build machine
                          has of -mavx2 -mfma, then AVX-512 F/DQ/BW/VL).
  MAX_JOBS                parallel compile jobs (ninja).

What the library is built with (torch, CUDA, arch list, flags) is compiled into it (a generated
build_info.cpp), and hal_ext reads it from the library file before loading it. Each configuration
compiles in its own build/temp-<hash> folder, so builds with different settings (`make build`,
`HAL_EXT_CUDA=0 pip install --no-build-isolation .`) neither overwrite each other's objects nor force
each other to recompile.
"""
import glob
import hashlib
import json
import os
import platform
import re
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"
# hal_ext/_native.py looks for this prefix in the library file; keep the two in step.
BUILD_INFO_MARKER = "HAL_EXT_BUILD_INFO:"


def package_version():
    with open(os.path.join(ROOT, "hal_ext", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def find_cuda_home():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        path = os.environ.get(var)
        if path and os.path.exists(os.path.join(path, "bin", "nvcc")):
            return path
    candidates = ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for path in candidates:
        if os.path.exists(os.path.join(path, "bin", "nvcc")):
            return os.path.realpath(path)
    return None


CUDA_HOME = find_cuda_home()
if CUDA_HOME:
    # torch.utils.cpp_extension reads CUDA_HOME once, at import time.
    os.environ["CUDA_HOME"] = CUDA_HOME

try:
    import torch
except ImportError:
    # pip's isolated build environment has no torch; a torch downloaded into it would not be the one
    # the library must match at run time (README, "Building").
    sys.exit("hal_ext compiles against the torch it runs with, which an isolated build cannot see: "
             "with torch installed, run `pip install --no-build-isolation .`")
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def cuda_wanted():
    mode = os.environ.get("HAL_EXT_CUDA", "auto").strip().lower()
    if mode not in ("auto", "1", "0"):
        sys.exit(f"HAL_EXT_CUDA must be auto, 1 or 0, got {mode!r}")
    missing = []
    if torch.version.cuda is None:
        missing.append(f"torch {torch.__version__} is not a CUDA build")
    if CUDA_HOME is None:
        missing.append("no CUDA toolkit found (set CUDA_HOME)")
    if mode == "0":
        return False, "disabled by HAL_EXT_CUDA=0"
    if missing:
        if mode == "1":
            sys.exit("HAL_EXT_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(missing))
        return False, "; ".join(missing)
    return True, f"CUDA toolkit at {CUDA_HOME}"


def cpu_arch_flags():
    if "HAL_EXT_CPU_FLAGS" in os.environ:
        return os.environ["HAL_EXT_CPU_FLAGS"].split()
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return []
    # The build machine's vector ISA (a source build runs where it is built). AVX-512 makes the
    # keypoint losses' row passes (exp, log per pixel) about 1.5x faster than AVX2 on an AMD EPYC (Zen 4)
    # core; their float32 row sums are blocked with double block sums (ops/cpu/joints_loss_rows.h), so
    # the results meet SPEC's tolerances whatever the vector width.
    if not {"avx2", "fma"} <= flags:
        return []
    avx512 = ["avx512f", "avx512dq", "avx512bw", "avx512vl"]
    return ["-mavx2", "-mfma"] + ([f"-m{f}" for f in avx512] if set(avx512) <= flags else [])


def write_if_changed(path, text):
    """Rewrites `path` only when its text changes, so that ninja does not recompile it every build."""
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def build_info_source(info):
    """C++ source of the constant that records in the library what it was built with."""
    text = BUILD_INFO_MARKER + json.dumps(info, sort_keys=True)
    return ("// Generated by setup.py: what this library was built with (read by hal_ext/_native.py).\n"
            'extern "C" __attribute__((used, visibility("default"))) const char hal_ext_build_info[] =\n'
            f"    {json.dumps(text)};\n")


def openmp_flags():
    """-fopenmp when torch parallelises with OpenMP: at::parallel_for is then an inline `omp parallel`
    region compiled into our library, which without the flag runs every CPU kernel on one thread
    (csrc/common/cpu_parallel.h refuses to compile that). Linking with -fopenmp records libgomp.so.1,
    which resolves to the copy torch has already loaded. Otherwise only `omp simd` loops are used."""
    if "parallel backend: OpenMP" in torch.__config__.parallel_info():
        return ["-fopenmp"]
    return ["-fopenmp-simd"]


def make_extension():
    with_cuda, why = cuda_wanted()
    cpp_sources = sorted(
        glob.glob(os.path.join("csrc", "ops", "*.cpp"))
        + glob.glob(os.path.join("csrc", "ops", "cpu", "*.cpp"))
        + glob.glob(os.path.join("csrc", "ops", "autograd", "*.cpp"))
        + glob.glob(os.path.join("csrc", "ops", "autocast", "*.cpp"))
        + glob.glob(os.path.join("csrc", "python", "*.cpp"))
    )
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "ops", "cuda", "*.cu")))
    # -fno-trapping-math: without it GCC will not if-convert the selects inside hal_exp/hal_log, so
    # loops that call them stay scalar (about 10x slower); IEEE results are unchanged.
    cxx_flags = ["-O3", "-g0", "-std=c++20", "-fno-trapping-math"] + openmp_flags() + cpu_arch_flags()
    arch_list = None
    if with_cuda:
        arch_list = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
        extension = CUDAExtension
        sources = cpp_sources + cuda_sources
        extra = {
            "cxx": cxx_flags + ["-DHAL_EXT_WITH_CUDA"],
            "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo", "-DHAL_EXT_WITH_CUDA"],
        }
    else:
        extension = CppExtension
        sources = cpp_sources
        extra = {"cxx": cxx_flags}
    info = {
        "version": package_version(),
        "torch": torch.__version__,
        "cuda": with_cuda,
        "cuda_version": torch.version.cuda if with_cuda else None,
        "cuda_arch_list": arch_list,
        "cxx_flags": " ".join(extra["cxx"]),
        "python": platform.python_version(),
    }
    # One build folder per configuration: the torch installation (its headers), the Python, every flag.
    config = dict(info, nvcc_flags=extra.get("nvcc"), cuda_home=CUDA_HOME if with_cuda else None,
                  torch_dir=os.path.dirname(torch.__file__))
    key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    build_temp = os.path.join("build", f"temp-{key}")
    generated = os.path.join(build_temp, "generated", "build_info.cpp")
    write_if_changed(os.path.join(ROOT, generated), build_info_source(info))
    print("hal_ext build configuration:", flush=True)
    print(f"  torch          {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"  CUDA kernels   {'yes' if with_cuda else 'no'} ({why})")
    print(f"  CUDA_HOME      {CUDA_HOME}")
    print(f"  arch list      {arch_list}")
    print(f"  C++ flags      {' '.join(extra['cxx'])}")
    print(f"  MAX_JOBS       {os.environ.get('MAX_JOBS', '(ninja default)')}")
    print(f"  build folder   {build_temp}")
    print(f"  sources        {len(sources) + 1} files", flush=True)
    extension = extension(
        "hal_ext._C",
        sources + [generated],
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args=extra,
        extra_link_args=[f for f in openmp_flags() if f == "-fopenmp"],
    )
    return extension, build_temp


EXTENSION, BUILD_TEMP = make_extension()


class BuildExtensionPerConfig(BuildExtension.with_options(use_ninja=True)):
    """torch's BuildExtension (ninja), compiling in this configuration's own build folder."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(ROOT, BUILD_TEMP)


setup(
    name="hal_ext",
    version=package_version(),
    description="Fused C++/CUDA kernels for tllib's hypothesis-adversarial domain-adaptation losses",
    packages=find_packages(include=["hal_ext", "hal_ext.*"]),
    ext_modules=[EXTENSION],
    cmdclass={"build_ext": BuildExtensionPerConfig},
    python_requires=">=3.9",
    install_requires=["torch"],
)
