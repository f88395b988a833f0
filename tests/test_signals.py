"""Hangs that ignored signals (issue 21): SIGTERM/SIGINT end a command within seconds, also inside
a native solver call (CP-SAT Solve, Gurobi optimize) with an unbounded --time-limit, and inside
`bench solvers` at a large n; what was computed stays resumable. A Dask --scheduler that never
answers (a silent listener, an HTTP server) is a one-line error, exit 2, with nothing written;
dask-local opens no port that answers HTTP.

Every bound on seconds here is a hang bound (a generous one), not a performance assertion."""
from __future__ import annotations

import http.server
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from subsetsum_lth.cli import main
from subsetsum_lth.target import random_target, save_target

from tests.helpers import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
#: a command must end this long after the signal (it ended never, or after 17-41 minutes, before)
STOP_BOUND = 15.0
#: whole-command bound for the subprocesses (a hang fails the test instead of blocking the suite)
TIMEOUT = 90


_env = subprocess_env


def _start(*args, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "subsetsum_lth", *map(str, args)], env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, p: subprocess.Popen, seconds: float = TIMEOUT) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and p.poll() is None and not cond():
        time.sleep(0.05)


def _signal_and_wait(p: subprocess.Popen, sig: int) -> tuple[int, str, float]:
    """Send ``sig``; (exit code, stderr, seconds until the process ended). Kills it past the bound."""
    t0 = time.monotonic()
    p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=STOP_BOUND)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        pytest.fail(f"still running {STOP_BOUND:g} s after {signal.Signals(sig).name}: {err[-2000:]}")
    return p.returncode, err, time.monotonic() - t0


def _interrupt(p: subprocess.Popen, ready, sig: int, settle: float = 0.0,
               may_finish: bool = False) -> tuple[int, str]:
    """Once ``ready()`` (the command is where the test wants it) and ``settle`` seconds more, send
    ``sig``: (exit code, stderr). A command that ended before is skipped when ``may_finish`` (a
    fast machine), else a failure; the process never outlives the test."""
    try:
        _wait_for(ready, p)
        if p.poll() is not None:
            if may_finish:
                pytest.skip("the run finished before it could be interrupted (machine too fast)")
            pytest.fail(f"the command ended before the signal: {p.communicate()[1][-2000:]}")
        time.sleep(settle)
        rc, err, _ = _signal_and_wait(p, sig)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    return rc, err


def _complete_run(*args) -> dict:
    """Run ``subsetsum-lth ARGS`` to completion; the bytes of every file of its --out folder."""
    out = Path(args[args.index("--out") + 1])
    assert subprocess.run([sys.executable, "-m", "subsetsum_lth", *map(str, args)], env=_env(),
                          capture_output=True, timeout=TIMEOUT).returncode == 0
    return _files(out)


def _files(folder: Path) -> dict:
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}


def _solver_available(name: str) -> bool:
    from subsetsum_lth.solvers.registry import backend_info
    return bool(backend_info(name)["available"])


# ------------------------------------------------------------------ native solver calls

@pytest.fixture(scope="module")
def small_target(tmp_path_factory):
    path = tmp_path_factory.mktemp("sig") / "t.safetensors"
    save_target(random_target((6, 3), bias=True, seed=1), path)
    return path


#: blocks of 72 units: ~36 live coefficients per instance, which CP-SAT and Gurobi cannot prove
#: optimal in minutes; --time-limit 1e300 let the first such solve run for ever (now refused above a
#: week, and capped at an hour per instance: a week still means a solve that only a stop ends)
HARD = ["--weight-eps", "0.001", "--width", "formula", "--block-width", "72", "--batch-size", "1",
        "--workers", "1", "--time-limit", "604800", "--no-progress", "--no-plots", "--samples", "8", "--steps", "1"]


@pytest.mark.parametrize("solver,sig", [("cpsat", signal.SIGTERM), ("cpsat", signal.SIGINT),
                                        ("gurobi", signal.SIGTERM), ("gurobi", signal.SIGINT)])
