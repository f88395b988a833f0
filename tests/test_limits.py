"""Refuse what cannot finish, bounded fallbacks, signals, a private local cluster, bounded IDX reads.

Every CLI case runs in a subprocess with a short timeout, so a regression to a hang fails
instead of hanging the test run."""
from __future__ import annotations

import ast
import math
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from subsetsum_lth import limits
from subsetsum_lth.target import random_target, save_target

from tests.helpers import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60


_env = subprocess_env


def _cli(*args, timeout=TIMEOUT, **env):
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "subsetsum_lth", *map(str, args)], capture_output=True,
                       text=True, timeout=timeout, env=_env(**env))
    return p.returncode, p.stdout, p.stderr, time.monotonic() - t0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "t.safetensors"
    save_target(random_target((6, 5, 3), bias=True, seed=1), path)
    return path


# ------------------------------------------------------------------ refuse what cannot finish

REFUSED = [
    ("eps-1e-300", ["--eps", "1e-300"], ("would not finish", "--eps", "--max-hours", "10^")),
    ("block-width-10000", ["--block-width", "10000"], ("would not finish", "--block-width", "m = 10,000")),
    ("grow-1000000", ["--grow", "1000000"], ("--grow 1,000,000", "beyond exact search", "lower --grow")),
    ("C-1e6", ["--C", "1e6", "--width", "auto"], ("would not finish", "--c", "--max-hours")),
    ("max-hours-tiny", ["--weight-eps", "0.01", "--max-hours", "1e-9"], ("would not finish", "--max-hours 1e-09")),
]


@pytest.mark.parametrize("args,words", [(a, w) for _, a, w in REFUSED], ids=[i for i, _, _ in REFUSED])
def test_beyond_reach_is_refused_before_any_work(tiny, tmp_path, args, words):
    out = tmp_path / "run"
    rc, _, err, _ = _cli("approximate", "--target", tiny, "--out", out, "--no-progress", "--no-plots", *args)
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w.lower() in err.lower(), (w, err)
    assert not out.exists(), "a refused run left a folder behind"


def test_tiny_weight_eps_on_a_wide_target_is_refused(tmp_path):
    """τ = 1e-12 makes the default (adaptive) starting width 86 on a 784-300-10 target (the
    formula's, --width auto: 89/79): instances of ~43 live coefficients, beyond exact search,
    for 470,000 instances: refused with the estimate."""
    out = tmp_path / "run"
    rc, _, err, _ = _cli("approximate", "--synthetic", "--weight-eps", "1e-12", "--out", out, "--no-progress")
    assert rc == 2, err
    assert "would not finish" in err and "--weight-eps" in err and "at most n = 40" in err, err
    assert not out.exists()


@pytest.mark.parametrize("width", ["adaptive", "auto"])
def test_default_mnist_shaped_run_is_within_reach(width):
    """The estimate must not refuse the README's main job (784-500-10, τ = 0.01, 2 cores), with
    the default width (adaptive) nor with --width auto (the formula's starting width)."""
    from subsetsum_lth.construction import ConstructionConfig, plan_layers
    target = random_target((784, 500, 10), bias=True, seed=0)
    plans = plan_layers(target, ConstructionConfig(eps=0.01, width=width))
    est = limits.estimate(plans, "ortools", 2, None)
    assert est.hours < 0.1 and est.memory_bytes < 4e9
    limits.check_reach(est, limits.DEFAULT_MAX_HOURS, "--weight-eps")


