"""The subset-sum instances a layer pair of g induces (one per target weight and sign half, one
per bias), in a fixed canonical order, and the masks a set of their solutions defines (compact:
per hidden unit and kept edge; dense: g's stored shapes). The pair itself is drawn by
:mod:`subsetsum_lth.construction`."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from subsetsum_lth.construction import LayerPlan, RandomLayerPair, unit_columns
from subsetsum_lth.solvers.instances import InstanceBatch


@dataclass
class LayerInstances:
    """All subset-sum instances of one target layer, in a fixed canonical order.

    Groups are (block j, half) with half +1 / -1 for weights and 0 for the bias block; every
    group has q instances (one per output row), all sharing the same list of units.
    The coefficient matrix (float64, G·q × n_max: the largest array of a layer) is computed
    from the pair when first asked for and can be dropped with :meth:`release` (it is
    recomputed, bit for bit, if asked for again).
    """

    plan: LayerPlan
    group_units: list[np.ndarray]       #: per group: hidden-unit indices (rows of w1)
    group_block: np.ndarray             #: int (G,) j, or -1 for the bias block
    group_half: np.ndarray              #: int8 (G,) +1, -1 or 0 (bias)
    targets: np.ndarray                 #: float64 (G*q,) instance order: group-major, then row
    counts: np.ndarray                  #: int64 (G*q,)
    offset: int = 0                     #: global id of the first instance
    pair: RandomLayerPair | None = field(default=None, repr=False)   #: where the coefficients come from
    _coefficients: np.ndarray | None = field(default=None, repr=False)

    @property
    def q(self) -> int:
        return self.plan.q

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def width(self) -> int:
        """n_max: the most live units of any group (columns of the coefficient matrix)."""
        return max((len(g) for g in self.group_units), default=0)

    @property
    def coefficients(self) -> np.ndarray:
        """float64 (G*q, n_max): ``v[r, unit] * u_unit`` (or ``* beta`` in the bias block), 0-padded."""
        if self._coefficients is None:
            self._coefficients = _coefficients(self.pair, self.group_units, self.group_block, self.q, self.width)
        return self._coefficients

    def release(self) -> None:
        """Drop the coefficient matrix (memory); it is recomputed from the pair when needed."""
        if self.pair is not None:
            self._coefficients = None

    @property
    def ids(self) -> np.ndarray:
        return self.offset + np.arange(len(self), dtype=np.int64)

    def batch(self, tolerance, objective: str) -> InstanceBatch:
        return InstanceBatch(self.ids, self.targets, self.coefficients, self.counts, tolerance, objective)

    def batch_of(self, rows: np.ndarray, tolerance, objective: str) -> InstanceBatch:
        """``batch(...).take(rows)`` without the whole layer's coefficient matrix: only the
        given instances' rows are computed (the same values and width n_max)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._coefficients is not None or self.pair is None:
            coef = self.coefficients[rows]
        else:
            coef = np.zeros((len(rows), self.width), dtype=np.float64)
            groups, r = np.divmod(rows, self.q)
            for g in np.unique(groups):
                at = np.flatnonzero(groups == g)
                units = self.group_units[g]
                scale = (self.pair.u[units] if self.group_block[g] >= 0 else self.pair.b1[units]).astype(np.float64)
                coef[at, :len(units)] = self.pair.w2[np.ix_(r[at], units)].astype(np.float64) * scale[None, :]
        return InstanceBatch(self.offset + rows, self.targets[rows], coef, self.counts[rows], tolerance, objective)

    def rows(self) -> np.ndarray:
        return np.tile(np.arange(self.q), len(self.group_units))

    def group_of_instance(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.group_units)), self.q)


def _coefficients(pair: RandomLayerPair, group_units, group_block, q: int, n_max: int) -> np.ndarray:
    coef = np.zeros((len(group_units) * q, n_max), dtype=np.float64)
    for g, units in enumerate(group_units):
        scale = (pair.u[units] if group_block[g] >= 0 else pair.b1[units]).astype(np.float64)
        # w2's columns of this group only: never the whole (q, H) matrix in float64
        coef[g * q:(g + 1) * q, :len(units)] = pair.w2[:, units].astype(np.float64) * scale[None, :]
    return coef