def test_signal_stops_a_native_solve_in_this_process(small_target, tmp_path, solver, sig):
    """approximate --solver cpsat|gurobi --time-limit 604800 (a week), solving in this process: a signal
    inside the native solve ends the command within seconds (it ran on for 29-41 minutes, or, for
    SIGINT and CP-SAT/Gurobi, which caught Ctrl-C themselves, went on with the next instance)."""
    if not _solver_available(solver):
        pytest.skip(f"{solver} is not available here")
    out = tmp_path / "run"
    p = _start("approximate", "--target", small_target, "--out", out, "--solver", solver, *HARD)
    try:
        _wait_for(lambda: (out / "partial").is_dir(), p)
        assert p.poll() is None, p.communicate()[1]
        time.sleep(3.0)                       # inside the first solve (it takes minutes)
        assert p.poll() is None and not list((out / "partial").glob("*.npz"))
        rc, err, _ = _signal_and_wait(p, sig)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert rc == 128 + int(sig), err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"interrupted ({signal.Signals(sig).name}); finished work is "
                                            "kept in the run folder (use --resume)"), err
    assert "capped to 3600 s per instance" in err          # the one-line note on the cap
    assert (out / "manifest.json").exists() and (out / "partial").is_dir()


def test_interrupted_overwrite_says_where_the_work_is_and_keeps_the_old_run(small_target, tmp_path):
    """Ctrl-C inside an --overwrite of a complete run: the old run is byte-for-byte unchanged, and
    the one line names the staging folder that holds the finished batches (the message used to
    point at the run folder, which holds none of them)."""
    out = tmp_path / "run"
    before = _complete_run("approximate", "--target", small_target, "--out", out, "--solver", "mitm",
                           "--weight-eps", "0.05", "--no-progress", "--no-plots", "--samples", "8", "--steps", "1",
                           "--workers", "1")
    stage = tmp_path / "run.overwriting"
    p = _start("approximate", "--target", small_target, "--out", out, "--solver", "cpsat", *HARD, "--overwrite")
    # inside the first (minutes-long) CP-SAT solve
    rc, err = _interrupt(p, lambda: (stage / "partial").is_dir(), signal.SIGINT, settle=2.0)
    assert rc == 130, err
    assert _files(out) == before
    assert "Traceback" not in err
    # no batch finished (the first solve takes minutes): nothing kept, and nothing claimed
    assert err.strip().splitlines()[-1] == ("interrupted (SIGINT); the old run is unchanged; no batch of the "
                                            "new run had finished, nothing of it is kept"), err
    assert not stage.exists()


def test_interrupted_overwrite_with_finished_batches_names_the_staging_folder(tmp_path):
    """The same after a batch of the new run finished: the line names the staging folder that
    keeps it (running the same command again continues it), the old run unchanged."""
    target = tmp_path / "t.safetensors"
    save_target(random_target((40, 20), bias=True, seed=1), target)
    out, stage = tmp_path / "run", tmp_path / "run.overwriting"
    base = ["approximate", "--target", target, "--out", out, "--no-progress", "--no-plots", "--samples", "8",
            "--steps", "1", "--workers", "1"]
    before = _complete_run(*base, "--solver", "mitm")
    p = _start(*base, "--solver", "cpsat", "--weight-eps", "0.01", "--width", "formula", "--block-width", "16",
               "--batch-size", "4", "--overwrite", "--allow-infeasible")
    rc, err = _interrupt(p, lambda: (stage / "partial").is_dir() and any((stage / "partial").glob("*.npz")),
                         signal.SIGINT, may_finish=True)
    assert rc == 130, err
    assert _files(out) == before
    assert err.strip().splitlines()[-1] == (f"interrupted (SIGINT); the old run is unchanged; finished work is kept "
                                            f"in {stage} (run the same command again to continue it)"), err
    assert any((stage / "partial").glob("*.npz"))


#: CP-SAT on small blocks (a few ms per instance; deterministic: one worker, fixed seed, no limit hit)
EASY = ["--solver", "cpsat", "--weight-eps", "0.01", "--width", "formula", "--block-width", "16",
        "--batch-size", "4", "--workers", "1", "--no-progress", "--no-plots", "--samples", "8", "--steps", "1",
        "--seed", "3", "--allow-infeasible"]


