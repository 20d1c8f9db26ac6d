import hashlib
import os
import pathlib
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.manual_seed(0)


def _inductor_cache_dir():
    """A torch.compile cache directory for this build of hal_ext. PyTorch keys its compiled graphs on
    the ops' names, not on their kernels: a cache warmed by an older build replays that build's fake
    and autograd behaviour (a changed gradient layout then fails inductor's stride asserts). The
    directory is named by a hash of the native library and the package's Python files."""
    package = pathlib.Path(__file__).resolve().parent.parent / "hal_ext"
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".so", ".pyd") and path.is_file():
            digest.update(path.relative_to(package).as_posix().encode())
            digest.update(path.read_bytes())
    return os.path.join(tempfile.gettempdir(), f"hal_ext_inductor_{digest.hexdigest()[:16]}")


os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", _inductor_cache_dir())

# Hypothesis budgets (tests/test_properties.py): `ci` (default) is derandomized and bounded so the
# whole property file runs in about a minute on 2 cores; HYPOTHESIS_PROFILE=long explores much more.
from hypothesis import HealthCheck, settings  # noqa: E402

_HYPOTHESIS_COMMON = dict(deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=100, derandomize=True, **_HYPOTHESIS_COMMON)
settings.register_profile("long", max_examples=2000, **_HYPOTHESIS_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
