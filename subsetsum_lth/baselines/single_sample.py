"""Single-sample baseline (Malach et al. 2020 style): approximate each target weight by the
*closest single* random coefficient instead of a subset sum.

For one target weight ``w`` and a stream of i.i.d. random coefficients ``c_1, c_2, ...`` the
width this baseline needs at tolerance ε is the index of the first coefficient with
``|w - c_k| <= ε`` (0 when ``|w| <= ε``: prune everything, as the subset-sum side may take the
empty subset). Each ``c_k`` hits with probability ``P(|c - w| <= ε) ≈ 2 ε f(w)``, so the width
is geometric with mean ``~1/ε``: exponentially more than the subset-sum construction's
``O(log 1/ε)``.

Coefficients, with the construction's distribution (``uniform`` = U[-1, 1] by default):

* ``product``: ``c = v * u`` over the live (positive-``u``) units of a block, ``u`` shared by
  the block's rows, ``v`` per (row, unit) — the construction's own coefficients;
* ``single``: ``c`` is one random weight of the distribution (no product).

The stream is drawn in seeded chunks per block (``SeedSequence(seed, (11, block, chunk))``),
so the answer depends on nothing but the seed.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from subsetsum_lth.construction import DISTRIBUTIONS
from subsetsum_lth.errors import UserError

log = logging.getLogger(__name__)

MODES = ("product", "single")


@dataclass
class SingleSampleResult:
    eps: float
    widths: np.ndarray      #: int64 (N,) width needed per instance; -1: none within max_width
    max_width: int
    mode: str
    seconds: float

    @property
    def all_feasible_width(self) -> int | None:
        return None if (self.widths < 0).any() else int(self.widths.max(initial=0))

    def probability(self, m) -> np.ndarray:
        ok = np.where(self.widths < 0, np.iinfo(np.int64).max, self.widths)
        m = np.atleast_1d(np.asarray(m))
        return (ok[None, :] <= m[:, None]).mean(axis=1)

    def quantile(self, q: float) -> float:
        w = np.where(self.widths < 0, np.inf, self.widths).astype(float)
        return float(np.quantile(w, q, method="higher"))


def _positive(sample: np.ndarray) -> np.ndarray:
    """The live u's: the distribution conditioned on u > 0 (symmetric distributions: |u|)."""
    return np.abs(sample)


def single_sample_widths(weights: np.ndarray, eps: float, seed: int = 0, mode: str = "product",
                         distribution: str = "uniform", max_width: int = 1 << 22,
                         chunk: int = 8192) -> SingleSampleResult:
    """Width needed per instance by the closest-single-coefficient rule.

    Args:
        weights: float64 (rows, blocks), the construction's block layout (see
            :class:`width_law.WeightSample`): the rows of a block share ``u``.
        eps: tolerance.
        mode: 'product' (``v*u``) or 'single' (one random weight).
        max_width: stop drawing after this many coefficients (width -1 beyond).
    Returns:
        widths in block-major instance order (like ``WeightSample.flat``).
    """
    if mode not in MODES:
        raise UserError(f"single-sample mode must be one of {MODES}, got {mode!r}")
    if distribution not in DISTRIBUTIONS:
        raise UserError(f"unknown distribution {distribution!r}")
    sample = DISTRIBUTIONS[distribution]
    t0 = time.perf_counter()
    W = np.asarray(weights, dtype=np.float64)
    rows, blocks = W.shape
    widths = np.full((rows, blocks), -1, dtype=np.int64)
    widths[np.abs(W) <= eps] = 0
    for j in range(blocks):
        todo = np.flatnonzero(widths[:, j] < 0)
        start = 0
        c_idx = 0
        while todo.size and start < max_width:
            size = min(chunk, max_width - start)
            rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(11, j, c_idx)))
            if mode == "product":
                u = _positive(sample(rng, (size,))).astype(np.float64)
                v = sample(rng, (rows, size)).astype(np.float64)[todo]
                c = v * u[None, :]
            else:
                c = sample(rng, (rows, size)).astype(np.float64)[todo]
            hit = np.abs(W[todo, j][:, None] - c) <= eps
            any_hit = hit.any(axis=1)
            first = hit.argmax(axis=1)
            widths[todo[any_hit], j] = start + first[any_hit] + 1
            todo = todo[~any_hit]
            start += size
            c_idx += 1
    out = widths.T.ravel()
    res = SingleSampleResult(float(eps), out, int(max_width), mode, time.perf_counter() - t0)
    log.info("single-sample %s ε=%.3g: all feasible at %s, median %.0f (%.1fs)", mode, eps,
             res.all_feasible_width, res.quantile(0.5), res.seconds)
    return res


def hit_probability_product(w: np.ndarray, eps: float) -> np.ndarray:
    """P(|v*u - w| <= ε) for u ~ U(0, 1], v ~ U[-1, 1] (the uniform construction's live
    coefficients), by integrating the exact density f(c) = -ln|c| / 2 on |c| <= 1."""
    w = np.atleast_1d(np.asarray(w, dtype=np.float64))

    def cdf(x):   # P(c <= x), c = v*u, symmetric: F(x) = 1/2 + sign(x) G(|x|), G(a) = (a - a ln a)/2
        a = np.clip(np.abs(x), 0.0, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(a > 0, (a - a * np.log(a)) / 2, 0.0)
        return 0.5 + np.sign(x) * g
    return cdf(w + eps) - cdf(w - eps)