def test_sigterm_during_cpsat_solves_then_resume_is_byte_identical(tmp_path, caplog):
    """SIGTERM while CP-SAT solves in this process (from outside, at a moment the test does not
    choose): exit 143; the batches stored so far are reused by --resume, whose masks equal an
    uninterrupted run's."""
    target = tmp_path / "t.safetensors"
    save_target(random_target((12, 8, 3), bias=True, seed=1), target)
    ref = tmp_path / "ref"
    assert main(["approximate", "--target", str(target), "--out", str(ref), *EASY]) == 0
    out = tmp_path / "run"
    p = _start("approximate", "--target", target, "--out", out, *EASY)
    rc, err = _interrupt(p, lambda: len(list((out / "partial").glob("*.npz"))) >= 2, signal.SIGTERM,
                         may_finish=True)
    assert rc == 143, err
    kept = list((out / "partial").glob("*.npz"))
    assert len(kept) >= 2 and not (out / "masks.safetensors").exists()
    caplog.set_level(logging.INFO, logger="subsetsum_lth.solve")
    assert main(["approximate", "--target", str(target), "--out", str(out), *EASY, "--resume"]) == 0
    reused = [int(r.getMessage().split()[1]) for r in caplog.records
              if r.getMessage().startswith("resume: ") and "already solved" in r.getMessage()]
    assert sum(reused) >= len(kept), caplog.text         # the kept batches were not solved again
    assert (out / "masks.safetensors").read_bytes() == (ref / "masks.safetensors").read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_bench_solvers_large_n_stops_on_a_signal(sig):
    """bench solvers --n 1000 ran CP-SAT with no time limit at all (29-41 minutes after SIGTERM)."""
    p = _start("-v", "bench", "solvers", "--n", "1000", "--count", "4", "--baseline-count", "2",
               "--solvers", "cpsat")
    seen: list[str] = []

    def reader():
        for line in p.stderr:
            seen.append(line)
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        _wait_for(lambda: any("timing cpsat" in line for line in seen), p)
        assert p.poll() is None, "".join(seen)
        time.sleep(2.0)                                  # inside the warm-up solve
        t0 = time.monotonic()
        p.send_signal(sig)
        try:
            p.wait(timeout=STOP_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"bench still running {STOP_BOUND:g} s after {signal.Signals(sig).name}")
        assert time.monotonic() - t0 < STOP_BOUND
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        t.join(5)
    err = "".join(seen)
    assert p.returncode == 128 + int(sig), err
    assert err.strip().splitlines()[-1] == (f"interrupted ({signal.Signals(sig).name}); the command did "
                                            "not complete: run it again"), err


def test_native_call_is_stopped_by_a_stop_request():
    """The mechanism, in-process: a CP-SAT solve that would run for ever returns at once after
    request_stop() from another thread (as the signal watcher calls it)."""
    pytest.importorskip("ortools")
    import numpy as np
    from ortools.sat.python import cp_model

    from subsetsum_lth.solvers import interrupt
    from subsetsum_lth.solvers._scaled import cp_solve, cp_solver
    rng = np.random.default_rng(0)
    coef = [int(x) for x in rng.integers(1, 2**39, 120)]
    m = cp_model.CpModel()
    s = [m.NewBoolVar(f"s{j}") for j in range(len(coef))]
    err = m.NewIntVar(0, sum(coef), "err")
    total = cp_model.LinearExpr.WeightedSum(s, coef)
    target = sum(coef) // 3 + 12345
    m.Add(total - target <= err)
    m.Add(target - total <= err)
    m.Minimize(err)
    solver = cp_solver(time_limit=1e300)
    assert solver.parameters.max_time_in_seconds == interrupt.MAX_TIME_LIMIT
    assert not solver.parameters.catch_sigint_signal
    timer = threading.Timer(1.0, interrupt.request_stop)
    timer.start()
    try:
        st = cp_solve(solver, m)
    finally:
        timer.cancel()
        interrupt.reset()
    assert st in (cp_model.FEASIBLE, cp_model.UNKNOWN)     # stopped, not proved optimal
    assert solver.wall_time < STOP_BOUND


# ------------------------------------------------------------------ Dask scheduler that does not answer

