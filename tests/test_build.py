"""The native library is built, loaded and complete; without it hal_ext still works (SPEC, issue 2)."""
import os
import subprocess
import sys

import torch

import hal_ext
from hal_ext._native import read_build_info
from helpers import expects_cuda_kernels

OPS = [
    "classifier_discrepancy",
    "classification_mdd",
    "regression_mdd",
    "pseudo_label_2d",
    "fast_pseudo_label_2d",
    "mcd_entropy",
    "shift_log",
    "joints_mse_loss",
    "joints_kl_loss",
    "regression_disparity",
]


def test_native_library_loaded():
    info = hal_ext.build_info()
    assert info["compiled"], f"native library not loaded: {info.get('reason')}"
    assert info["torch"] == torch.__version__


def test_every_op_has_cpu_autograd_and_fake_kernels():
    for op in OPS:
        name = f"hal_ext::{op}"
        for key in ("CPU", "Autograd"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(name, key), f"{name} has no {key} kernel"
        assert torch._library.simple_registry.singleton.find(name).fake_impl.kernel is not None, name


def test_cuda_kernels_compiled_when_requested():
    info = hal_ext.build_info()
    if not expects_cuda_kernels():
        assert info["cuda"] == torch._C._dispatch_has_kernel_for_dispatch_key("hal_ext::classifier_discrepancy", "CUDA")
        return
    assert info["cuda"], "HAL_EXT_CUDA=1 but the CUDA kernels are not in the library"
    assert "9.0" in info["cuda_arch_list"]
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"hal_ext::{op}", "CUDA"), op


def run_python(code, **env):
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-W", "default", "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=120)


def test_fallback_without_native_library_warns_once_and_works():
    code = (
        "import warnings, torch\n"
        "import hal_ext\n"
        "from hal_ext.alignment.mcd import classifier_discrepancy\n"
        "info = hal_ext.build_info()\n"
        "assert not info['compiled'] and 'HAL_EXT_DISABLE_NATIVE' in info['reason'], info\n"
        "a = torch.rand(4, 3, requires_grad=True); b = torch.rand(4, 3)\n"
        "out = classifier_discrepancy(a, b); out.backward()\n"
        "assert torch.allclose(out, (a - b).abs().mean())\n"
        "import hal_ext._native\n"
    )
    result = run_python(code, HAL_EXT_DISABLE_NATIVE="1")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("hal_ext: native kernels unavailable") == 1, result.stderr


def test_build_info_is_read_from_the_library_itself():
    info = hal_ext.build_info()
    record = read_build_info(info["library"])
    assert record is not None, f"{info['library']} carries no build record"
    assert os.path.dirname(info["library"]) == os.path.dirname(hal_ext.__file__)
    for key in ("torch", "cuda_version", "cuda_arch_list", "cxx_flags", "version"):
        assert info[key] == record[key], key
    assert record["version"] == hal_ext.__version__
    assert record["cuda"] == info["cuda"], "the library's record and its registered CUDA kernels disagree"


def test_version_mismatch_is_reported_not_fatal(tmp_path):
    # A copy of the package whose library records another torch: import must warn and fall back.
    import shutil
    package = os.path.dirname(hal_ext.__file__)
    copy = tmp_path / "hal_ext"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    library = copy / os.path.basename(hal_ext.build_info()["library"])
    other = "0." + "9" * (len(torch.__version__) - 2)  # same length: the file stays a valid library
    old = f'"torch": "{torch.__version__}"'.encode()
    data = library.read_bytes()
    assert data.count(old) == 1
    library.write_bytes(data.replace(old, f'"torch": "{other}"'.encode()))
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "import hal_ext\n"
        "info = hal_ext.build_info()\n"
        f"assert not info['compiled'] and {other!r} in info['reason'] and info['torch'] == {other!r}, info\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert f"built against torch {other}" in result.stderr
