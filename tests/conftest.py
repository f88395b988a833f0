"""Hypothesis profiles. The default, everywhere (locally and in CI), is derandomised: the same
examples on every run, so the test command's outcome does not depend on luck. Random
exploration is an explicit opt-in:

    HYPOTHESIS_PROFILE=explore python -m pytest -q -m "not slow" -rs --hypothesis-seed=N
"""
import os

import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("explore", **_COMMON)
settings.register_profile("dev", **_COMMON)          # former name of "explore"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def mnist_dir():
    from tests.helpers import NO_MNIST_REASON, shared_mnist_dir
    d = shared_mnist_dir()
    if d is None:
        pytest.skip(NO_MNIST_REASON)
    return d
