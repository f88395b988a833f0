"""The random network of Theorem 1 / Lemma 1: block plan and seeded random weights (the
subset-sum instances they induce, and the masks a set of solutions defines, are in
:mod:`subsetsum_lth.layer_instances`).

Target layer i (W in R^{q x p}, optional b) becomes two random layers of g:

* layer 2i-1: ``Linear(p, H)`` with ``H = p*m (+ m for a bias block)``. Hidden unit
  ``(j, k)`` (row ``j*m + k``) belongs to block ``j`` and keeps only its edge from input ``j``
  (block-diagonal pre-pruning); its weight ``u_jk`` is shared by all ``q`` outputs.
  The bias block (rows ``p*m ...``) keeps no input edge and only a positive random bias.
* layer 2i: ``Linear(H, q)``; the subset-sum solutions choose which of its edges are kept.

For output ``r`` and input ``j`` the instance is: target ``W[r, j]``, coefficients
``v[r, (j,k)] * u_jk`` over the units of block ``j`` with ``u_jk > 0`` (and, for signed
inputs, a second instance over the units with ``u_jk < 0``). Bias instances: target ``b[r]``,
coefficients ``v[r, k] * beta_k`` over bias-block units with ``beta_k > 0``.

Randomness: every block draws from ``SeedSequence(seed, spawn_key=(layer, block))``, so the
network does not depend on the number of workers or on the order of work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from subsetsum_lth import resources
from subsetsum_lth.errors import UserError
from subsetsum_lth.gnet import GLayout
from subsetsum_lth.layerkinds import Linear
from subsetsum_lth.options import option
from subsetsum_lth.target import Target

INPUT_DOMAINS = ("nonnegative", "signed")
WIDTH_MODES = ("formula", "auto", "adaptive")


def _uniform(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)


def _normal(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.standard_normal(size=shape).astype(np.float32)


#: One registry of weight distributions for g (name -> sampler(rng, shape) -> float32).
DISTRIBUTIONS = {"uniform": _uniform, "normal": _normal}

#: Hard cap on the dense random network, in float32 entries, before we refuse (≈ 8 GB).
MAX_RANDOM_ENTRIES = 2_000_000_000


@dataclass
class ConstructionConfig:
    """How g is shaped and drawn.

    Attributes:
        input_domain: 'nonnegative' (e.g. image pixels, only positive units are live) or
            'signed' (both sign halves are used) — for the first target layer; later layers see
            ReLU outputs and are always non-negative.
        seed: root of the SeedSequence.
        eps: the ε in the width formula ``m = ceil(C * log2(p*q*l / min(eps, delta)))``.
        delta: failure probability in the formula (defaults to eps).
        C: constant of the formula.
        block_width: if given, the starting width of every layer instead of the formula or
            :func:`adaptive_width` (same m for every layer).
        distribution: name in DISTRIBUTIONS.
        tau: the per-weight tolerance :func:`adaptive_width` starts from (None: ``eps``);
            approximate's ``--eps`` mode sets it to the run's initial τ.
    """

    input_domain: str = "nonnegative"
    seed: int = option(0, flag="--seed", help="seed of the random network")
    eps: float = 0.01
    delta: float | None = option(None, flag="--delta",
                                 help="δ in the width formula of --width auto and formula (default: ε)")
    C: float = option(1.5, flag="--C",
                      help="constant C in m = ceil(C log2(p q l / min(ε, δ))), the starting width of "
                           "--width auto and formula")
    block_width: int | None = option(None, flag="--block-width",
                                     help="units per block m (overrides the Theorem 1 formula)")
    distribution: str = option("uniform", flag="--distribution", choices=("uniform", "normal"),
                               help="distribution of g's weights (uniform = U[-1, 1])")
    #: 'adaptive' (default: start at :func:`adaptive_width`, from τ and the weights, and grow
    #: blocks that fail), 'auto' (start at the formula's width, and grow), 'formula' (fixed)
    width: str = option(
        "adaptive", flag="--width", choices=("formula", "auto", "adaptive"),
        help="adaptive (default): blocks start at ceil(2 log2(max(1, max|w|)/τ) + 6) units "
             "(from τ and the weights, not the layer size; or --block-width) and blocks with an "
             "instance outside τ grow by fresh seeded units until all are within τ: the "
             "smallest g and the fastest run, at a looser certified bound; auto: the same "
             "growth from the Theorem 1 formula's width (or --block-width); formula: every "
             "block has the formula's (or --block-width) units, no growth")
    #: units appended per growth step (default: max(4, m // 4))
    grow: int | None = option(None, flag="--grow",
                              help="units appended to a block per growth step (default: max(4, m/4))")
    #: growth steps per block at most; None: no step cap — a block grows while it has an instance
    #: outside τ, its live units stay within exact search's reach and the cost budget allows
    max_growth: int | None = option(
        None, flag="--max-growth",
        help="growth steps per block at most (0: no growth, as --width formula); default: no "
             "step cap, a block grows while it has an instance outside τ, its live units stay "
             "within exact search's reach and its estimated re-solve time within --max-hours")
    tau: float | None = None
    #: a pair whose dense first layer (H × p) would hold more entries than this is drawn as its
    #: block support only (its pruned-away entries are implicit zeros, never drawn; the run is
    #: stored compact). The default is the allocation cap: only pairs the dense draw could not
    #: hold at all, so every g the dense draw can make is drawn as before.
    support_draw_above: int = option(
        MAX_RANDOM_ENTRIES, flag="--support-draw-above", metavar="N",
        help="draw a layer pair's first random layer as its block support only (each hidden unit's "
             "one input edge the construction can keep; the pruned-away entries are implicit zeros, "
             "never drawn) when its dense H×p matrix would hold more than this many entries; such "
             "a run is stored compact (default 2e9: only where the dense layer could not be held)")

    def __post_init__(self) -> None:
        if self.input_domain not in INPUT_DOMAINS:
            raise UserError(f"input domain must be one of {INPUT_DOMAINS}, got {self.input_domain!r}")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise UserError(f"ε must be a positive finite number, got {self.eps}")
        if self.delta is not None and not (0 < self.delta < 1):
            raise UserError(f"--delta must lie in (0, 1), got {self.delta}")
        if not (self.C > 0 and math.isfinite(self.C)):
            raise UserError(f"--C must be a positive number, got {self.C}")
        if self.block_width is not None:
            resources.check_int("--block-width", self.block_width, 1)   # its memory and time: limits.check_reach
        if self.distribution not in DISTRIBUTIONS:
            raise UserError(f"unknown distribution {self.distribution!r}; choose from {sorted(DISTRIBUTIONS)}")
        if self.width not in WIDTH_MODES:
            raise UserError(f"--width must be one of {WIDTH_MODES}, got {self.width!r}")
        if self.max_growth is not None:
            resources.check_int("--max-growth", self.max_growth, 0, resources.MAX_COUNT)
        if self.tau is not None and not (math.isfinite(self.tau) and self.tau > 0):
            raise UserError(f"the adaptive width's τ must be a positive number, got {self.tau!r}")
        if self.grow is not None:
            resources.check_int("--grow", self.grow, 1, resources.MAX_COUNT)
        resources.check_int("--support-draw-above", self.support_draw_above, 0)
        resources.check_int("--seed", self.seed, 0, resources.MAX_SEED)


def adaptive_width(weight_max: float, tau: float) -> int:
    """``--width adaptive``'s starting block width ``ceil(2 log2(max(1, max|w|) / τ) + 6)``: from τ
    and the layer's weights only, not from p·q, so the instance size of a layer (n ≈ m/2 live
    coefficients; the width law measures ~log2(1/τ) for the median instance) does not grow with
    the network. Blocks whose instances need more grow (:mod:`subsetsum_lth.growth`)."""
    return max(4, int(math.ceil(2.0 * math.log2(max(1.0, float(weight_max)) / float(tau)) + 6.0)))


def formula_width(p: int, q: int, depth: int, eps: float, delta: float | None, C: float) -> int:
    """Theorem 1's block width ``ceil(C * log2(p*q*l / min(eps, delta)))``."""
    d = eps if delta is None else min(eps, delta)
    return max(1, int(math.ceil(C * math.log2(max(2.0, p * q * depth / d)))))


