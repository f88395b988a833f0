"""numpy's BLAS is held to one thread while mitm solves and in solver worker processes
(threadpoolctl), and the caller's limits come back afterwards."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np  # noqa: F401  (loads numpy's BLAS)
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from subsetsum_lth.solvers.mitm import single_thread_blas


def blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


pytestmark = pytest.mark.skipif(not blas_threads(), reason="no BLAS that threadpoolctl knows is loaded")


def test_single_thread_inside_restored_after_also_nested():
    with threadpool_limits(3, "blas"):
        assert set(blas_threads()) == {3}
        with single_thread_blas():
            assert set(blas_threads()) == {1}
            with single_thread_blas():
                assert set(blas_threads()) == {1}
            assert set(blas_threads()) == {1}          # the outer use still holds it
        assert set(blas_threads()) == {3}


def test_mitm_solves_on_one_blas_thread(monkeypatch):
    from subsetsum_lth.solvers import mitm
    seen = []
    real = mitm._solve_arrays

    def spy(*args):
        seen.append(blas_threads())
        return real(*args)
    monkeypatch.setattr(mitm, "_solve_arrays", spy)
    with threadpool_limits(3, "blas"):
        t = np.array([0.5]); c = np.array([[0.25, 0.25, 0.7]])
        sel, ok = mitm.solve_arrays(t, c, np.array([3]), np.array([0.01]), "error")
        assert set(blas_threads()) == {3}
    assert seen and set(seen[0]) == {1} and ok.tolist() == [True]


def _worker_blas_threads():
    return blas_threads()


def test_worker_initializer_holds_blas_to_one_thread():
    from subsetsum_lth.executors import _worker_init
    with threadpool_limits(3, "blas"):
        with ProcessPoolExecutor(1, initializer=_worker_init) as pool:
            assert set(pool.submit(_worker_blas_threads).result(60)) == {1}
