"""Width law: how many live coefficients a subset-sum instance needs to be feasible at ε.

For a tolerance ε and a set of target weights w (a sample of one trained layer), every weight
becomes one subset-sum instance *exactly as the construction forms it* (:mod:`construction`):
target ``w``, coefficients ``v[r, (j,k)] * u_jk`` over the positive-``u`` units of block ``j``,
``u`` shared by all rows of the block, every draw from the per-block seeds of
:func:`construction.draw_layer_pair`. Instance ``i`` at width ``m`` uses the *first* ``m`` live
coefficients of its block (unit order), so the instances are nested in ``m`` and feasibility
is monotone: each instance has a smallest feasible width ``m*_i(ε)`` (0 when ``|w| <= ε``: the
empty subset). Then

* the smallest width at which *all* sampled instances are feasible is ``max_i m*_i``;
* the empirical probability that a random instance is feasible at ``m`` is
  ``mean_i [m*_i <= m]``.

``m*`` is found with the exact solvers (``mitm`` by default) through :func:`solve.solve_all`,
re-solving at ``m + 1`` only the instances still infeasible at ``m``.

The same weights also feed the *single-sample* baseline (:mod:`baselines.single_sample`):
the closest single coefficient instead of a subset sum (Malach et al. 2020).

Reference curves (all in live coefficients per instance):

* the counting (covering) width ``log2(1/ε)`` (the argument behind Pensia et al.'s Theorem 2):
  the ``2^n`` subset sums of a block's ``n`` coefficients ε-cover at most a length
  ``2^n · 2ε`` of the target line, so they can serve *every* target in ``[-1, 1]`` only if
  ``n >= log2(1/ε)``, and serve a target drawn uniformly from ``[-1, 1]`` with probability at
  most ``2^n ε`` (:func:`counting_served_fraction`). It bounds how many targets a block can
  serve, not what one instance needs: a trained weight near 0 is often within ε of a sum of
  fewer coefficients (``|w| <= ε`` needs none), and the summary reports the fraction of
  instances that need fewer (``below_counting_width``);
* Theorem 1's formula, ``m = ceil(C log2(p q l / ε))`` units per block. For non-negative inputs
  only units with ``u > 0`` are live, so a block's live count is ``Binomial(m, 1/2)``: its mean
  ``m/2`` (:func:`theorem1_live_width`) is *not* what a layer gets, since the ``p`` blocks of a
  layer must each hold their own instances. :func:`check_formula` draws the construction's
  blocks at the formula width on the whole layer, counts every block's live units and solves
  every instance with them; :func:`formula_cover_probability` is the probability, over the
  draw of the signs, that every block has as many live units as its instances need;
  :func:`min_live_below` is ``P(min over p blocks of Binomial(m, 1/2) < k)``;
* Lueker's ``n = O(log 1/ε)``, with the constant fitted to the measurements. A slope fitted to
  live widths against ``log2(1/ε)`` is *live coefficients per bit of 1/ε*; Theorem 1's ``C``
  counts all units (live and not) against ``log2(p q l / ε)``, so the two are related through
  the live fraction (1/2) and the ``log2(p q l)`` offset (:func:`theorem1_C`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from subsetsum_lth.construction import DISTRIBUTIONS, LayerPlan, draw_layer_pair, formula_width
from subsetsum_lth.layer_instances import layer_instances
from subsetsum_lth.errors import UserError
from subsetsum_lth.solvers.instances import InstanceBatch, Status, recompute_errors
from subsetsum_lth.solve import SolveConfig, check_solver, solve_all
from subsetsum_lth.target import Target, load_target

log = logging.getLogger(__name__)

#: ε grid of the default experiment: 10^-1 ... 10^-4 in half decades.
DEFAULT_EPS = tuple(float(10.0 ** (-e / 2)) for e in range(2, 9))


@dataclass
class WeightSample:
    """Target weights arranged as the construction's blocks: ``weights[r, j]`` is served by
    block ``j``; all ``rows`` instances of a block share that block's ``u``."""

    weights: np.ndarray          #: float64 (rows, blocks)
    source: str                  #: where the weights come from (for reports)
    layer: int | None            #: target layer index (None: synthetic)
    layer_shape: tuple[int, int] | None  #: (q, p) of the sampled layer
    depth: int = 2
    whole_layer: bool = False    #: True when blocks are the layer's own columns (all weights)

    @property
    def flat(self) -> np.ndarray:
        return self.weights.T.ravel()   # block-major, the construction's instance order

    @property
    def n(self) -> int:
        return int(self.weights.size)