def layer_instances(pair: RandomLayerPair, target_weight: np.ndarray,
                    target_bias: np.ndarray | None, offset: int = 0) -> LayerInstances:
    plan = pair.plan
    p, q = plan.p, plan.q
    offsets = plan.offsets
    halves = (1, -1) if plan.signed_input else (1,)
    group_units, group_block, group_half = [], [], []
    for j in range(p):
        u = pair.u[plan.block_slice(j)]
        for h in halves:
            ks = np.flatnonzero(u > 0) if h > 0 else np.flatnonzero(u < 0)
            group_units.append(offsets[j] + ks)
            group_block.append(j)
            group_half.append(h)
    if plan.has_bias:
        beta = pair.b1[plan.block_slice(p)]
        group_units.append(plan.bias_block_start + np.flatnonzero(beta > 0))
        group_block.append(-1)
        group_half.append(0)
    G = len(group_units)
    counts = np.empty(G * q, dtype=np.int64)
    targets = np.empty(G * q, dtype=np.float64)
    for g, units in enumerate(group_units):
        rows = slice(g * q, (g + 1) * q)
        j = group_block[g]
        targets[rows] = target_weight[:, j] if j >= 0 else target_bias
        counts[rows] = len(units)
    return LayerInstances(plan, group_units, np.array(group_block), np.array(group_half, dtype=np.int8),
                          targets, counts, offset, pair)


def extend_instances(inst: LayerInstances, pair: RandomLayerPair, target_weight: np.ndarray,
                     target_bias: np.ndarray | None) -> LayerInstances:
    """``layer_instances(pair, ...)`` for a pair that :func:`extend_layer_pair` grew from
    ``inst.plan``: groups of blocks that did not grow keep their units (shifted), only the grown
    blocks' groups are rebuilt; the coefficients are computed from the pair when asked for
    (bit-identical to layer_instances')."""
    old, plan = inst.plan, pair.plan
    grown_block = np.asarray(plan.extensions) != np.asarray(old.extensions)
    shift = plan.offsets[:-1] - old.offsets[:-1]
    blocks = np.where(inst.group_block >= 0, inst.group_block, plan.p)
    q = plan.q
    group_units = []
    for g, units in enumerate(inst.group_units):
        j = int(blocks[g])
        if not grown_block[j]:
            group_units.append(units + shift[j])
            continue
        sl = plan.block_slice(j)
        h = int(inst.group_half[g])
        v = pair.u[sl] if h != 0 else pair.b1[sl]
        ks = np.flatnonzero(v < 0) if h < 0 else np.flatnonzero(v > 0)
        group_units.append(sl.start + ks)
    counts_g = np.array([len(u) for u in group_units], dtype=np.int64)
    return LayerInstances(plan, group_units, inst.group_block.copy(), inst.group_half.copy(),
                          inst.targets.copy(), np.repeat(counts_g, q), inst.offset, pair)


def compact_masks_from_selections(inst: LayerInstances, selections: np.ndarray) -> dict[str, np.ndarray]:
    """The masks of one layer pair in the support's form: ``u`` (H,) keeps unit h's own input
    edge (w1[h, block(h)]), ``b1`` (H,), ``w2`` (q, H), ``b2`` (q,), all uint8.

    A hidden unit is kept (its input edge, or its bias for the bias block) iff at least one
    output uses it; every bias other than a used bias-block unit's is masked to 0.
    """
    plan = inst.plan
    H, q = plan.hidden, plan.q
    mu = np.zeros(H, dtype=np.uint8)
    mb1 = np.zeros(H, dtype=np.uint8)
    mw2 = np.zeros((q, H), dtype=np.uint8)
    mb2 = np.zeros(q, dtype=np.uint8)
    for g, units in enumerate(inst.group_units):
        n = len(units)
        if n == 0:
            continue
        sel = selections[g * q:(g + 1) * q, :n]
        mw2[:, units] = sel.astype(np.uint8)
        used = units[sel.any(axis=0)]
        if inst.group_block[g] >= 0:
            mu[used] = 1
        else:
            mb1[used] = 1
    return {"u": mu, "b1": mb1, "w2": mw2, "b2": mb2}


def dense_masks(plan: LayerPlan, compact: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{w1 (H, p), b1, w2, b2} uint8 masks of a pair from its support-form masks."""
    mw1 = np.zeros((plan.hidden, plan.p), dtype=np.uint8)
    cols = unit_columns(plan)
    rows = np.flatnonzero(cols >= 0)
    mw1[rows, cols[rows]] = compact["u"][rows]
    return {"w1": mw1, "b1": compact["b1"], "w2": compact["w2"], "b2": compact["b2"]}


def masks_from_selections(inst: LayerInstances, selections: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 masks for (w1, b1, w2, b2) of one layer pair from the chosen subsets (dense w1)."""
    return dense_masks(inst.plan, compact_masks_from_selections(inst, selections))