def _silent_listener():
    """A loopback listener that accepts connections and never writes a byte (stops itself)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()
    held = []

    def serve():
        deadline = time.monotonic() + TIMEOUT
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass
        for c in held:
            c.close()
        srv.close()
    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1], stop, held


def _silent():
    return _silent_listener()[:2]


def _http_server():
    """A tiny threading HTTP server on loopback (answers 200 to GET; stops itself)."""
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    srv.daemon_threads = True
    stop = threading.Event()
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def stopper():
        stop.wait(TIMEOUT)
        srv.shutdown()
        srv.server_close()
    threading.Thread(target=stopper, daemon=True).start()
    return srv.server_address[1], stop


@pytest.fixture
def dask_connect_3s(monkeypatch):
    pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    import dask
    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
        yield


@pytest.mark.parametrize("server", [_silent, _http_server], ids=["silent-listener", "http-server"])
def test_scheduler_that_never_answers_is_one_line_exit_2_and_nothing_written(server, dask_connect_3s, tmp_path,
                                                                              capsys):
    port, stop = server()
    target = tmp_path / "t.safetensors"
    save_target(random_target((6, 3), bias=True, seed=1), target)
    out = tmp_path / "out"
    try:
        rc = main(["approximate", "--target", str(target), "--out", str(out), "--solver", "mitm",
                   "--executor", "dask", "--scheduler", f"tcp://127.0.0.1:{port}", "--no-progress", "--no-plots"])
    finally:
        stop.set()
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot connect to the Dask scheduler at "
                                                   f"tcp://127.0.0.1:{port}: no answer within 3 s"), err
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


def test_refused_scheduler_says_so(dask_connect_3s, tmp_path, capsys):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                                     # a free port: connections are refused
    target = tmp_path / "t.safetensors"
    save_target(random_target((6, 3), bias=True, seed=1), target)
    out = tmp_path / "out"
    rc = main(["approximate", "--target", str(target), "--out", str(out), "--solver", "mitm",
               "--executor", "dask", "--scheduler", f"tcp://127.0.0.1:{port}", "--no-progress", "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"cannot connect to the Dask scheduler at tcp://127.0.0.1:{port}" in err, err
    # why, in distributed's words or ours: refused, or (on a loaded machine, where the 3 s bound
    # passes before distributed gives up its retries) timed out
    assert any(w in err for w in ("Connection refused", "no answer within 3 s", "Timed out trying to connect")), err
    assert not out.exists() or not any(out.iterdir())


def test_sigterm_while_connecting_to_a_silent_scheduler(tmp_path):
    """The wait for a scheduler that never answers gave way to no signal (17 minutes after SIGTERM)."""
    pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    port, stop, accepted = _silent_listener()
    target = tmp_path / "t.safetensors"
    save_target(random_target((6, 3), bias=True, seed=1), target)
    out = tmp_path / "out"
    p = _start("approximate", "--target", target, "--out", out, "--solver", "mitm", "--executor", "dask",
               "--scheduler", f"tcp://127.0.0.1:{port}", "--no-progress", "--no-plots")
    try:
        _wait_for(lambda: accepted, p)      # the command is waiting on the listener now
        assert p.poll() is None, p.communicate()
        time.sleep(0.5)
        rc, err, _ = _signal_and_wait(p, signal.SIGTERM)
    finally:
        stop.set()
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert rc == 143, err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------ dask-local answers no HTTP

def test_dask_local_opens_no_port_that_answers_http():
    pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    pytest.importorskip("cryptography", reason="dask-local's TLS needs the cryptography package")
    psutil = pytest.importorskip("psutil")
    import http.client

    from subsetsum_lth.executors import make_pool

    def listening() -> set:
        me = psutil.Process()
        ports = set()
        for proc in [me, *me.children(recursive=True)]:
            try:
                conns = proc.net_connections(kind="inet")
            except (psutil.Error, OSError):
                continue
            ports |= {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}
        return ports

    def answers_http(port: int) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
            conn.request("GET", "/health")
            conn.getresponse()
            return True
        except (OSError, http.client.HTTPException):
            return False

    before = listening()
    pool = make_pool("dask-local", 2)
    try:
        pool.start()
        opened = listening() - before
        assert opened, "the cluster opened no port?"
        assert [port for port in sorted(opened) if answers_http(port)] == []
    finally:
        pool.close()
