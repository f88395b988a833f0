"""Hypothesis profiles. The default, everywhere (locally and in CI), is derandomised: the same
examples on every run, so the test command's outcome does not depend on luck. Random
exploration is an explicit opt-in:

    HYPOTHESIS_PROFILE=explore python -m pytest -q -m "not slow" -rs --hypothesis-seed=N
"""
import os
import signal

import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("explore", **_COMMON)
settings.register_profile("dev", **_COMMON)          # former name of "explore"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# A suite started in the background by a non-interactive shell (`cmd &`) inherits SIGINT ignored,
# and so would every CLI process the signal tests start (an ignored signal stays ignored across
# exec): those tests play a terminal's Ctrl-C, so the suite runs with SIGINT at its default, as
# it is under a terminal (a handler, unlike SIG_IGN, is reset to SIG_DFL in the children).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (tiny tensors: much faster than several threads contending
    on a loaded machine); the count is restored after it."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def mnist_dir():
    from tests.helpers import NO_MNIST_REASON, shared_mnist_dir
    d = shared_mnist_dir()
    if d is None:
        pytest.skip(NO_MNIST_REASON)
    return d