def test_instance_cost_is_the_binomial_expectation():
    """log2_instance_seconds against a direct sum over n ~ Binomial(m, 1/2)."""
    for m in (1, 7, 30, 60):
        direct = sum(math.comb(m, n) / 2 ** m * (2 ** (n // 2) + 2 ** (n - n // 2)) / limits.SUMS_PER_SECOND
                     for n in range(m + 1))
        assert math.isclose(2 ** limits.log2_instance_seconds(m, None, 10.0), direct, rel_tol=1e-9)
    # beyond exact search an instance costs at least the time limit
    with_limit = 2 ** limits.log2_instance_seconds(100, 40, 10.0)
    assert with_limit >= 10.0 * 0.97           # P(n > 40 | m = 100) ~ 0.98
    assert limits.log2_instance_seconds(10**7, 40, 10.0) > 10**6     # huge m: no overflow


def test_growth_never_passes_exact_search():
    """The reach test is on live counts (an instance's n), not block widths."""
    allowed = limits.growth_within_reach(np.array([14, 39, 40, 41]), 40)
    assert allowed.tolist() == [True, True, True, False]
    assert limits.growth_within_reach(np.array([10**6]), None).tolist() == [True]


def test_growth_budget_spends_only_what_it_has():
    """A charge past the core-seconds or the entries left is refused with the reason, and
    spends nothing; one within both is spent."""
    b = limits.GrowthBudget(core_seconds=10.0, entries=1000)
    assert b.charge(4.0, 100) is None
    assert (b.core_seconds, b.entries) == (6.0, 900)
    why = b.charge(7.0, 10)
    assert "--max-hours" in why and (b.core_seconds, b.entries) == (6.0, 900)
    assert "float32 weights" in b.charge(1.0, 901) and (b.core_seconds, b.entries) == (6.0, 900)
    assert limits.instance_seconds(20, 40, 10.0) == 2 * 2.0 ** 10 / limits.SUMS_PER_SECOND
    assert limits.instance_seconds(41, 40, 10.0) == 10.0


def test_zero_ascent_steps_is_allowed(tiny, tmp_path):
    """--steps 0: the empirical bound evaluates its points without gradient ascent."""
    from subsetsum_lth.cli import main
    assert main(["approximate", "--target", str(tiny), "--out", str(tmp_path / "run"), "--solver", "mitm",
                 "--block-width", "12", "--weight-eps", "0.05", "--allow-infeasible", "--samples", "4",
                 "--steps", "0", "--workers", "1", "--no-progress", "--no-plots"]) == 0


# ------------------------------------------------------------------ bounded fallback

def test_fallback_beyond_exact_search_is_time_limited():
    """mitm refuses n > 40 (its reach); its fallback (auto) gets the per-instance time limit for n > 40,
    so instances of 60 live coefficients end TIMEOUT in bounded time instead of running on."""
    from subsetsum_lth.solvers.instances import InstanceBatch, Status
    from subsetsum_lth.solve import SolveConfig, solve_all
    rng = np.random.default_rng(0)
    b = InstanceBatch(np.arange(2), np.array([0.3, 0.1]), rng.uniform(-1, 1, (2, 60)) * 0.3, None, 1e-12)
    t0 = time.monotonic()
    res = solve_all(b, SolveConfig(solver="mitm", workers=1, time_limit=0.5))
    assert time.monotonic() - t0 < 15
    assert set(res.status.tolist()) <= {int(Status.TIMEOUT), int(Status.FEASIBLE)}
    assert all("beyond its reach n <= 40" in res.messages[i] for i in (0, 1) if res.status[i] == Status.TIMEOUT)


# ------------------------------------------------------------------ workers capped at cores

def test_workers_capped_at_cores(caplog):
    from subsetsum_lth.executors import make_pool
    pool = make_pool("process", 1000)
    try:
        assert pool.workers == limits.available_cores() and pool.capacity == pool.workers
    finally:
        pool.close()
    assert any("--workers 1000 capped to" in r.getMessage() for r in caplog.records)


def test_workers_1000_cli_says_so(tiny, tmp_path):
    rc, _, err, _ = _cli("approximate", "--target", tiny, "--out", tmp_path / "run", "--solver", "mitm",
                         "--weight-eps", "0.05", "--block-width", "12", "--workers", "1000", "--batch-size", "8",
                         "--samples", "16", "--steps", "2", "--no-progress", "--no-plots", "--allow-infeasible")
    assert rc == 0, err
    assert f"--workers 1000 capped to {limits.available_cores()}" in err


# ------------------------------------------------------------------ IDX reads bounded

def _gzip_stream(header: bytes, zeros: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)      # gzip container
    parts = [c.compress(header)]
    chunk = bytes(1 << 20)
    for _ in range(zeros >> 20):
        parts.append(c.compress(chunk))
    parts.append(c.flush())
    return b"".join(parts)


_PARSE = """
import resource, sys
from subsetsum_lth.data.mnist import parse_idx
from subsetsum_lth.errors import DataError
print("BEFORE_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
try:
    parse_idx(sys.argv[1], (10000, 28, 28) if len(sys.argv) > 2 else None)
    print("ACCEPTED")
except DataError as exc:
    print("REFUSED", exc)
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.parametrize("kind", ["more-data-than-declared", "forged-huge-dims", "not-mnist-dims"])
def test_gzip_bomb_refused_with_bounded_memory(tmp_path, kind):
    """512 MB of zeros (~0.5 MB of gzip): refused after reading at most the declared size + 1 byte,
    or from the header alone; the reader's memory stays far below the bomb's size."""
    if kind == "more-data-than-declared":      # a correct MNIST header, then far more data
        header, expect, shape = struct.pack(">IIII", 0x803, 10000, 28, 28), "trailing bytes", True
    elif kind == "forged-huge-dims":           # a header claiming 4e9 x 4e9 x 1 images
        header, expect, shape = struct.pack(">IIII", 0x803, 2**32 - 1, 2**32 - 1, 1), "more than any MNIST", False
    else:
        header, expect, shape = struct.pack(">IIII", 0x803, 700000, 28, 28), "expected (10000, 28, 28)", True
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(_gzip_stream(header, 512 << 20))
    assert path.stat().st_size < 2 << 20
    args = [sys.executable, "-c", _PARSE, str(path)] + (["mnist"] if shape else [])
    p = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    assert p.returncode == 0, p.stderr
    assert "REFUSED" in p.stdout and expect in p.stdout, p.stdout
    grew_mb = (int(p.stdout.split("MAXRSS_KB")[1]) - int(p.stdout.split("BEFORE_KB")[1].split()[0])) / 1024
    assert grew_mb < 64, f"reading a refused file took {grew_mb:.0f} MB"


# ------------------------------------------------------------------ signals

SIG_ARGS = ["--solver", "mitm", "--weight-eps", "0.01", "--batch-size", "16", "--samples", "16", "--steps", "2",
            "--no-progress", "--no-plots", "--seed", "3"]


@pytest.fixture(scope="module")
def sig_target(tmp_path_factory):
    path = tmp_path_factory.mktemp("sig") / "t.safetensors"
    save_target(random_target((24, 12, 4), bias=True, seed=2), path)
    return path


@pytest.fixture(scope="module")
def sig_reference(sig_target, tmp_path_factory):
    out = tmp_path_factory.mktemp("sigref") / "run"
    rc, _, err, _ = _cli("approximate", "--target", sig_target, "--out", out, *SIG_ARGS, "--workers", "1")
    assert rc == 0, err
    return (out / "masks.safetensors").read_bytes()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_keeps_finished_batches_then_resume(sig_target, sig_reference, tmp_path, workers):
    """SIGTERM (sent by the fault hook right after the 3rd stored batch) unwinds like Ctrl-C:
    exit 143, one line, the finished batches stay in partial/; --resume completes with masks
    byte-identical to an uninterrupted run."""
    from tests.helpers import FAULT_ENV
    out = tmp_path / "run"
    rc, _, err, _ = _cli("approximate", "--target", sig_target, "--out", out, *SIG_ARGS, "--workers", workers,
                         **{FAULT_ENV: "3:SIGTERM"})
    assert rc == 143, err
    assert err.strip().splitlines() == ["interrupted (SIGTERM); finished work is kept in the run folder "
                                        "(use --resume)"], err
    assert len(list((out / "partial").glob("*.npz"))) >= 3
    assert not (out / "report.json").exists()
    rc, _, err, _ = _cli("approximate", "--target", sig_target, "--out", out, *SIG_ARGS, "--workers", workers,
                         "--resume")
    assert rc == 0, err
    assert (out / "masks.safetensors").read_bytes() == sig_reference


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups")
@pytest.mark.parametrize("executor", ["process", "dask-local"])
def test_ctrl_c_to_the_process_group_prints_one_line(sig_target, tmp_path, executor):
    """SIGINT to the whole group (what a terminal's Ctrl-C does) while 2 workers run: the workers
    ignore it, the parent stops them and prints one line, exit 130."""
    if executor == "dask-local":
        pytest.importorskip("distributed", reason="dask[distributed] is not installed")
        pytest.importorskip("cryptography", reason="dask-local's TLS needs the cryptography package")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "subsetsum_lth", "approximate", "--target", str(sig_target), "--out", str(out),
           *SIG_ARGS, "--weight-eps", "0.002", "--batch-size", "4", "--workers", "2", "--executor", executor]
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and p.poll() is None and not list((out / "partial").glob("*.npz")):
            time.sleep(0.05)
        if p.poll() is not None:
            pytest.skip("the run finished before it could be interrupted (machine too fast)")
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == ["interrupted (SIGINT); finished work is kept in the run folder "
                                        "(use --resume)"], err


SPAWN_MASK_SCRIPT = """
import multiprocessing as mp, signal, sys
from subsetsum_lth.executors import parent_signals_blocked

def report(conn):
    conn.send(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    r, w = ctx.Pipe(duplex=False)          # a Pipe, not a Queue: a Queue's lock starts the tracker early
    with parent_signals_blocked():
        p = ctx.Process(target=report, args=(w,))
        p.start()
    print(r.recv())
    p.join()
"""


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="needs POSIX signal masks")
def test_the_first_spawned_process_starts_with_ctrl_c_blocked(tmp_path):
    """The first spawn of a fresh process also starts multiprocessing's resource tracker, whose
    start-up unblocks SIGINT/SIGTERM: the worker started under ``parent_signals_blocked`` must
    still begin its life with both blocked (else a Ctrl-C during its imports prints a traceback)."""
    script = tmp_path / "spawn_mask.py"
    script.write_text(SPAWN_MASK_SCRIPT)
    r = subprocess.run([sys.executable, str(script)], env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    blocked = set(ast.literal_eval(r.stdout.strip()))
    assert {int(signal.SIGINT), int(signal.SIGTERM)} <= blocked, r.stdout


def test_quiet_dask_logs_silences_children_that_distributed_gives_their_own_level():
    """distributed's logging config sets 'tornado.application' to error: a level set on 'tornado'
    alone let its closed-stream tracebacks through after Ctrl-C (the dask-local flake)."""
    import logging

    from subsetsum_lth.executors import quiet_dask_logs
    names = ("tornado.application", "distributed.client", "distributed.comm.tcp")
    old = {n: logging.getLogger(n).level for n in ("distributed", "tornado", "asyncio", *names)}
    try:
        logging.getLogger("tornado.application").setLevel(logging.ERROR)
        logging.getLogger("distributed.client").setLevel(logging.WARNING)
        quiet_dask_logs()
        for n in names:
            assert not logging.getLogger(n).isEnabledFor(logging.ERROR), n
    finally:
        for n, level in old.items():
            logging.getLogger(n).setLevel(level)


# ------------------------------------------------------------------ the local cluster is private

def test_dask_local_is_loopback_tls_only():
    pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    pytest.importorskip("cryptography", reason="dask-local's TLS needs the cryptography package")
    from distributed import Client

    from subsetsum_lth.executors import make_pool
    pool = make_pool("dask-local", 1)
    try:
        client = pool.client
        addr = client.scheduler.address
        assert addr.startswith("tls://127.0.0.1:"), addr
        assert all(w.startswith("tls://127.0.0.1:") for w in client.scheduler_info()["workers"])
        assert client.submit(int, "41").result(timeout=30) == 41        # the run's own client works
        port = addr.rsplit(":", 1)[1]
        with pytest.raises(Exception):                                   # a plain client cannot
            Client(f"tcp://127.0.0.1:{port}", timeout="3s").submit(int, "1").result(timeout=3)
        with pytest.raises(Exception):                                   # nor TLS without the run's certs
            Client(f"tls://127.0.0.1:{port}", timeout="3s").submit(int, "1").result(timeout=3)
    finally:
        pool.close()


def test_dask_local_without_cryptography_is_refused(monkeypatch):
    import importlib.util

    from subsetsum_lth import executors
    from subsetsum_lth.errors import UserError
    if not executors.dask_available()[0]:
        pytest.skip("dask[distributed] is not installed")
    real = importlib.util.find_spec
    monkeypatch.setattr(executors.importlib.util, "find_spec",
                        lambda name, *a: None if name == "cryptography" else real(name, *a))
    with pytest.raises(UserError, match="cryptography.*--executor process"):
        executors.check_executor("dask-local")


def test_plain_remote_scheduler_is_recognised():
    from subsetsum_lth.executors import _plain_remote
    assert _plain_remote("tcp://10.0.0.1:8786") and _plain_remote("10.0.0.1:8786")
    assert not _plain_remote("tls://10.0.0.1:8786") and not _plain_remote("tcp://127.0.0.1:8786")


@pytest.mark.parametrize("command", ["certify", "edge-popup", "train-target", "compare"])
def test_sigterm_in_a_command_without_resume_does_not_point_at_resume(command, monkeypatch, capsys, tmp_path):
    """Only approximate has --resume; an interrupted edge-popup/train-target/compare/certify said
    'finished work is kept in the run folder (use --resume)', an option it does not have."""
    import importlib

    from subsetsum_lth import cli
    mod = importlib.import_module("subsetsum_lth.commands." + command.replace("-", "_"))

    def interrupted(args):
        raise cli.Terminated()

    monkeypatch.setattr(mod, "run", interrupted)
    argv = {"certify": ["certify", str(tmp_path)], "edge-popup": ["edge-popup", "--wide", "4,8,2", "--out", str(tmp_path / "o")],
            "train-target": ["train-target", "--out", str(tmp_path / "o")],
            "compare": ["compare", str(tmp_path), "--out", str(tmp_path / "o")]}[command]
    assert cli.main(argv) == 143
    assert capsys.readouterr().err.strip().splitlines() == [
        "interrupted (SIGTERM); the command did not complete: run it again"]
    assert sorted(os.listdir(tmp_path)) == []
