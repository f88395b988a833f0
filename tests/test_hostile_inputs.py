"""Issue 21: hostile checkpoints and absurd numbers are refused in one line, exit 2, up front.

Every hostile file is made here the way an attacker's code would make it (``torch.save`` of an
expanded view, a sparse tensor, a pickle that calls ``os.system``, keys holding terminal escape
sequences) and fed to the CLI in a subprocess under a 4 GiB address-space limit, so a regression
that allocates the claimed 80 GB fails (instead of eating the machine) and a segfault shows as a
negative return code. Numbers that used to allocate (``--samples 1e9``, ``--count 1e12``,
``--hidden 100000000``) run the same way; the other flags are checked in process (a pure
validation, nothing to crash).
"""
from __future__ import annotations

import os
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from subsetsum_lth.cli import main

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120
AS_LIMIT = 4 << 30


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def _cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="Agg")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "subsetsum_lth", *map(str, args)], capture_output=True, text=True,
                       timeout=TIMEOUT, env=env, cwd=cwd, preexec_fn=_limit_memory)
    return p.returncode, p.stdout, p.stderr, time.monotonic() - t0


def _one_line_refusal(rc, err, *words):
    assert rc == 2, f"rc {rc}: {err[-2000:]}"
    assert "Traceback" not in err and "\x1b" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], f"{w!r} not in: {lines[0]}"
    return lines[0]


def _small_sd(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).state_dict()


# ----------------------------------------------------------------------------- item 2: claimed sizes

@pytest.mark.parametrize("n, command", [(100_000, "inspect"), (100_000, "approximate"), (25_000, "inspect")])
def test_expanded_tensor_claiming_billions_of_values_is_refused_before_reading(tmp_path, n, command):
    """torch.zeros(1).expand(n, n) saved in a state_dict: a 1.6 KB file claiming n² float32 values."""
    z = torch.zeros(1)
    path = tmp_path / "expanded.pt"
    torch.save({"0.weight": z.expand(n, n), "0.bias": z.expand(n)}, path)
    assert path.stat().st_size < 4096
    args = ["inspect", path] if command == "inspect" else \
        ["approximate", "--target", path, "--out", tmp_path / "run", "--workers", "1", "--no-progress"]
    rc, _, err, _ = _cli(*args)
    line = _one_line_refusal(rc, err, "'0.weight'", f"{n}×{n}", f"{n * n:,} values", "expanded")
    assert "stores only 1 value(s) (4 bytes)" in line
    assert not (tmp_path / "run").exists()


def test_a_small_expanded_tensor_is_materialised_and_loads(tmp_path):
    """Within the budget an expanded tensor is just a tensor: it loads as the values it claims."""
    from subsetsum_lth.target import load_target
    torch.save({"0.weight": torch.tensor([[0.5, -0.25]]).expand(3, 2), "0.bias": torch.zeros(1).expand(3)},
               tmp_path / "small.pt")
    t = load_target(tmp_path / "small.pt")
    assert t.sizes == [2, 3] and (t.layers[0].weight == [[0.5, -0.25]] * 3).all()


def test_sparse_tensor_is_refused_in_one_line(tmp_path):
    i = torch.tensor([[0, 1], [1, 0]])
    sparse = torch.sparse_coo_tensor(i, torch.tensor([1.0, 2.0]), (3, 4))
    torch.save({"0.weight": sparse, "0.bias": torch.zeros(3)}, tmp_path / "sparse.pt")
    rc, _, err, _ = _cli("inspect", tmp_path / "sparse.pt")
    _one_line_refusal(rc, err, "'0.weight'", "sparse_coo", "3×4", "to_dense()")