@dataclass
class LayerPlan:
    index: int          #: target layer index i (0-based)
    p: int              #: inputs of the target layer
    q: int              #: outputs
    m: int              #: units per block at the start
    formula_m: int      #: what the formula gives (for the report)
    has_bias: bool
    signed_input: bool  #: the layer's input can be negative (layer 0 with a signed input domain; in a
    #: residual network also a layer whose input is not after a ReLU: Target.signed_inputs)
    grow: int = 0       #: units appended to a block per growth step (adaptive widths)
    extensions: np.ndarray | None = None  #: growth steps taken per block (p blocks + bias block)
    kind: object = None  #: the target layer's kind (layerkinds.Linear/Conv2d); None: Linear
    #: the first random layer is drawn as its block support only (``--support-draw-above``): each
    #: unit's own-edge value u from its chunk's stream, the rest of w1 implicit zeros, never drawn
    lean: bool = False

    def __post_init__(self) -> None:
        if self.extensions is None:
            self.extensions = np.zeros(self.n_blocks, dtype=np.int64)

    @property
    def n_blocks(self) -> int:
        return self.p + (1 if self.has_bias else 0)

    @property
    def block_widths(self) -> np.ndarray:
        return self.m + self.grow * np.asarray(self.extensions, dtype=np.int64)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.block_widths)]).astype(np.int64)

    @property
    def hidden(self) -> int:
        return int(self.block_widths.sum())

    @property
    def bias_block_start(self) -> int:
        return int(self.offsets[self.p])

    def block_slice(self, j: int) -> slice:
        o = self.offsets
        return slice(int(o[j]), int(o[j + 1]))

    def held_entries(self, hidden: int | None = None) -> int:
        """float32 weights of the pair as the construction holds it: the dense w1 (H·p) and w2,
        or for a support-drawn pair its support u (H) and w2."""
        h = self.hidden if hidden is None else int(hidden)
        return h * ((1 if self.lean else self.p) + self.q)


