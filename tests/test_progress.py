"""Long steps announce themselves (what, why, a time estimate) and show progress also when the
output is not a terminal; reported wall times say what they cover."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from subsetsum_lth.commands._progress import PlainTick, duration, progress_factory

ROOT = Path(__file__).resolve().parents[1]


def test_plain_tick_prints_periodically_with_an_estimate():
    now = [0.0]
    lines: list[str] = []
    tick = PlainTick(100, "layer 1", unit="inst", interval=10, write=lines.append,
                     clock=lambda: now[0])
    for _ in range(100):
        now[0] += 1.0          # one instance per second: a line every 10 s
        tick.update(1)
        if tick.n == 40:
            tick.set_postfix(loss="0.5")
    tick.close()
    assert len(lines) == 11, lines                     # 10 periodic lines + the closing one
    assert lines[0] == "layer 1: 10/100 insts (10%), 10 s elapsed, about 1.5 min left"
    assert "loss 0.5" in lines[4] and lines[-1].startswith("layer 1: done, 100/100 insts (100%)")


def test_plain_tick_is_silent_for_short_stages():
    lines: list[str] = []
    tick = PlainTick(5, "growth", interval=10, write=lines.append, clock=lambda: 0.0)
    tick.update(5)
    tick.close()
    assert lines == []


def test_factory_uses_plain_lines_off_a_terminal_and_nothing_when_disabled():
    assert isinstance(progress_factory(True, terminal=False)(3, "x"), PlainTick)
    assert not isinstance(progress_factory(True, terminal=True)(3, "x"), PlainTick)
    assert not isinstance(progress_factory(False, terminal=False)(3, "x"), PlainTick)
    assert duration(42) == "42 s" and duration(600) == "10.0 min" and duration(7200) == "2.0 h"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("COLUMNS", None)
    return env


def test_train_target_announces_first_and_reports_progress_through_a_pipe(mnist_dir, tmp_path):
    """stderr and stdout to one pipe (not a terminal): the announcement comes first, with an
    estimate; then plain progress lines (one per epoch at least); the summary last."""
    out = tmp_path / "t"
    proc = subprocess.run([sys.executable, "-m", "subsetsum_lth", "train-target", "--out", str(out),
                           "--hidden", "8", "--epochs", "2", "--train-subset", "500", "--batch-size", "50",
                           "--data-dir", str(mnist_dir), "--threads", "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines[0].startswith("training a 784-8-10 ReLU MLP on 500 MNIST images: 2 epoch(s) of 10 steps, about "), lines
    assert "on this machine" in lines[0] and str(out) in lines[0]
    epochs = [i for i, ln in enumerate(lines) if ln.startswith("training: epoch ") and " done: loss " in ln]
    assert len(epochs) == 2, lines
    done = next(i for i, ln in enumerate(lines) if ln.startswith("trained 784-8-10"))
    assert 0 < epochs[0] < epochs[1] < done
    assert "\r" not in proc.stdout                     # no invisible bar redraws in a file


def test_default_target_announces_training_before_it_starts(mnist_dir, tmp_path, monkeypatch):
    from subsetsum_lth import default_target as dt
    from subsetsum_lth.target import random_target, save_target

    events: list[str] = []

    def fake_train(config, folder, progress=False, heartbeat=None, **kw):
        events.append("train")
        assert config.sizes == [784, 500, 10] and config.epochs == 10
        heartbeat("training: epoch 1/10 done")
        Path(folder).mkdir(parents=True, exist_ok=True)
        save_target(random_target((784, 6, 10), bias=True, seed=1), Path(folder) / "target.safetensors")
        return {"seconds": 0.5, "test_accuracy": 0.9}

    monkeypatch.setattr("subsetsum_lth.train.train_target", fake_train)
    got = dt.default_target(seed=0, data_dir=mnist_dir, cache_dir=tmp_path, announce=events.append,
                            heartbeat=events.append)
    assert events[0].startswith("no --target given: training the default 784-500-10 MNIST target first "
                                "(10 epochs, about "), events
    assert "on this machine" in events[0] and str(tmp_path / "mnist-784-500-10-seed0") in events[0]
    assert events[1:] == ["train", "training: epoch 1/10 done"]
    assert got.training_seconds is not None and got.training_seconds >= 0
    # cached now: no announcement, no training time
    events.clear()
    again = dt.default_target(seed=0, data_dir=mnist_dir, cache_dir=tmp_path, announce=events.append)
    assert events == [] and again.training_seconds is None


def test_approximate_wall_time_says_it_includes_the_default_target_training(mnist_dir, tmp_path, monkeypatch,
                                                                             capsys):
    from subsetsum_lth import default_target as dt
    from subsetsum_lth.cli import main
    from subsetsum_lth.target import random_target, save_target

    def fake_train(config, folder, progress=False, heartbeat=None, **kw):
        Path(folder).mkdir(parents=True, exist_ok=True)
        save_target(random_target((784, 3, 10), bias=True, seed=1), Path(folder) / "target.safetensors")
        return {"seconds": 0.5, "test_accuracy": 0.9}

    monkeypatch.setattr("subsetsum_lth.train.train_target", fake_train)
    monkeypatch.setattr(dt, "targets_cache_dir", lambda: tmp_path / "cache")
    out = tmp_path / "run"
    rc = main(["approximate", "--out", str(out), "--data-dir", str(mnist_dir), "--block-width", "6",
               "--width", "formula", "--allow-infeasible", "--workers", "1", "--no-plots", "--samples", "8",
               "--steps", "2", "--no-progress"])
    assert rc == 0
    cap = capsys.readouterr()
    assert cap.err.splitlines()[0].startswith("no --target given: training the default 784-500-10 MNIST target")
    report = json.loads((out / "report.json").read_text())
    t, w = report["target_training_seconds"], report["wall_seconds"]
    assert t >= 0 and "not the training" in report["wall_seconds_covers"]
    line = next(ln for ln in cap.out.splitlines() if ln.startswith("wall time: "))
    assert line.startswith(f"wall time: {t + w:.1f} s ({t:.1f} s training the default target + {w:.1f} s approximation)")


def test_approximate_wall_time_without_training(tmp_path, capsys):
    from subsetsum_lth.cli import main
    from subsetsum_lth.target import random_target, save_target

    save_target(random_target((3, 4, 2), bias=True, seed=0), tmp_path / "t.safetensors")
    rc = main(["approximate", "--target", str(tmp_path / "t.safetensors"), "--out", str(tmp_path / "run"),
               "--workers", "1", "--no-plots", "--samples", "8", "--steps", "2", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert any(ln.startswith("wall time: ") and "s (approximation)" in ln for ln in out.splitlines()), out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert "target_training_seconds" not in report


def test_edge_popup_prints_its_header_before_training(mnist_dir, tmp_path, capsys):
    from subsetsum_lth.cli import main

    rc = main(["edge-popup", "--wide", "784,16,10", "--keep", "0.3", "--train-subset", "256", "--test-subset",
               "256", "--device", "cpu", "--data-dir", str(mnist_dir), "--no-plots", "--out", str(tmp_path / "r")])
    assert rc == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("edge-popup on 784-16-10 (12,730 parameters)"), err
    assert err[1].startswith("keep 0.3 (layer, free): ")
    from subsetsum_lth.edge_popup import kept_count
    kept = kept_count(0.3, 784 * 16) + kept_count(0.3, 16)
    assert err[2].startswith(f"  layer 1 16x784: keeps {kept:,} of 12,560") and err[3].startswith("  layer 2 10x16")
    assert err[4].startswith("training: 1 epoch(s) x 2 steps of 128 (256 training images), lr 0.02")
    assert any(ln.startswith("epoch 1/1: train loss ") and "test acc" in ln for ln in err[5:]), err