def test_safetensors_header_claiming_more_than_the_file_holds_is_refused(tmp_path):
    import json
    import struct
    header = json.dumps({"0.weight": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "claims.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    rc, _, err, _ = _cli("inspect", tmp_path / "claims.safetensors")
    _one_line_refusal(rc, err, "cannot read", "as safetensors")


# ----------------------------------------------------------------------------- item 6: terminal injection

def test_escape_sequences_in_key_names_and_metadata_are_printed_escaped(tmp_path, capsys):
    """Keys and metadata carrying OSC (retitle) and CSI (clear screen) sequences: inspect shows them
    as \\x1b..., never raw, on stdout and in errors (the first file through a subprocess, the
    terminal's view; the others in process)."""
    osc, clear = "\x1b]0;pwned\x07", "\x1b[2J"
    sd = _small_sd()
    torch.save({f"{osc}fc.weight": sd["0.weight"], f"{osc}fc.bias": sd["0.bias"],
                f"x{clear}.weight": sd["2.weight"]}, tmp_path / "keys.pt")
    rc, out, err, _ = _cli("inspect", tmp_path / "keys.pt")
    assert rc == 0, err
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert "\\x1b]0;pwned\\x07fc.weight" in out and "x\\x1b[2J.weight" in out

    def inspect(path):
        rc = main(["inspect", str(path)])
        cap = capsys.readouterr()
        assert "\x1b" not in cap.out + cap.err and "\x07" not in cap.out + cap.err
        return rc, cap.out, cap.err

    # a checkpoint dict whose other entries and scalar metadata carry them
    torch.save({"model": sd, f"note{clear}": 3, "epoch": osc}, tmp_path / "meta.pt")
    rc, out, _ = inspect(tmp_path / "meta.pt")
    assert rc == 0 and "note\\x1b[2J" in out and "\\x1b]0;pwned\\x07" in out
    # safetensors metadata
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"),
              metadata={f"note{clear}": f"hi{osc}"})
    rc, out, _ = inspect(tmp_path / "m.safetensors")
    assert rc == 0 and "note\\x1b[2J=hi\\x1b]0;pwned\\x07" in out
    # refused files: the error line quotes the key, escaped
    torch.save({f"0.weight{osc}": sd["0.weight"], f"{clear}0.bias": sd["0.bias"]}, tmp_path / "bad.pt")
    rc, _, err = inspect(tmp_path / "bad.pt")
    _one_line_refusal(rc, err, "\\x1b]0;pwned\\x07")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "act.safetensors"),
              metadata={"activation": f"tanh{clear}"})
    rc, _, err = inspect(tmp_path / "act.safetensors")
    _one_line_refusal(rc, err, "activation", "\\x1b[2")


def test_error_lines_escape_layer_names_that_are_not_quoted(tmp_path, capsys):
    """A module name from a key reaches messages unquoted (layer X has a non-floating weight):
    the CLI line is escaped whatever the message."""
    torch.save({"\x1b[2Jfc.weight": torch.ones(3, 4, dtype=torch.int64)}, tmp_path / "int.pt")
    assert main(["inspect", str(tmp_path / "int.pt")]) == 2
    cap = capsys.readouterr()
    assert "\x1b" not in cap.err + cap.out and "\\x1b[2Jfc" in cap.err


# ----------------------------------------------------------------------------- item 7: the pickle refusal