def plan_layers(target: Target, config: ConstructionConfig) -> list[LayerPlan]:
    plans = []
    l = target.depth
    signed = target.signed_inputs(config.input_domain)
    for i, L in enumerate(target.layers):
        q, p = L.weight.shape
        fm = formula_width(p, q, l, config.eps, config.delta, config.C)
        m = config.block_width or fm
        if config.width == "adaptive" and not config.block_width:
            m = adaptive_width(float(np.abs(L.weight).max(initial=0.0)), config.tau or config.eps)
        grow = 0 if config.width == "formula" else (config.grow or max(4, m // 4))
        plan = LayerPlan(i, p, q, m, fm, L.bias is not None, signed_input=signed[i], grow=grow, kind=L.kind)
        plan.lean = plan.hidden * p > config.support_draw_above
        plans.append(plan)
    entries = sum(pl.held_entries(pl.hidden + pl.grow * (config.max_growth or 0)) for pl in plans)
    if entries > MAX_RANDOM_ENTRIES:
        gb = entries * 4 / 1e9
        raise UserError(
            f"the random network would hold {entries:,} weights (≈{gb:.1f} GB as float32), more than "
            f"this tool allocates ({MAX_RANDOM_ENTRIES:,}); lower --block-width or --C, or use a smaller target")
    return plans


@dataclass
class RandomLayerPair:
    """The two random layers of g that replace one target layer (float32, as stored).

    Only the block support is held: ``u`` (H,) is w1 at each hidden unit's own input edge
    (``w1[h, block(h)]``; 0 for the bias block, which keeps no input edge), and ``b1``, ``w2``,
    ``b2`` whole (every hidden unit's bias and out-edges can be kept). The dense w1 (H, p) —
    masked out everywhere else — is generated on demand from the seed (:attr:`w1`)."""

    plan: LayerPlan
    u: np.ndarray       #: (H,) w1 at each unit's own input edge
    b1: np.ndarray      #: (H,)
    w2: np.ndarray      #: (q, H)
    b2: np.ndarray      #: (q,)
    seed: int = 0
    distribution: str = "uniform"
    dense_w1: np.ndarray | None = field(default=None, repr=False)   #: kept when drawn with dense=True
    #: the plan's growth steps when drawn (the plan object is shared, and growth changes it)
    extensions: np.ndarray | None = None

    @property
    def drawn_plan(self) -> LayerPlan:
        """The plan as it was when this pair was drawn."""
        if self.extensions is None or np.array_equal(self.extensions, self.plan.extensions):
            return self.plan
        return replace(self.plan, extensions=self.extensions.copy())

    @property
    def w1(self) -> np.ndarray:
        """The dense (H, p) first-layer matrix, regenerated from the seed when not kept."""
        if self.dense_w1 is not None:
            return self.dense_w1
        pl = self.drawn_plan
        if pl.lean and pl.hidden * pl.p > MAX_RANDOM_ENTRIES:
            raise UserError(f"layer {pl.index} of g was drawn as its block support only (--support-draw-above): "
                            f"its dense first layer would hold {pl.hidden * pl.p:,} weights "
                            f"(≈{4 * pl.hidden * pl.p / 1e9:.1f} GB as float32), more than can be held; this "
                            "command needs the dense g (certify, --resume and the API's export_pruned read "
                            "such a run)")
        return draw_layer_pair(pl, self.seed, self.distribution, dense=True).dense_w1

    @property
    def columns(self) -> np.ndarray:
        """int64 (H,): the input edge each unit may keep (its block j), -1 for bias-block units."""
        return unit_columns(self.drawn_plan)

    @property
    def size(self) -> int:
        """Parameters of the dense pair (H·p + H + q·H + q)."""
        pl = self.drawn_plan
        return pl.hidden * pl.p + pl.hidden + pl.q * pl.hidden + pl.q


def unit_columns(plan: LayerPlan) -> np.ndarray:
    """int64 (H,): block j of every hidden unit (its one possible input edge), -1 in the bias block."""
    cols = np.repeat(np.arange(plan.n_blocks, dtype=np.int64), plan.block_widths)
    if plan.has_bias:
        cols[plan.bias_block_start:] = -1
    return cols


def block_seed(seed: int, layer: int, block: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(int(seed), spawn_key=(int(layer), int(block)))


def draw_chunk(plan: LayerPlan, seed: int, sample, j: int, e: int, start: int, w1, b1, w2, u=None) -> int:
    """Draw chunk e of block j (e = 0: its first m units from SeedSequence(seed, (i, j)); e ≥ 1:
    growth step e's ``grow`` units from SeedSequence(seed, (i, j, e))) into rows ``start...``;
    returns the row after it. ``w1`` may be None (the rows are drawn, in the stream's order, but
    not kept); ``u`` (H,), when given, receives each unit's own-edge value w1[h, j] (j < p). A
    support-drawn plan (``plan.lean``) draws only the own-edge values (size,) in place of the
    rows (size, p): a different stream, its w1 zero off the support."""
    if e == 0:
        size, ss = plan.m, block_seed(seed, plan.index, j)
    else:
        size, ss = plan.grow, np.random.SeedSequence(int(seed), spawn_key=(plan.index, j, e))
    rng = np.random.default_rng(ss)
    rows = slice(start, start + size)
    if plan.lean:       # the support draw: the units' own-edge values only, the rest of w1 is 0
        own = sample(rng, (size,))
        if w1 is not None:
            w1[rows] = 0.0
            if j < plan.p:
                w1[rows, j] = own
        if u is not None and j < plan.p:
            u[rows] = own
    else:
        block = sample(rng, (size, plan.p))
        if w1 is not None:
            w1[rows] = block
        if u is not None and j < plan.p:
            u[rows] = block[:, j]
    bias = sample(rng, (size,))
    if plan.has_bias:
        b1[rows] = bias
    w2[:, rows] = sample(rng, (plan.q, size))
    return start + size


def draw_layer_pair(plan: LayerPlan, seed: int, distribution: str = "uniform",
                    dense: bool = False) -> RandomLayerPair:
    """Draw the random weights of layers 2i-1, 2i block by block from per-block seeds.

    Block j's first m units come from SeedSequence(seed, (i, j)); growth step e ≥ 1 appends
    ``grow`` units drawn from SeedSequence(seed, (i, j, e)). Nothing depends on other blocks.
    Each chunk draws its units' whole rows of w1 (the stream's order), but only the own-edge
    value u is kept unless ``dense``: memory is the block support, not H·p."""
    sample = DISTRIBUTIONS[distribution]
    p, q, H = plan.p, plan.q, plan.hidden
    w1 = np.empty((H, p), dtype=np.float32) if dense else None
    u = np.zeros(H, dtype=np.float32)
    b1 = np.zeros(H, dtype=np.float32)
    w2 = np.empty((q, H), dtype=np.float32)
    offsets = plan.offsets
    for j in range(plan.n_blocks):
        start = int(offsets[j])
        for e in range(int(plan.extensions[j]) + 1):
            start = draw_chunk(plan, seed, sample, j, e, start, w1, b1, w2, u)
    if plan.has_bias:
        b2 = sample(np.random.default_rng(block_seed(seed, plan.index, p + 1)), (q,))
    else:
        b2 = np.zeros(q, dtype=np.float32)
    return RandomLayerPair(plan, u, b1, w2, b2, int(seed), distribution, w1,
                           np.asarray(plan.extensions, dtype=np.int64).copy())


def extend_layer_pair(pair: RandomLayerPair, plan: LayerPlan, seed: int,
                      distribution: str = "uniform") -> RandomLayerPair:
    """The pair ``draw_layer_pair(plan, seed, distribution)`` gives, for a ``plan`` whose blocks
    have at least ``pair.plan``'s extensions: kept blocks are copied, only the new growth chunks
    are drawn (byte-identical to drawing everything: every chunk has its own seed). Like
    draw_layer_pair it holds the support (u, b1, w2, b2), and the dense w1 only if ``pair`` does."""
    old = pair.drawn_plan
    old_ext = np.asarray(old.extensions, dtype=np.int64)
    new_ext = np.asarray(plan.extensions, dtype=np.int64)
    if (old.index, old.p, old.q, old.m, old.grow, old.has_bias, old.lean) != (plan.index, plan.p, plan.q, plan.m,
                                                                               plan.grow, plan.has_bias, plan.lean) \
            or (new_ext < old_ext).any():
        raise ValueError("extend_layer_pair: the new plan must be the old one with more growth steps")
    sample = DISTRIBUTIONS[distribution]
    H = plan.hidden
    dense = pair.dense_w1 is not None
    w1 = np.empty((H, plan.p), dtype=np.float32) if dense else None
    u = np.zeros(H, dtype=np.float32)
    b1 = np.zeros(H, dtype=np.float32)
    w2 = np.empty((plan.q, H), dtype=np.float32)
    o_old, o_new = old.offsets, plan.offsets

    def copy(a, b, d):
        if dense:
            w1[d:d + b - a] = pair.dense_w1[a:b]
        u[d:d + b - a] = pair.u[a:b]
        b1[d:d + b - a] = pair.b1[a:b]
        w2[:, d:d + b - a] = pair.w2[:, a:b]

    # runs of blocks between grown ones keep their relative layout: one copy per run
    grown = np.flatnonzero(new_ext > old_ext)
    run_start = 0
    for j in list(grown) + [plan.n_blocks]:
        j = int(j)
        a, b = int(o_old[run_start]), int(o_old[j])
        if b > a:
            copy(a, b, int(o_new[run_start]))
        if j < plan.n_blocks:     # block j: its old units, then its new chunks
            a, b = int(o_old[j]), int(o_old[j + 1])
            d = int(o_new[j])
            copy(a, b, d)
            start = d + b - a
            for e in range(int(old_ext[j]) + 1, int(new_ext[j]) + 1):
                start = draw_chunk(plan, seed, sample, j, e, start, w1, b1, w2, u)
        run_start = j + 1
    return RandomLayerPair(plan, u, b1, w2, pair.b2.copy(), int(seed), distribution, w1, new_ext.copy())


@dataclass
class Construction:
    """The whole random network g and its instances."""

    config: ConstructionConfig
    plans: list[LayerPlan]
    pairs: list[RandomLayerPair] = field(default_factory=list)
    after: tuple = ()                 #: the target's parameter-free ops after each layer
    input_shape: tuple | None = None  #: (C, H, W) for an image network
    graph: list | None = None         #: a residual target's architecture (Target.graph)

    @property
    def layout(self):
        return layout_of(self.plans, self.after, self.input_shape, self.graph)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The dense g (float32, every w1 regenerated from the seed): what random_net.safetensors holds."""
        layout = self.layout
        out = {}
        for i, pair in enumerate(self.pairs):
            out.update(layout.to_stored(i, pair.w1, pair.b1, pair.w2, pair.b2))
        return out

    @property
    def total_parameters(self) -> int:
        return sum(pair.size for pair in self.pairs)

    @property
    def prepruned_parameters(self) -> int:
        """Parameters left after the block-diagonal pre-pruning (before solving)."""
        total = 0
        for pl in self.plans:
            total += pl.hidden + pl.q * pl.hidden   # one edge or bias per hidden unit, all out-edges
        return total


def layout_of(plans: list[LayerPlan], after=(), input_shape=None, graph=None):
    """The :class:`subsetsum_lth.gnet.GLayout` of the g these plans describe."""
    kinds = tuple(pl.kind if pl.kind is not None else Linear(pl.p, pl.q, pl.has_bias) for pl in plans)
    after = tuple(tuple(a) for a in after) if after else tuple(() for _ in plans)
    return GLayout(kinds, tuple(pl.hidden for pl in plans), after,
                   None if input_shape is None else tuple(input_shape), graph)


def build_construction(target: Target, config: ConstructionConfig) -> Construction:
    plans = plan_layers(target, config)
    pairs = [draw_layer_pair(pl, config.seed, config.distribution) for pl in plans]
    return Construction(config, plans, pairs, tuple(tuple(target.ops_after(i)) for i in range(target.depth)),
                        target.input_shape, target.graph)
