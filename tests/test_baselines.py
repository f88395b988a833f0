"""Baselines: single-sample widths vs subset sum; greedy forward selection's provable rate."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from subsetsum_lth.baselines.greedy_selection import (GreedyConfig, apply_selection, diameter,
                                                      greedy_average_selection, greedy_prune_mlp,
                                                      harmonic, rate_bound)
from subsetsum_lth.baselines.single_sample import hit_probability_product, single_sample_widths
from subsetsum_lth.solve import SolveConfig
from subsetsum_lth.target import random_target
from subsetsum_lth.width_law import run_width_law, synthetic_weights

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- single sample

def test_single_sample_needs_more_width_than_subset_sum():
    sample = synthetic_weights(300, 50, seed=5)
    for eps in (1e-2, 1e-3):
        ss = run_width_law(sample, [eps], n_max=28, seed=0, solve=SolveConfig(solver="mitm", workers=1)).results[0]
        single = single_sample_widths(sample.weights, eps, seed=0, mode="product")
        assert ss.all_feasible_width is not None and single.all_feasible_width is not None
        assert single.all_feasible_width > 4 * ss.all_feasible_width
        assert single.quantile(0.9) > ss.quantile(0.9)
        # the empty subset (|w| <= eps) costs nothing on either side, and only then
        assert np.array_equal(single.widths == 0, ss.widths == 0)


def test_single_sample_width_is_geometric_with_the_hit_probability():
    eps = 0.02
    w = np.full((400, 3), 0.4)
    single = single_sample_widths(w, eps, seed=1, mode="single")       # c ~ U[-1, 1]: p = eps
    assert single.widths.mean() == pytest.approx(1 / eps, rel=0.15)
    prod = single_sample_widths(w, eps, seed=2, mode="product")        # c = v*u
    p = float(hit_probability_product(0.4, eps)[0])
    assert prod.widths.mean() == pytest.approx(1 / p, rel=0.15)
    # the exact density integrates to one
    assert float(hit_probability_product(0.0, 1.0)[0]) == pytest.approx(1.0)


def test_single_sample_first_hit_is_the_first_close_coefficient():
    w = np.array([[0.3, -0.5]])
    res = single_sample_widths(w, 0.05, seed=4, mode="single", chunk=64)
    # replay the stream of block 0 / block 1
    from subsetsum_lth.construction import DISTRIBUTIONS
    for j in range(2):
        stream = []
        for c in range(100):
            rng = np.random.default_rng(np.random.SeedSequence(4, spawn_key=(11, j, c)))
            stream.append(DISTRIBUTIONS["uniform"](rng, (1, 64)).astype(np.float64)[0])
        stream = np.concatenate(stream)
        first = int(np.flatnonzero(np.abs(stream - w[0, j]) <= 0.05)[0]) + 1
        assert res.widths[j] == first


# --------------------------------------------------------------------------- greedy selection

def _greedy_sq(P: np.ndarray, y: np.ndarray, k_max: int):
    Pt = torch.as_tensor(P, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    return greedy_average_selection(len(P), lambda idx: Pt[torch.as_tensor(idx)],
                                    lambda U: ((U - yt) ** 2).sum(1), k_max, chunk=7)


def _hull_min(P: np.ndarray, y: np.ndarray, iters: int = 20000) -> float:
    """An upper bound on min over the hull of ||u - y||^2 (Frank-Wolfe with line search)."""
    u = P.mean(0)
    for _ in range(iters):
        g = 2 * (u - y)
        s = P[np.argmin(P @ g)]
        d = s - u
        dd = d @ d
        if dd == 0:
            break
        gam = np.clip(-(g @ d) / (2 * dd), 0.0, 1.0)
        u = u + gam * d
    return float(((u - y) ** 2).sum())


@pytest.mark.parametrize("inside", [True, False])
def test_greedy_rate_bound_on_a_convex_hull_instance(inside):
    rng = np.random.default_rng(7)
    P = rng.normal(size=(25, 12))
    if inside:
        lam = rng.dirichlet(np.ones(25))
        y = lam @ P
        L_star = 0.0                                      # y is in the hull
    else:
        y = rng.normal(size=12) * 3
        L_star = _hull_min(P, y)                          # >= the true minimum: the test stays sound
    K = 300
    path = _greedy_sq(P, y, K)
    D = diameter(P)
    gaps = np.array(path.losses) - L_star
    bounds = np.array([rate_bound(k, D) for k in range(1, K + 1)])
    assert np.all(gaps <= bounds + 1e-9)
    assert gaps[-1] < 0.05 * gaps[0] or gaps[-1] < 1e-6   # it does converge
    # greedy averages: the recorded loss is that of the average of the chosen points
    u = P[path.chosen].mean(0)
    assert ((u - y) ** 2).sum() == pytest.approx(path.losses[-1], rel=1e-9, abs=1e-12)


def test_greedy_step_is_the_exact_argmin_with_repeats():
    rng = np.random.default_rng(3)
    P = rng.normal(size=(9, 4))
    y = P[4] * 0.9 + P[2] * 0.1
    path = _greedy_sq(P, y, 12)
    S = np.zeros(4)
    for k, j in enumerate(path.chosen, start=1):
        losses = [(((S + P[i]) / k - y) ** 2).sum() for i in range(9)]
        assert j == int(np.argmin(losses))
        S += P[j]
    assert len(set(path.chosen)) < len(path.chosen)      # repeats happen


def test_greedy_loss_need_not_fall_at_every_step_and_the_bound_still_holds():
    P = np.array([[0.0, 0.0], [2.0, 0.0]])
    y = np.array([1.0, 0.0])                              # midpoint: loss 1, 0, then 1/9
    path = _greedy_sq(P, y, 4)
    assert path.losses[1] == pytest.approx(0.0)
    assert path.losses[2] > path.losses[1]               # the loss rises at k = 3
    D = diameter(P)
    assert all(loss <= rate_bound(k, D) + 1e-12 for k, loss in enumerate(path.losses, start=1))
    assert harmonic(3) == pytest.approx(11 / 6)


def test_greedy_prune_mlp_on_a_tiny_target():
    rng = np.random.default_rng(0)
    target = random_target([12, 16, 10, 3], bias=True, seed=2)
    x = rng.normal(size=(300, 12)).astype(np.float32)
    y = target.forward(torch.as_tensor(x, dtype=torch.float64)).argmax(1).numpy()
    res = greedy_prune_mlp(target, x[:200], y[:200], x[200:], y[200:], GreedyConfig(gap=0.05, k_max=40))
    assert len(res.paths) == 2
    assert res.kept_parameters <= res.full_parameters
    for p in res.paths:
        assert p.losses[-1] - res.full_train_loss <= 0.05 or len(p.chosen) == 40
    # the recorded curve is the network it describes: recompute the last point's accuracy
    from subsetsum_lth.target import Target
    pruned = Target(res.layers)
    acc = float((pruned.forward(torch.as_tensor(x[200:], dtype=torch.float64)).argmax(1).numpy() == y[200:]).mean())
    assert acc == pytest.approx(res.curve[-1]["test_accuracy"], abs=1e-9)
    assert res.curve[-1]["kept_parameters"] == res.kept_parameters
    # the fast last-layer loss equals the generic one: train loss of the pruned network
    z = pruned.forward(torch.as_tensor(x[:200], dtype=torch.float64))
    ce = float(torch.nn.functional.cross_entropy(z, torch.as_tensor(y[:200])))
    assert ce == pytest.approx(res.paths[-1].losses[-1], rel=1e-4)


def test_apply_selection_is_the_average_of_neurons():
    target = random_target([5, 7, 2], bias=True, seed=4)
    counts = np.array([0, 2, 0, 1, 0, 0, 3])
    layers = apply_selection(target.layers, 0, counts)
    x = torch.randn(10, 5, dtype=torch.float64)
    a = torch.relu(x @ torch.as_tensor(target.layers[0].weight).T + torch.as_tensor(target.layers[0].bias))
    W2 = torch.as_tensor(target.layers[1].weight)
    avg = sum(c * 7 * a[:, j:j + 1] * W2[:, j] for j, c in enumerate(counts) if c) / counts.sum()
    from subsetsum_lth.target import Target
    out = Target(layers).forward(x)
    torch.testing.assert_close(out, avg + torch.as_tensor(target.layers[1].bias))


# --------------------------------------------------------------------------- pensia table (smoke)

def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"exp_{name}", ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pensia_table_on_a_tiny_target(tmp_path, mnist_dir):
    from subsetsum_lth.target import save_target
    target = random_target([784, 4, 10], bias=False, seed=0)
    save_target(target, tmp_path / "t.safetensors", {"input_domain": "nonnegative"})
    mod = _load_script("pensia_table")
    rc = mod.main(["--target", str(tmp_path / "t.safetensors"), "--out", str(tmp_path / "out"),
                   "--workers", "1", "--samples", "16", "--steps", "2", "--block-width", "24", "--no-plots"])
    assert rc == 0
    md = (tmp_path / "out" / "pensia_table.md").read_text()
    assert "3,725,871" in md and "| cardinality |" in md and "| error |" in md
    import csv
    rows = list(csv.DictReader(open(tmp_path / "out" / "pensia_table.csv")))
    err, card = rows[1], rows[2]
    assert int(card["kept_coefficients"]) <= int(err["kept_coefficients"])   # fewest within τ
    assert (tmp_path / "out" / "error" / "report.json").exists()