class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize("how", ["torch.save", "pickle-protocol-4", "eval-legacy"])
def test_a_payload_that_runs_code_is_refused_without_weights_only_false(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "payload.pt"
    if how == "torch.save":
        torch.save({"0.weight": _System(marker), "0.bias": torch.zeros(3)}, path)
        called = "system"
    elif how == "pickle-protocol-4":    # STACK_GLOBAL from memoised strings
        path.write_bytes(pickle.dumps({"0.weight": _System(marker)}, protocol=4))
        called = "system"
    else:
        torch.save({"0.weight": _Eval(marker)}, path, _use_new_zipfile_serialization=False)
        called = "eval"
    rc, _, err, _ = _cli("inspect", path)
    line = _one_line_refusal(rc, err, "not a model file", called, "runs code")
    assert "weights_only=False" not in line and "trust" not in line
    assert not marker.exists(), "the payload ran"


def test_the_refusal_of_a_user_class_names_it_and_never_suggests_weights_only_false(tmp_path):
    import argparse
    torch.save({"state_dict": _small_sd(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "ns.pt")
    rc, _, err, _ = _cli("inspect", tmp_path / "ns.pt")
    line = _one_line_refusal(rc, err, "argparse.Namespace")
    assert "weights_only=False" not in line


# ----------------------------------------------------------------------------- item 5: numbers that allocate

@pytest.mark.parametrize("args, words", [
    (["certify", "{run}", "--samples", "-5"], ["--samples", "must be a positive integer", "-5"]),
    (["certify", "{run}", "--samples", "1e9"], ["--samples", "at most 1,000,000", "1000000000"]),
    (["bench", "solvers", "--count", "1e12"], ["--count", "at most 100,000,000", "1000000000000"]),
    (["bench", "solvers", "--count", "1e7", "--n", "1e6"], ["--count", "TB of memory", "this process may use"]),
    (["train-target", "--out", "{tmp}/t", "--hidden", "100000000"],
     ["--hidden 100000000", "parameters", "of memory", "smaller hidden widths"]),
    (["edge-popup", "--wide", "784,H,10", "--param-budget", "1e10", "--out", "{tmp}/e"],
     ["--param-budget", "GB of memory"]),
])
def test_numbers_that_would_allocate_are_refused_up_front(tmp_path, args, words):
    args = [a.format(run=tmp_path / "run", tmp=tmp_path) for a in args]
    rc, _, err, _ = _cli(*args)
    _one_line_refusal(rc, err, *words)
    assert not (tmp_path / "t").exists() and not (tmp_path / "e").exists()


def test_threads_beyond_the_cores_are_capped_with_a_note(tmp_path, mnist_dir):
    """edge-popup --threads 100000 used to segfault in libgomp: now capped to the cores, said once."""
    rc, out, err, _ = _cli("edge-popup", "--wide", "784,8,10", "--out", tmp_path / "e", "--threads", "100000",
                           "--epochs", "1", "--train-subset", "64", "--test-subset", "64", "--batch-size", "32",
                           "--no-progress", "--no-plots", "--data-dir", mnist_dir)
    assert rc == 0, err[-2000:]
    notes = [line for line in err.splitlines() if "capped to" in line]
    assert len(notes) == 1 and "--threads 100000 capped to" in notes[0], err


# ----------------------------------------------------------------------------- items 1 and 7: unbounded limits

@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    torch.save(_small_sd(), d / "t.pt")
    return d / "t.pt"


@pytest.mark.parametrize("argv, words", [
    (["certify", "{run}", "--bab-seconds", "nan"], ["--bab-seconds", "nan"]),
    (["certify", "{run}", "--bab-seconds", "-1"], ["--bab-seconds", "-1"]),
    (["certify", "{run}", "--bab-seconds", "1e300"], ["--bab-seconds", "at most 604800"]),
    (["certify", "{run}", "--steps", "1e9"], ["--steps", "at most 100,000"]),
    (["approximate", "--target", "{t}", "--out", "{run}", "--bab-seconds", "nan"], ["--bab-seconds", "nan"]),
    (["approximate", "--target", "{t}", "--out", "{run}", "--input-domain", "box", "--input-box", "0,1",
      "--bab-seconds", "-1"], ["--bab-seconds", "-1"]),
    (["approximate", "--target", "{t}", "--out", "{run}", "--input-domain", "box", "--input-box", "0,1",
      "--bab-seconds", "1e300"], ["--bab-seconds", "at most 604800"]),
    (["approximate", "--target", "{t}", "--out", "{run}", "--time-limit", "1e300"], ["--time-limit", "at most 604800"]),
    (["approximate", "--target", "{t}", "--out", "{run}", "--batch-timeout", "inf"], ["--batch-timeout", "inf"]),
    (["approximate", "--target", "{t}", "--out", "{run}", "--max-hours", "inf"], ["--max-hours", "at most 8760"]),
    (["approximate", "--target", "{t}", "--out", "{run}", "--steps", "1e9"], ["--steps", "at most 100,000"]),
    (["approximate", "--target", "{t}", "--out", "{run}", "--samples", "1e9"], ["--samples", "at most 1,000,000"]),
    (["approximate", "--target", "{t}", "--out", "{run}", "--retries", "1e9"], ["--retries", "at most 1,000"]),
    (["train-target", "--out", "{run}", "--epochs", "1e9"], ["--epochs", "at most 100,000"]),
    (["edge-popup", "--wide", "784,8,10", "--out", "{run}", "--epochs", "1e9"], ["--epochs", "at most 100,000"]),
    (["bench", "solvers", "--time-budget", "1e300"], ["--time-budget", "at most 604800"]),
])
def test_unbounded_or_non_finite_limits_are_refused_naming_the_flag(tiny_target, tmp_path, capsys, argv, words):
    argv = [a.format(run=tmp_path / "run", t=tiny_target) for a in argv]
    try:
        rc = main(argv)
    except SystemExit as exc:      # argparse's own refusal (certify, edge-popup check their flags there)
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "must be" in lines[0], err
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]}"
    assert not (tmp_path / "run").exists()