def sample_layer_weights(target: Target, layer: int, n: int | None, rows_per_block: int,
                         seed: int) -> WeightSample:
    """A sample of ``n`` weights of ``target.layers[layer]`` (all of them if ``n`` is None or
    at least the layer size) in blocks of ``rows_per_block``.

    With the whole layer, block ``j`` is column ``j`` with all ``q`` rows: exactly the
    construction. With a sample, weights are drawn uniformly without replacement and grouped
    in blocks of ``rows_per_block`` (the sharing of ``u`` within a block is kept; which
    weights share a block does not change any instance's distribution)."""
    if not 0 <= layer < target.depth:
        raise UserError(f"--layer must be in 0..{target.depth - 1}, got {layer}")
    W = np.asarray(target.layers[layer].weight, dtype=np.float64)
    q, p = W.shape
    src = f"{target.source or 'target'} layer {layer} ({q}x{p})"
    if n is None or n >= W.size:
        return WeightSample(W.copy(), src, layer, (q, p), target.depth, whole_layer=True)
    if n < 1 or rows_per_block < 1:
        raise UserError("the weight sample and the rows per block must be positive")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(7, layer)))
    pick = rng.choice(W.size, size=n, replace=False)
    w = W.ravel()[pick]
    rows = min(rows_per_block, n)
    blocks = -(-n // rows)
    pad = blocks * rows - n
    if pad:   # complete the last block with more sampled weights (never duplicates)
        extra = rng.choice(np.setdiff1d(np.arange(W.size), pick), size=pad, replace=False)
        w = np.concatenate([w, W.ravel()[extra]])
    return WeightSample(w.reshape(blocks, rows).T.copy(), src + f", {w.size} sampled weights",
                        layer, (q, p), target.depth)


def synthetic_weights(n: int, rows_per_block: int, seed: int, fan_in: int = 784,
                      q: int = 500) -> WeightSample:
    """Fallback when no trained target is given: N(0, 1/fan_in) weights (PyTorch-like scale of a
    first MNIST layer), seeded. Reports say that this is *not* a trained layer."""
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(8,)))
    rows = min(rows_per_block, n)
    blocks = -(-n // rows)
    w = rng.normal(0.0, 1.0 / math.sqrt(fan_in), size=(rows, blocks))
    return WeightSample(w, f"synthetic N(0, 1/{fan_in}) weights (seed {seed}), not a trained layer",
                        None, (q, fan_in), 2)


def block_coefficients(sample: WeightSample, n_max: int, seed: int, distribution: str = "uniform",
                       layer_index: int = 0) -> np.ndarray:
    """Live coefficients of every instance as the construction forms them: (N, n_max) float64,
    rows in block-major instance order (:attr:`WeightSample.flat`), column k = the k-th live
    (positive-u) unit of the block.

    Blocks are drawn by :func:`construction.draw_layer_pair` with enough units that every block
    has at least ``n_max`` live ones (the block width is raised until it does)."""
    if distribution not in DISTRIBUTIONS:
        raise UserError(f"unknown distribution {distribution!r}")
    rows, blocks = sample.weights.shape
    units = 2 * n_max + 8
    while True:
        plan = LayerPlan(index=layer_index, p=blocks, q=rows, m=units, formula_m=units,
                         has_bias=False, signed_input=False)
        pair = draw_layer_pair(plan, seed, distribution)
        inst = layer_instances(pair, sample.weights, None)
        if n_max == 0 or int(inst.counts.min()) >= n_max:
            return inst.coefficients[:, :n_max].copy()
        units += max(8, units // 4)


@dataclass
class WidthLawResult:
    eps: float
    widths: np.ndarray           #: int (N,) smallest feasible live width per instance; -1: none <= n_max
    n_max: int
    solver: str
    seconds: float
    solved: int = 0              #: instance solves done

    @property
    def all_feasible_width(self) -> int | None:
        """max_i m*_i, or None when some instance is still infeasible at n_max."""
        return None if (self.widths < 0).any() else int(self.widths.max(initial=0))

    def probability(self, m: np.ndarray | int) -> np.ndarray:
        w = self.widths
        ok = np.where(w < 0, np.iinfo(np.int64).max, w)
        m = np.atleast_1d(np.asarray(m))
        return (ok[None, :] <= m[:, None]).mean(axis=1)

    def quantile(self, q: float) -> float:
        w = np.where(self.widths < 0, np.inf, self.widths).astype(float)
        return float(np.quantile(w, q, method="higher"))


def smallest_feasible_widths(targets: np.ndarray, coefficients: np.ndarray, eps: float,
                             solve: SolveConfig | None = None, n_min: int = 1) -> WidthLawResult:
    """Per instance, the smallest prefix length ``m`` of its coefficient row for which some
    subset is within ``eps`` of its target (exact solver), or -1 if none up to the row length.

    Relies on nesting: a subset of the first ``m`` coefficients is one of the first ``m + 1``."""
    import time

    solve = solve or SolveConfig(solver="mitm", workers=1)
    check_solver(solve)
    t0 = time.perf_counter()
    targets = np.asarray(targets, dtype=np.float64)
    N, n_max = coefficients.shape
    widths = np.full(N, -1, dtype=np.int64)
    widths[np.abs(targets) <= eps] = 0            # the empty subset
    todo = np.flatnonzero(widths < 0)
    solved = 0
    for m in range(max(1, n_min), n_max + 1):
        if todo.size == 0:
            break
        batch = InstanceBatch(todo, targets[todo], coefficients[todo, :m], np.full(todo.size, m),
                              eps, "error")
        res = solve_all(batch, solve)
        solved += todo.size
        bad = ~np.isin(res.status, (Status.OPTIMAL, Status.FEASIBLE, Status.INFEASIBLE))
        if bad.any():
            raise RuntimeError(f"solver {solve.solver} failed on {int(bad.sum())} instances: "
                               f"{list(res.messages.values())[:3]}")
        ok = res.errors <= eps
        widths[todo[ok]] = m
        todo = todo[~ok]
        log.debug("ε=%.3g m=%d: %d instances still infeasible", eps, m, todo.size)
    return WidthLawResult(eps, widths, n_max, solve.solver, time.perf_counter() - t0, solved)


def counting_width(eps: float, spread: float = 1.0) -> float:
    """``log2(spread/ε)``: the fewest coefficients whose ``2^n`` subset sums can ε-cover all of
    ``[-spread, spread]`` (the counting argument behind Pensia et al.'s Theorem 2). A bound for a
    block that must serve every target of the interval, not for one instance (see
    :func:`counting_served_fraction`)."""
    return math.log2(spread / eps)


def counting_served_fraction(n: int | np.ndarray, eps: float, spread: float = 1.0) -> np.ndarray:
    """The most a block of ``n`` coefficients can serve: its ``2^n`` subset sums lie within ε
    of at most a length ``2^n · 2ε`` of ``[-spread, spread]``, so a target drawn uniformly from
    that interval is feasible with probability at most ``min(1, 2^n ε / spread)``, whatever the
    coefficients."""
    n = np.asarray(n, dtype=float)
    return np.minimum(1.0, np.exp2(n) * eps / spread)


def theorem1_live_width(p: int, q: int, depth: int, eps: float, C: float = 1.5,
                        live_fraction: float = 0.5) -> float:
    """The *mean* live count of a block of Theorem 1's width ``ceil(C log2(p q l / ε))`` units
    (1/2 live for non-negative inputs: only positive ``u``). The live count of each block is
    ``Binomial(m, live_fraction)``; a layer of ``p`` blocks is limited by its fewest (see
    :func:`min_live_below`, :func:`check_formula`)."""
    return live_fraction * formula_width(p, q, depth, eps, None, C)


def theorem1_C(live_width: float, p: int, q: int, depth: int, eps: float,
               live_fraction: float = 0.5) -> float:
    """The C of Theorem 1's formula whose block width has ``live_width`` live units *on average*:
    ``live_width / (live_fraction · log2(p q l / ε))``. (A slope fitted to live widths against
    ``log2(1/ε)`` is live coefficients per bit of 1/ε, another number.)"""
    return live_width / (live_fraction * math.log2(max(2.0, p * q * depth / eps)))


def binomial_below(m: int, k: int, f: float = 0.5) -> float:
    """``P(Binomial(m, f) < k)`` (exact sum)."""
    k = int(min(max(k, 0), m + 1))
    return float(min(1.0, sum(math.comb(m, i) * f ** i * (1 - f) ** (m - i) for i in range(k))))


def min_live_below(m: int, k: int, blocks: int, f: float = 0.5) -> float:
    """``P(min over `blocks` independent blocks of Binomial(m, f) live units < k)``: the chance
    that at least one block of a layer has fewer than ``k`` live units."""
    below = binomial_below(m, k, f)
    return float(-math.expm1(blocks * math.log1p(-below))) if below < 1 else 1.0


def min_live_quantile(m: int, blocks: int, prob: float = 0.5, f: float = 0.5) -> int:
    """The ``prob``-quantile of ``min over blocks of Binomial(m, f)``: the smallest k with
    ``P(min <= k) >= prob``."""
    for k in range(m + 1):
        if min_live_below(m, k + 1, blocks, f) >= prob:
            return k
    return m


def formula_cover_probability(m: int, needed: np.ndarray, f: float = 0.5) -> float:
    """Probability, over the signs of the ``u`` drawn in a layer of blocks of ``m`` units, that
    every block ``j`` has at least ``needed[j]`` live units: ``prod_j P(Binomial(m, f) >=
    needed[j])``. Exact when ``needed[j]`` is the block's smallest feasible live width for all
    its instances (the count of positive ``u`` among ``m`` units is independent of the values of
    the live units, so of ``needed``)."""
    logp = 0.0
    for k, c in zip(*np.unique(np.asarray(needed, dtype=np.int64), return_counts=True)):
        above = 1.0 - binomial_below(m, int(k), f)
        if above <= 0:
            return 0.0
        logp += int(c) * math.log(above)
    return float(math.exp(logp))


def block_needed_widths(widths: np.ndarray, rows: int, n_max: int) -> np.ndarray:
    """Per block, the live width all its ``rows`` instances need: the max of their smallest
    feasible widths (block-major order); an instance infeasible up to ``n_max`` counts as
    ``n_max + 1`` (a lower bound on its need)."""
    w = np.where(np.asarray(widths) < 0, n_max + 1, widths).reshape(-1, rows)
    return w.max(axis=1)


def smallest_covering_units(needed: np.ndarray, prob: float = 0.5, f: float = 0.5,
                            m_max: int = 4096) -> int | None:
    """The fewest units per block with :func:`formula_cover_probability` >= ``prob``."""
    lo = int(np.max(needed, initial=0))
    for m in range(max(lo, 1), m_max + 1):
        if formula_cover_probability(m, needed, f) >= prob:
            return m
    return None


@dataclass
class FormulaCheck:
    """Theorem 1's formula against one whole layer, with the construction's own draw."""

    eps: float
    C: float
    units: int                   #: formula block width m (units, live or not)
    live: np.ndarray             #: int (p,) live (positive-u) units per block in this draw
    infeasible: int              #: instances of the layer with no subset of their live coefficients within ε
    short_blocks: np.ndarray     #: blocks holding at least one such instance
    instances: int

    @property
    def min_live(self) -> int:
        return int(self.live.min())

    def row(self) -> dict:
        p = self.live.size
        return {"eps": self.eps, "C": self.C, "formula_units": self.units, "mean_live": self.units / 2,
                "min_live_drawn": self.min_live,
                "min_live_median": min_live_quantile(self.units, p, 0.5),
                "min_live_q01": min_live_quantile(self.units, p, 0.01),
                "instances": self.instances, "infeasible_at_formula": self.infeasible,
                "short_blocks": int(self.short_blocks.size),
                "short_block_live": " ".join(str(int(self.live[j])) for j in self.short_blocks[:20])}


def check_formula(weight: np.ndarray, layer_index: int, depth: int, eps: float, C: float = 1.5,
                  seed: int = 0, distribution: str = "uniform",
                  solve: SolveConfig | None = None) -> FormulaCheck:
    """Draw the construction of ``weight`` (the whole target layer, q x p, non-negative inputs,
    weights only) at Theorem 1's width, exactly as ``approximate --width formula --seed SEED``
    does for its weight blocks, and solve every instance over its block's live coefficients.

    Errors are recomputed from the returned subsets, not taken from the solver."""
    solve = solve or SolveConfig(solver="mitm", workers=1)
    check_solver(solve)
    W = np.asarray(weight, dtype=np.float64)
    q, p = W.shape
    m = formula_width(p, q, depth, eps, None, C)
    plan = LayerPlan(index=layer_index, p=p, q=q, m=m, formula_m=m, has_bias=False, signed_input=False)
    inst = layer_instances(draw_layer_pair(plan, seed, distribution), W, None)
    batch = inst.batch(eps, "error")
    res = solve_all(batch, solve)
    bad = ~np.isin(res.status, (Status.OPTIMAL, Status.FEASIBLE, Status.INFEASIBLE))
    if bad.any():
        raise RuntimeError(f"solver {solve.solver} failed on {int(bad.sum())} instances")
    miss = recompute_errors(batch, res.selections) > eps
    live = inst.counts.reshape(p, q)[:, 0]
    short = np.unique(np.flatnonzero(miss) // q)
    return FormulaCheck(eps, C, m, live, int(miss.sum()), short, len(inst))


@dataclass
class LogFit:
    """``width ≈ slope * log2(1/ε) + intercept`` (least squares) and the through-origin
    constant ``C`` of ``width ≈ C log2(1/ε)``."""

    slope: float
    intercept: float
    C: float
    points: int

    def __call__(self, eps) -> np.ndarray:
        return self.slope * np.log2(1.0 / np.asarray(eps)) + self.intercept


def fit_log_law(eps: np.ndarray, widths: np.ndarray) -> LogFit:
    x = np.log2(1.0 / np.asarray(eps, dtype=float))
    y = np.asarray(widths, dtype=float)
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size == 0:
        return LogFit(float("nan"), float("nan"), float("nan"), 0)
    C = float((x @ y) / (x @ x))
    if x.size >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
    else:
        slope, intercept = C, 0.0
    return LogFit(float(slope), float(intercept), C, int(x.size))


@dataclass
class PowerFit:
    """``width ≈ A * (1/ε)^exponent`` (least squares in log-log)."""

    exponent: float
    A: float

    def __call__(self, eps) -> np.ndarray:
        return self.A * (1.0 / np.asarray(eps)) ** self.exponent


def fit_power_law(eps: np.ndarray, widths: np.ndarray) -> PowerFit:
    x = np.log(1.0 / np.asarray(eps, dtype=float))
    y = np.asarray(widths, dtype=float)
    keep = np.isfinite(y) & (y > 0)
    if keep.sum() < 2:
        return PowerFit(float("nan"), float("nan"))
    a, b = np.polyfit(x[keep], np.log(y[keep]), 1)
    return PowerFit(float(a), float(math.exp(b)))


@dataclass
class WidthLaw:
    """The whole experiment: one :class:`WidthLawResult` per ε, on one weight sample."""

    sample: WeightSample
    results: list[WidthLawResult] = field(default_factory=list)
    seed: int = 0
    distribution: str = "uniform"

    def summary_rows(self, C_formula: float = 1.5) -> list[dict]:
        q, p = self.sample.layer_shape or (1, 1)
        depth = self.sample.depth
        rows = []
        for r in self.results:
            allw = r.all_feasible_width
            units = formula_width(p, q, depth, r.eps, None, C_formula)
            row = {
                "eps": r.eps, "log2_inv_eps": math.log2(1 / r.eps), "instances": int(r.widths.size),
                "whole_layer": self.sample.whole_layer,
                "all_feasible_width": allw if allw is not None else "",
                "infeasible_at_n_max": int((r.widths < 0).sum()), "n_max": r.n_max,
                "median_width": r.quantile(0.5), "q90_width": r.quantile(0.9), "q99_width": r.quantile(0.99),
                "mean_width": float(np.where(r.widths < 0, np.nan, r.widths).mean()),
                "empty_subset_fraction": float((r.widths == 0).mean()),
                "counting_width": counting_width(r.eps),
                # instances that need fewer live coefficients than log2(1/ε): the covering
                # argument bounds what a block can serve, not what one instance needs
                "below_counting_width": float(((r.widths >= 0) & (r.widths < counting_width(r.eps))).mean()),
                "theorem1_units": units,
                "theorem1_mean_live": theorem1_live_width(p, q, depth, r.eps, C_formula),
                "theorem1_min_live_median": min_live_quantile(units, p, 0.5),
                "theorem1_cover_probability": "", "theorem1_C_cover_half": "",
                "solver": r.solver, "seconds": round(r.seconds, 3), "solves": r.solved,
            }
            if self.sample.whole_layer:   # blocks are the layer's own columns: the real minimum
                needed = block_needed_widths(r.widths, q, r.n_max)
                row["theorem1_cover_probability"] = formula_cover_probability(units, needed)
                m_half = smallest_covering_units(needed, 0.5)
                if m_half is not None:
                    row["theorem1_C_cover_half"] = m_half / math.log2(max(2.0, p * q * depth / r.eps))
            rows.append(row)
        return rows


def run_width_law(sample: WeightSample, eps_values, n_max: int = 32, seed: int = 0,
                  distribution: str = "uniform", solve: SolveConfig | None = None) -> WidthLaw:
    """Smallest feasible widths for every ε on one weight sample (same random blocks for all ε)."""
    solve = solve or SolveConfig(solver="mitm", workers=1)
    coef = block_coefficients(sample, n_max, seed, distribution,
                              layer_index=sample.layer if sample.layer is not None else 0)
    law = WidthLaw(sample, seed=seed, distribution=distribution)
    for eps in sorted(eps_values, reverse=True):
        res = smallest_feasible_widths(sample.flat, coef, float(eps), solve)
        log.info("ε=%.3g: all feasible at m=%s, median %.0f (%.1fs)", eps, res.all_feasible_width,
                 res.quantile(0.5), res.seconds)
        law.results.append(res)
    return law


def weight_samples(target_path, layers, n: int | None, rows_per_block: int, seed: int
                   ) -> tuple[list[WeightSample], bool]:
    """Weight samples for the experiments: one per requested layer of a trained target, or,
    without a target, one synthetic sample (returns ``(samples, synthetic)``)."""
    if target_path is None:
        return [synthetic_weights(n or 20000, rows_per_block, seed)], True
    target = load_target(target_path)
    if layers is None or layers == "all":
        layers = range(target.depth)
    return [sample_layer_weights(target, int(i), n, rows_per_block, seed) for i in layers], False
