import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.manual_seed(0)

# Hypothesis budgets (tests/test_properties.py): `ci` (default) is derandomized and bounded so the
# whole property file runs in about a minute on 2 cores; HYPOTHESIS_PROFILE=long explores much more.
from hypothesis import HealthCheck, settings  # noqa: E402

_HYPOTHESIS_COMMON = dict(deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=100, derandomize=True, **_HYPOTHESIS_COMMON)
settings.register_profile("long", max_examples=2000, **_HYPOTHESIS_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
