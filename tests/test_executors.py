"""Executors and faults: the same masks from 1 worker, the process pool and Dask; a worker killed
mid-run, a hung batch (--batch-timeout), a backend that fails (fallback), all with identical masks."""
from __future__ import annotations

import numpy as np
import pytest

from subsetsum_lth.cli import main
from subsetsum_lth.solvers.instances import BatchResult, InstanceBatch, Status
from subsetsum_lth.solve import SolveConfig, solve_all
from subsetsum_lth.target import random_target, save_target
from tests.helpers import SLOW_START_ENV, WORKER_FAULT_ENV, install_faults

ARGS = ["--solver", "mitm", "--weight-eps", "0.01", "--batch-size", "64", "--no-progress", "--no-plots",
        "--samples", "16", "--steps", "5", "--seed", "2"]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    path = tmp_path_factory.mktemp("target") / "t.safetensors"
    save_target(random_target((16, 10, 4), bias=True, seed=1), path)
    return path


@pytest.fixture(scope="module")
def reference(target, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(["approximate", "--target", str(target), "--out", str(out), *ARGS, "--workers", "1"]) == 0
    return (out / "masks.safetensors").read_bytes()


@pytest.fixture(scope="module")
def dask_cluster():
    pytest.importorskip("distributed")
    from distributed import LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    yield cluster
    cluster.close()


def _run(target, out, *extra, env=None, monkeypatch=None):
    if env:
        install_faults(monkeypatch, **env)
    rc = main(["approximate", "--target", str(target), "--out", str(out), *ARGS, *extra])
    assert rc == 0
    return (out / "masks.safetensors").read_bytes()


def test_process_pool_and_dask_match_one_worker(target, reference, dask_cluster, tmp_path):
    assert _run(target, tmp_path / "pool", "--workers", "2") == reference
    assert _run(target, tmp_path / "dask", "--executor", "dask",
                "--scheduler", dask_cluster.scheduler_address) == reference


def test_any_executor_object(target, reference, dask_cluster, tmp_path):
    """The library takes any concurrent.futures.Executor, e.g. Client.get_executor()."""
    from distributed import Client

    from subsetsum_lth.approximate import ApproximateConfig, approximate
    from subsetsum_lth.construction import ConstructionConfig
    from subsetsum_lth.target import load_target
    with Client(dask_cluster) as client:
        cfg = ApproximateConfig(construction=ConstructionConfig(input_domain="signed", seed=2),
                                solve=SolveConfig(solver="mitm", batch_size=64), weight_eps=0.01,
                                empirical_samples=16, ascent_steps=5, plots=False)
        approximate(load_target(target), cfg, tmp_path / "run", executor=client.get_executor(pure=False))
    assert (tmp_path / "run" / "masks.safetensors").read_bytes() == reference


def test_worker_killed_process_pool(target, reference, tmp_path, monkeypatch):
    marker = tmp_path / "fired"
    masks = _run(target, tmp_path / "run", "--workers", "2",
                 env={WORKER_FAULT_ENV: f"kill:2:{marker}"}, monkeypatch=monkeypatch)
    assert marker.exists()            # the fault did happen
    assert masks == reference


def test_worker_killed_dask_local(target, reference, tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    pytest.importorskip("cryptography", reason="dask-local needs cryptography for its TLS certificates")
    marker = tmp_path / "fired"
    masks = _run(target, tmp_path / "run", "--executor", "dask-local", "--workers", "2",
                 env={WORKER_FAULT_ENV: f"kill:2:{marker}"}, monkeypatch=monkeypatch)
    assert marker.exists()
    assert masks == reference


def test_hung_batch_is_retried(target, reference, tmp_path, monkeypatch):
    marker = tmp_path / "fired"
    masks = _run(target, tmp_path / "run", "--workers", "2", "--batch-timeout", "2",
                 env={WORKER_FAULT_ENV: f"hang:1:{marker}"}, monkeypatch=monkeypatch)
    assert marker.exists()
    assert masks == reference


def _batch(k=40, n=14, seed=0):
    rng = np.random.default_rng(seed)
    return InstanceBatch(np.arange(k), rng.uniform(-1, 1, k), rng.uniform(-1, 1, (k, n)), None, 0.01)


def test_hung_batch_reported_failed_without_retries(tmp_path, monkeypatch):
    install_faults(monkeypatch, **{WORKER_FAULT_ENV: f"hang:1:{tmp_path / 'fired'}"})
    b = _batch()
    res = solve_all(b, SolveConfig(solver="mitm", workers=1, batch_size=20, batch_timeout=1.5, retries=0,
                                   fallback=False))
    failed = res.status == Status.ERROR
    assert failed.sum() == 20 and (~failed).sum() == 20          # one batch failed, never dropped
    assert all("batch-timeout" in res.messages[int(i)] for i in b.ids[failed])


def test_the_batch_clock_waits_for_the_workers_to_start(monkeypatch):
    """Workers that take 3 s to start (spawn and import on a busy machine) under a 1 s batch limit:
    no batch is taken for hung (CI's flake: the batch after a rebuilt pool timed out during start-up)."""
    install_faults(monkeypatch, **{SLOW_START_ENV: "3"})
    b = _batch()
    res = solve_all(b, SolveConfig(solver="mitm", workers=1, batch_size=20, batch_timeout=1.0, retries=0,
                                   fallback=False))
    assert (res.status != Status.ERROR).all(), res.messages


def test_workers_that_never_start_are_a_broken_pool_not_a_hang(monkeypatch):
    from subsetsum_lth import limits
    from subsetsum_lth.errors import UserError
    install_faults(monkeypatch, **{SLOW_START_ENV: "3600"})
    monkeypatch.setattr(limits, "WORKER_START_SECONDS", 1.0)
    with pytest.raises(UserError, match="did not start within 1s"):
        solve_all(_batch(), SolveConfig(solver="mitm", workers=1, batch_size=20, batch_timeout=1.0,
                                        retries=0, fallback=False))


class _Broken:
    """A backend that fails every instance (ERROR) — the driver must fall back, not drop them."""
    name = "broken"

    def __init__(self, **kw):
        pass

    @classmethod
    def is_available(cls):
        return True, None

    def check_objective(self, objective):
        pass

    def solve(self, batch):
        k = len(batch)
        return BatchResult(batch.ids.copy(), np.zeros((k, batch.width), bool), np.full(k, np.inf),
                           np.full(k, int(Status.ERROR), np.int8), "broken", 0.0,
                           {int(i): "broken: simulated failure" for i in batch.ids})


def test_error_instances_fall_back_to_another_exact_backend(monkeypatch):
    from subsetsum_lth.solvers import registry
    monkeypatch.setitem(registry._extra, "broken", _Broken)
    b = _batch()
    want = solve_all(b, SolveConfig(solver="mitm", workers=1))
    got = solve_all(b, SolveConfig(solver="broken", workers=1))
    assert np.array_equal(got.selections, want.selections) and np.array_equal(got.status, want.status)
    kept = solve_all(b, SolveConfig(solver="broken", workers=1, fallback=False))
    assert (kept.status == Status.ERROR).all() and "simulated" in kept.messages[0]


def test_truncated_partial_batch_is_recomputed(tmp_path):
    """Resume never trusts a half-written batch file."""
    from subsetsum_lth.solve import ResumeStore, batch_key
    b = _batch()
    store = ResumeStore(tmp_path / "partial")
    first = solve_all(b, SolveConfig(solver="mitm", workers=1, batch_size=20), store=store)
    files = sorted(store.folder.glob("*.npz"))
    assert len(files) == 2
    files[0].write_bytes(files[0].read_bytes()[:50])
    again = solve_all(b, SolveConfig(solver="mitm", workers=1, batch_size=20), store=store)
    assert np.array_equal(first.selections, again.selections)
    assert batch_key("mitm", b) != batch_key("ortools", b)


class _Stopped(Exception):
    pass


def test_a_signal_during_a_batch_write_takes_effect_after_the_file_is_whole(tmp_path, monkeypatch):
    """SIGTERM arriving while a finished batch is serialised (CI: the CLI's handler raised inside
    numpy's zip writer, which then raised "Can't close the ZIP file" instead: exit 1, traceback).
    Now the signal is held until the batch file is written, then its handler runs: the file is
    complete and read back, and the handler's exception still stops the caller."""
    import signal

    from subsetsum_lth import resume_store
    from subsetsum_lth.solve import ResumeStore, batch_key
    b = _batch()
    res = solve_all(b, SolveConfig(solver="mitm", workers=1))
    real = resume_store.np.savez

    def savez_interrupted(*a, **k):
        signal.raise_signal(signal.SIGTERM)       # the signal lands mid-write
        return real(*a, **k)

    def stop(signum, frame):
        raise _Stopped()
    old = signal.signal(signal.SIGTERM, stop)
    try:
        monkeypatch.setattr(resume_store.np, "savez", savez_interrupted)
        store = ResumeStore(tmp_path / "partial")
        with pytest.raises(_Stopped):
            store.put(batch_key("mitm", b), res, b, "mitm")
        monkeypatch.undo()
        got = store.get(batch_key("mitm", b), b, "mitm")
        assert got is not None and np.array_equal(got.selections, res.selections)
    finally:
        signal.signal(signal.SIGTERM, old)


# ----------------------------------------------------------------------------- backend facts

def test_driver_reads_batch_size_and_fallback_order_from_the_backends(monkeypatch):
    """Default batch sizes and the fallback order are class attributes of the backends; the driver
    has no list of its own: a plug-in that ranks first is the fallback, one without the
    attributes gets SolverBackend's defaults."""
    from subsetsum_lth.solve import default_batch, fallback_order, fallback_solver
    from subsetsum_lth.solvers import registry
    from subsetsum_lth.solvers.base import SolverBackend
    from subsetsum_lth.solvers.mitm import MeetInTheMiddleSolver

    for name in registry.BUILTIN:
        assert default_batch(name) == registry.get_backend_class(name).default_batch
        assert SolveConfig(solver=name).resolved_batch() == default_batch(name)
    assert SolveConfig(solver="mitm", batch_size=7).resolved_batch() == 7
    assert fallback_order() == ["mitm", "auto", "ortools"]
    assert fallback_solver("mitm", "error", 40) == "auto"         # mitm tried first, unless it is the one that failed
    assert fallback_solver("auto", "error", 40) == "mitm"         # mitm's reach is 40, as it enumerates
    assert fallback_solver("auto", "error", 41) == "ortools"      # beyond mitm's reach
    assert fallback_solver("ortools", "error", 20) == "mitm"

    class First(MeetInTheMiddleSolver):
        name = "first"
        fallback_rank = -1
        default_batch = 3
    monkeypatch.setitem(registry._extra, "first", First)
    monkeypatch.setitem(registry._extra, "broken", _Broken)      # duck-typed: no attributes
    assert fallback_order() == ["first", "mitm", "auto", "ortools"]
    assert fallback_solver("broken", "error", 20) == "first"
    assert default_batch("first") == 3 and default_batch("broken") == SolverBackend.default_batch
    got = solve_all(_batch(), SolveConfig(solver="broken", workers=1))
    assert all("then" not in m for m in got.messages.values()) and (got.status == Status.OPTIMAL).all()


def test_pool_or_not_is_decided_in_one_place(monkeypatch):
    """``in_process`` decides (CLI and driver alike); a backend with ``uses_pool = False`` runs in
    this process whatever the workers, executor or a pool handed over say."""
    import concurrent.futures as cf

    from subsetsum_lth import solve
    from subsetsum_lth.solvers import registry
    from subsetsum_lth.solvers.mitm import MeetInTheMiddleSolver

    ip = solve.in_process
    assert ip(SolveConfig(solver="mitm", workers=1))
    assert not ip(SolveConfig(solver="mitm", workers=2))
    assert ip(SolveConfig(solver="mitm", workers=2), n_batches=1)
    assert not ip(SolveConfig(solver="mitm", workers=1, batch_timeout=5.0))
    assert not ip(SolveConfig(solver="mitm", workers=1, executor="dask-local"))

    class Local(MeetInTheMiddleSolver):
        name = "local"
        uses_pool = False
    monkeypatch.setitem(registry._extra, "local", Local)
    assert ip(SolveConfig(solver="local", workers=4, batch_timeout=5.0, executor="dask-local"))

    def no_pool(*a, **k):
        raise AssertionError("a pool was used")
    monkeypatch.setattr(solve, "_run_in_pool", no_pool)
    monkeypatch.setattr(solve, "make_pool", no_pool)
    b = _batch()
    want = solve_all(b, SolveConfig(solver="mitm", workers=1, batch_size=10))
    with cf.ThreadPoolExecutor(2) as given:
        got = solve_all(b, SolveConfig(solver="local", workers=4, batch_size=10), executor=given)
    assert np.array_equal(got.selections, want.selections) and np.array_equal(got.status, want.status)
    with pytest.raises(AssertionError, match="a pool was used"):
        solve_all(b, SolveConfig(solver="mitm", workers=4, batch_size=10))
