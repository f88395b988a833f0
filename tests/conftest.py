import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def _mnist_dir():
    env = os.environ.get("SUBSETSUM_LTH_DATA")
    if env and Path(env).exists():
        return Path(env)
    local = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    return local if local.exists() else None


@pytest.fixture(scope="session")
def mnist_dir():
    d = _mnist_dir()
    if d is None:
        pytest.skip("MNIST IDX files not found: set SUBSETSUM_LTH_DATA to the folder holding them")
    return d
