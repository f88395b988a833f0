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
    """stderr and stdout to one pipe (not a terminal): the announcement comes first; then the
    estimate from the first timed steps of the real loop; then plain progress lines (one per epoch
    at least, with the time left); the summary last."""
    out = tmp_path / "t"
    proc = subprocess.run([sys.executable, "-m", "subsetsum_lth", "train-target", "--out", str(out),
                           "--hidden", "8", "--epochs", "2", "--train-subset", "500", "--batch-size", "50",
                           "--data-dir", str(mnist_dir), "--threads", "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines[0].startswith("training a 784-8-10 ReLU MLP on 500 MNIST images: 2 epoch(s) of 10 steps; "), lines
    assert "on this machine" in lines[0] and str(out) in lines[0]
    est = [i for i, ln in enumerate(lines) if ln.startswith("training: loading the images and setting up took ")]
    assert len(est) == 1 and "for all 20 steps and the final evaluation" in lines[est[0]], lines
    epochs = [i for i, ln in enumerate(lines) if ln.startswith("training: epoch ") and " done: loss " in ln]
    assert len(epochs) == 2, lines
    assert all(" left" in lines[i] for i in epochs), lines
    done = next(i for i, ln in enumerate(lines) if ln.startswith("trained 784-8-10"))
    assert 0 < est[0] < epochs[0] < epochs[1] < done
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

    monkeypatch.setattr("subsetsum_lth.default_target.train_target", fake_train)
    got = dt.default_target(seed=0, data_dir=mnist_dir, cache_dir=tmp_path, announce=events.append,
                            heartbeat=events.append)
    assert events[0].startswith("no --target given: training the default 784-500-10 MNIST target first "
                                "(10 epochs; the time it takes on this machine follows from the first timed steps"), events
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

    monkeypatch.setattr("subsetsum_lth.default_target.train_target", fake_train)
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


# ---------------------------------------------------------------- issue 20 (5, 6): phases, scales, estimates

def test_eta_estimates_from_timed_steps_and_corrects_itself():
    """Fake step times: a slow first step (left out), 0.1 s steps, then the machine gets twice as
    slow: the estimate is the 0.1 s rate first and follows the slowdown within a window."""
    from subsetsum_lth.progress import Eta
    eta = Eta(1000, skip=1, window=50, probe=20, tail_steps=100)
    now = 5.0                                   # the first step: 5 s of warm-up
    eta.step(now)
    assert eta.remaining() is None and not eta.ready
    for _ in range(20):
        now += 0.1
        eta.step(now)
    assert eta.ready and eta.done == 21
    assert abs(eta.remaining() - 0.1 * (1000 - 21 + 100)) < 1e-6     # the warm-up step is not extrapolated
    for _ in range(200):
        now += 0.2
        eta.step(now)
    assert abs(eta.seconds_per_step() - 0.2) < 1e-9                  # the window holds only slow steps now
    assert abs(eta.remaining() - 0.2 * (1000 - 221 + 100)) < 1e-6
    for _ in range(779):
        now += 0.2
        eta.step(now)
    assert abs(eta.remaining() - 0.2 * 100) < 1e-6                    # only the tail is left


def test_eta_is_ready_after_probe_seconds_for_slow_steps():
    from subsetsum_lth.progress import Eta
    eta = Eta(100, skip=1, probe=20, probe_seconds=3.0)
    for t in (0.0, 2.0, 4.0):                    # warm-up, then two 2 s steps: 4 s timed
        eta.step(t)
    assert eta.ready and abs(eta.remaining() - 2.0 * 97) < 1e-9


def test_fit_announces_an_estimate_from_its_own_steps_and_heartbeats_correct_it():
    """The training loop's own steps are timed (a fake clock: 1 s per reading): the estimate comes
    once, after the probe steps, and every heartbeat line carries the time left."""
    import torch
    from subsetsum_lth.train import TrainConfig, _fit, build_mlp
    ticks = [0.0]

    def clock():
        ticks[0] += 1.0
        return ticks[0]
    said: list[str] = []
    beats: list[str] = []
    cfg = TrainConfig(hidden=(4,), epochs=2, batch_size=10, train_subset=300)
    torch.manual_seed(0)
    x, y = torch.rand(300, 784), torch.randint(0, 10, (300,))
    _fit(build_mlp(cfg.sizes), x, y, cfg, progress=False, heartbeat=beats.append, heartbeat_seconds=1e9,
         on_estimate=said.append, n_eval=0, clock=clock)
    assert len(said) == 1 and said[0].startswith("training: the first "), said
    assert "for all 60 steps and the final evaluation" in said[0]
    assert [b.startswith("training: epoch ") and "left" in b for b in beats] == [True, True], beats


def _small_target(tmp_path, hidden=6):
    from subsetsum_lth.target import random_target, save_target
    path = tmp_path / "t.safetensors"
    save_target(random_target((784, hidden, 10), bias=True, seed=3), path)
    return path


def _run_cli(args, tmp_path, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "subsetsum_lth", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=_env(), cwd=tmp_path, timeout=timeout)
    return proc.returncode, [ln for ln in proc.stdout.splitlines() if ln.strip()]


def _index(lines, prefix):
    hits = [i for i, ln in enumerate(lines) if ln.startswith(prefix)]
    assert hits, (prefix, lines)
    return hits[0]


def test_approximate_announces_phases_in_order_and_names_the_bound_set(mnist_dir, tmp_path):
    """stderr not a terminal: every phase announces itself, per-layer lines come as each layer is
    solved (before the certificate and the evaluation), the bound line names its set and sits beside
    the scale figures, and report.json holds them."""
    import numpy as np
    import torch
    from subsetsum_lth.data.mnist import load_mnist
    from subsetsum_lth.target import load_target

    target = _small_target(tmp_path)
    out = tmp_path / "run"
    rc, lines = _run_cli(["approximate", "--target", str(target), "--out", str(out), "--data", "mnist",
                          "--data-dir", str(mnist_dir), "--workers", "1", "--no-plots", "--samples", "8",
                          "--steps", "3", "--block-width", "12"], tmp_path)
    assert rc == 0, lines
    order = [_index(lines, p) for p in (
        "building g: ", "layer 1/2 solved: ",
        "layer 2/2 solved: ", "certified bound: bounding sup over ", "certified: sup over ",
        "empirical bound: searching ", "evaluation: f and ĝ on 10,000 test images", "writing: ", "target 784-6-10")]
    assert order == sorted(order), lines
    report = json.loads((out / "report.json").read_text())
    r, b = report["input_radius"], report["certified_bound"]
    assert report["certified_set"] == f"‖x‖₂ ≤ {r:.4g}, x ≥ 0"
    line = lines[_index(lines, "certified bound: sup over ")]
    assert line.startswith(f"certified bound: sup over ‖x‖₂ ≤ {r:.4g}, x ≥ 0 of ‖f(x) − ĝ(x)‖₂ ≤ {b:.4g}"), line
    scale = report["bound_scale"]
    nxt = lines[_index(lines, "certified bound: sup over ") + 1]
    assert f"‖f(x)‖₂ median {scale['output_norm_median']:.4g}" in nxt and "class margin" in nxt, nxt
    assert "guarantees f's class on" in nxt
    # the figures are f's on the test set
    f = load_target(target)
    x, _ = load_mnist("test", mnist_dir)
    with torch.no_grad():
        fo = f.forward(torch.as_tensor(x, dtype=torch.float64))
    top = fo.topk(2, dim=1).values
    assert abs(scale["output_norm_median"] - float(fo.norm(dim=1).median())) <= 1e-9 * (1 + scale["output_norm_max"])
    assert abs(scale["class_margin_min"] - float((top[:, 0] - top[:, 1]).min()) / np.sqrt(2)) <= 1e-9
    assert scale["examples"] == 10000 and scale["examples_in_certified_set"] == 10000
    # where the bound guarantees f's class, ĝ does predict it: agreement is at least that fraction
    assert 0 <= scale["certified_same_class_fraction"] <= report["prediction_agreement"] + 1e-12


def test_compare_says_when_the_bound_is_over_another_set_than_the_deviation(mnist_dir, tmp_path):
    """A run certified on a radius-0.001 ball: compare names that ball beside the bound and says the
    test images the deviation is measured on do not lie in it."""
    target = _small_target(tmp_path, hidden=4)
    out = tmp_path / "run"
    rc, lines = _run_cli(["approximate", "--target", str(target), "--out", str(out), "--data", "mnist",
                          "--data-dir", str(mnist_dir), "--workers", "1", "--no-plots", "--samples", "8",
                          "--steps", "2", "--block-width", "12", "--input-radius", "0.001"], tmp_path)
    assert rc == 0, lines
    report = json.loads((out / "report.json").read_text())
    assert report["certified_set"] == "‖x‖₂ ≤ 0.001, x ≥ 0"
    assert report["bound_scale"]["examples_in_certified_set"] == 0
    assert report["bound_scale"]["certified_same_class_fraction"] == 0
    rc, lines = _run_cli(["compare", str(out), "--out", str(tmp_path / "cmp"), "--data-dir", str(mnist_dir),
                          "--test-subset", "500", "--no-plots"], tmp_path)
    assert rc == 0, lines
    assert _index(lines, "target: f on 500 test images") < \
        _index(lines, "run: ĝ on 500 test images") < _index(lines, "random network ")
    dev = lines[_index(lines, "    accuracy ")]
    assert "deviation on the 500 test images max " in dev
    cert = lines[_index(lines, "    certified ")]
    b = report["certified_bound"]
    assert cert.startswith(f"    certified sup over ‖x‖₂ ≤ 0.001, x ≥ 0 of ‖f(x) − ĝ(x)‖₂ ≤ {b:.4g} — a different "
                           "set from the deviation's: none of the 500 test images lies in it"), cert
    comp = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    e = comp["runs"][0]
    assert e["certified_set"] == "‖x‖₂ ≤ 0.001, x ≥ 0" and e["test_images_in_certified_set"] == 0
    assert comp["bound_scale"]["examples"] == 500
    # certify names the same set, and announces its phases before the result
    rc, lines = _run_cli(["certify", str(out), "--samples", "8", "--steps", "2"], tmp_path)
    assert rc == 0, lines
    assert _index(lines, "certified bound: bounding sup over ‖x‖₂ ≤ 0.001, x ≥ 0") < \
        _index(lines, "empirical bound: searching ‖x‖₂ ≤ 0.001, x ≥ 0") < _index(lines, "run: ")
    assert lines[_index(lines, "certified bound: sup over ")].startswith(
        "certified bound: sup over ‖x‖₂ ≤ 0.001, x ≥ 0 of ‖f(x) − ĝ(x)‖₂ ≤ ")
