"""Adaptive width (``--width auto|adaptive``): blocks with an instance outside τ grow by fresh
seeded units and only those instances are solved again.

Growth is driven by the evidence of the solves and by live units, not by a step cap: a block
grows while one of its instances is outside τ, as long as (a) the live count of every such
instance's group after the step stays within what the backend answers (:func:`limits.growth_within_reach`
with :func:`limits.growth_reach`: exact search up to n = 40, fix-and-search beyond it up to
``limits.GROWTH_MAX_N``, where τ must not be finer than fix-and-search resolves; a 60-unit block
may hold 14 live units in a sign half, so the block width says little), (b) the
run's :class:`limits.GrowthBudget` (the ``--max-hours`` budget of estimated solve time, the
construction's allocation cap) pays for the step, and (c) an explicit ``--max-growth`` allows it.
Beyond exact search an instance fix-and-search could not settle is TIMEOUT, not a proved
INFEASIBLE; it counts as outside τ all the same (growth is what helps a target near the end of the
range of its subset sums: a bias far outside [-1, 1]).
Every decision depends only on the instances' statuses and the seeded draws, never on batching
or the number of workers, so a seed gives the same masks everywhere. A block that has to stop
says why in its instances' messages (report.json ``infeasible_examples``, exit 3).

Why the solves, not a counting bound, decide which block grows: 2^n subset sums cover a range
A at spacing 2τ only if n ≥ log2(A/τ), but that is necessary, not sufficient. The block that
stopped at the old cap (784-500-10, |w| ≤ 0.15, τ = 0.01: 60 units) held 14 live units, far
above log2(0.15/0.01) ≈ 3.9, yet 13 of its 14 coefficients were positive and its target was
−0.138. Only the exact solve shows that; the live count decides how far the block may grow."""
from __future__ import annotations

import logging

import numpy as np

from subsetsum_lth.construction import DISTRIBUTIONS, ConstructionConfig, draw_chunk, extend_layer_pair
from subsetsum_lth.layer_instances import LayerInstances, extend_instances
from subsetsum_lth.limits import (GrowthBudget, _solver_reach, growth_reach, growth_within_reach,
                                  instance_seconds, instance_time_limit)
from subsetsum_lth.progress import close
from subsetsum_lth.solve import SolveConfig, solve_all
from subsetsum_lth.solvers.fixsearch import finest_tau
from subsetsum_lth.solvers.instances import BatchResult, InstanceBatch, Status, row_engines
from subsetsum_lth.target import Target

log = logging.getLogger(__name__)

#: reasons a block stops growing (the instance messages of what is left outside τ; each is
#: prefixed with the instance's kind and target, see :func:`_stop_message`)
STOP_CAP = "growth stopped at --max-growth {cap} steps; raise --max-growth"
STOP_REACH = ("growth stopped: one more step gives {n} live coefficients, beyond the {reach} growth "
              "gives an instance (exact search up to n = {exact}, fix-and-search beyond); pass "
              "--allow-infeasible to keep the closest subset (the certified bound includes its error)")
STOP_CARDINALITY = ("growth stopped: one more step gives {n} live coefficients, beyond exact search (at most "
                    "n = {exact}), which the cardinality objective needs; use --objective error or feasible "
                    "(fix-and-search answers beyond it)")
STOP_PRECISION = ("growth stopped: one more step gives {n} live coefficients, beyond exact search (at most "
                  "n = {exact}), and τ={tau:.3g} is finer than fix-and-search resolves there (~{finest:.2g}); "
                  "loosen τ to {need:.2g} or more (--weight-eps, or a larger --eps)")
STOP_BUDGET = "growth stopped: {why}; raise --max-hours"


class _Growing:
    """One layer's blocks while they grow: live counts and the coefficients appended to each
    group, from the new seeded chunks alone. The full pair and instance table are rebuilt once,
    at the end (:func:`extend_layer_pair`, :func:`extend_instances`), so a growth step costs
    O(blocks that grow + instances re-solved), not O(layer)."""

    def __init__(self, inst: LayerInstances, cc: ConstructionConfig):
        self.inst, self.cc, self.plan = inst, cc, inst.plan
        self.ext = np.asarray(self.plan.extensions, dtype=np.int64).copy()
        self.block_of_group = np.where(inst.group_block >= 0, inst.group_block, self.plan.p)
        self.groups_of_block: dict[int, list[int]] = {}
        for g, j in enumerate(self.block_of_group):
            self.groups_of_block.setdefault(int(j), []).append(g)
        self.base = np.array([len(u) for u in inst.group_units], dtype=np.int64)
        self.count = self.base.copy()
        self.extra: dict[int, list[np.ndarray]] = {}     # group -> appended (q, k) coefficient blocks
        self._chunks: dict[tuple[int, int], tuple] = {}

    def chunk(self, j: int, e: int):
        key = (j, e)
        if key not in self._chunks:
            pl, g = self.plan, self.plan.grow
            w1, b1, w2 = (np.empty((g, pl.p), np.float32), np.zeros(g, np.float32), np.empty((pl.q, g), np.float32))
            draw_chunk(pl, self.cc.seed, DISTRIBUTIONS[self.cc.distribution], j, e, 0, w1, b1, w2)
            self._chunks[key] = (b1 if j == pl.p else w1[:, j].copy(), w2)
        return self._chunks[key]

    def live(self, g: int, v: np.ndarray) -> np.ndarray:
        h = int(self.inst.group_half[g])
        return np.flatnonzero(v < 0) if h < 0 else np.flatnonzero(v > 0)

    def live_after(self, groups) -> dict[int, int]:
        """Live count of each group after its block's next growth chunk."""
        out = {}
        for g in groups:
            g = int(g)
            j = int(self.block_of_group[g])
            v, _ = self.chunk(j, int(self.ext[j]) + 1)
            out[g] = int(self.count[g]) + len(self.live(g, v))
        return out

    def grow(self, blocks) -> np.ndarray:
        """Append the next chunk to ``blocks``; returns the groups whose live count rose."""
        changed = []
        for j in blocks:
            j = int(j)
            self.ext[j] += 1
            v, w2 = self.chunk(j, int(self.ext[j]))
            del self._chunks[(j, int(self.ext[j]))]
            for g in self.groups_of_block[j]:
                ks = self.live(g, v)
                if ks.size:
                    # as layer_instances: float64(w2) * float64(u) over the live units, in unit order
                    c = w2[:, ks].astype(np.float64) * v[ks].astype(np.float64)[None, :]
                    self.extra.setdefault(g, []).append(c)
                    self.count[g] += ks.size
                    changed.append(g)
        return np.array(changed, dtype=np.int64)

    def batch(self, rows: np.ndarray, tau, objective: str) -> InstanceBatch:
        inst, q = self.inst, self.plan.q
        groups = rows // q
        counts = self.count[groups]
        coef = np.zeros((rows.size, int(counts.max(initial=0))), dtype=np.float64)
        base = inst.batch_of(rows, tau, objective).coefficients    # these rows only, never the layer's
        for k, (i, g) in enumerate(zip(rows, groups)):
            b = int(self.base[g])
            coef[k, :b] = base[k, :b]
            col = b
            for c in self.extra.get(int(g), ()):
                coef[k, col:col + c.shape[1]] = c[i - g * q]
                col += c.shape[1]
        tol = np.broadcast_to(np.asarray(tau, dtype=np.float64), (len(inst),))[rows]
        return InstanceBatch(inst.ids[rows], inst.targets[rows], coef, counts, tol, objective)

    def grown_plan(self):
        from dataclasses import replace
        return replace(self.plan, extensions=self.ext.copy())


def _stop_message(inst: LayerInstances, row: int, why: str) -> str:
    """``why`` a block stopped, for one of its instances: its kind (bias, or the weight's row and
    column) and its target value first."""
    g, out = divmod(int(row), inst.plan.q)
    if int(inst.group_half[g]) == 0:
        what = f"bias {float(inst.targets[row]):.4g} (layer {inst.plan.index + 1}, unit {out})"
    else:
        what = (f"weight {float(inst.targets[row]):.4g} (layer {inst.plan.index + 1}, row {out}, "
                f"column {int(inst.group_block[g])})")
    return f"{what}: {why}"


def _beyond_reach(st: _Growing, live_after: dict, infeasible: np.ndarray, g_of: np.ndarray, tau,
                  objective: str, reach: int | None, beyond: int | None) -> dict[int, str]:
    """Blocks whose next step would give an instance more live coefficients than growth allows
    (``beyond``), or, past exact search (``reach``), a τ finer than fix-and-search resolves:
    block -> why it stops."""
    over: dict[int, str] = {}
    for g, n in live_after.items():
        j = int(st.block_of_group[g])
        if not growth_within_reach(n, beyond):
            over[j] = (STOP_CARDINALITY if beyond == reach else STOP_REACH).format(n=n, reach=beyond,
                                                                                exact=reach)
        elif reach is not None and n > reach and j not in over:
            # beyond exact search: only where fix-and-search resolves τ
            rows = infeasible[g_of[infeasible] == g]
            sub = st.batch(rows, tau, objective)
            fine = [(float(sub.tolerances[k]), finest_tau(sub.coefficients[k, :int(sub.counts[k])]))
                    for k in range(len(sub))]
            bad = [(t, f) for t, f in fine if t < f]
            if bad:
                t, f = min(bad)
                over[j] = STOP_PRECISION.format(n=n, exact=reach, tau=t, finest=f,
                                                need=max(f for _, f in fine))
    return over


def grow_layer(target: Target, pair, inst: LayerInstances, res, tau, cc: ConstructionConfig,
               sc: SolveConfig, store, executor, progress, budget: GrowthBudget | None = None,
               solved_n: np.ndarray | None = None):
    """Adaptive width: append fresh seeded units to every block that has an instance outside τ
    and re-solve only those instances, until all are within τ or no such block may grow (see the
    module docstring). Feasible instances of a grown block keep their subset (their units still
    exist); their status becomes FEASIBLE since optimality over the grown block is not proved.
    An instance whose group gained no live unit is unchanged, so it is not solved again.
    ``budget`` is spent in place (shared by all layers and rounds of a run); None: unlimited.
    ``solved_n`` (one entry per instance), if given, is set in place to the live count of each
    instance's re-solve."""
    plan = pair.plan
    L = target.layers[plan.index]
    reach = _solver_reach(sc.solver)          # exact search
    beyond = growth_reach(sc.solver, sc.objective)   # fix-and-search beyond it, up to this
    limit = instance_time_limit(sc.time_limit)
    q = plan.q
    st = _Growing(inst, cc)
    g_of = inst.group_of_instance()
    block_of_row = st.block_of_group[g_of]
    status, errors, messages, seconds = res.status.copy(), res.errors.copy(), dict(res.messages), res.seconds
    engines = row_engines(res).astype(object)
    new_sel: dict[int, np.ndarray] = {}
    step = 0
    stopped: dict[int, str] = {}     # block -> why it may not grow
    while True:
        outside = status == Status.INFEASIBLE
        if reach is not None:        # beyond exact search, not settled by fix-and-search
            outside |= (status == Status.TIMEOUT) & (st.count[g_of] > reach)
        infeasible = np.flatnonzero(outside)
        if infeasible.size == 0:
            break
        groups = np.unique(g_of[infeasible])
        want = np.unique(st.block_of_group[groups])
        if cc.max_growth is not None:
            capped = want[st.ext[want] >= cc.max_growth]
            for j in capped:
                stopped[int(j)] = STOP_CAP.format(cap=cc.max_growth)
            want = np.setdiff1d(want, capped)
        live_after = st.live_after(groups[np.isin(st.block_of_group[groups], want)])
        over = _beyond_reach(st, live_after, infeasible, g_of, tau, sc.objective, reach, beyond)
        stopped.update(over)
        want = np.setdiff1d(want, np.fromiter(over, dtype=np.int64, count=len(over)))
        if want.size and budget is not None:
            redo = infeasible[np.isin(block_of_row[infeasible], want)]
            cost = sum(instance_seconds(live_after[int(g)], reach, limit, beyond) for g in g_of[redo])
            why = budget.charge(cost, plan.held_entries(int(want.size) * plan.grow))
            if why is not None:
                for j in want:
                    stopped[int(j)] = STOP_BUDGET.format(why=why)
                want = want[:0]
        if want.size == 0:
            break
        step += 1
        log.info("layer %d growth step %d: %d blocks grow by %d units, %d instances outside τ",
                 plan.index, step, int(want.size), plan.grow, infeasible.size)
        changed = st.grow(want)
        grow_mask = np.zeros(plan.n_blocks, dtype=bool)
        grow_mask[want] = True
        status[grow_mask[block_of_row] & (status == Status.OPTIMAL)] = Status.FEASIBLE
        redo = infeasible[np.isin(g_of[infeasible], changed)]
        if redo.size == 0:
            continue
        sub = st.batch(redo, tau, sc.objective)
        bar = progress(len(sub), f"layer {plan.index + 1}: growth {step}") if progress else None
        r2 = solve_all(sub, sc, on_progress=bar, store=store, executor=executor)
        close(bar)
        for k, i in enumerate(redo):
            new_sel[int(i)] = r2.selections[k, :int(sub.counts[k])].copy()
        errors[redo] = r2.errors
        status[redo] = r2.status
        engines[redo] = row_engines(r2)
        if solved_n is not None:
            solved_n[redo] = sub.counts
        messages.update(r2.messages)
        seconds += r2.seconds
    if step:
        # the grown pair and instance table, built once (byte-identical to drawing the grown plan)
        pair = extend_layer_pair(pair, st.grown_plan(), cc.seed, cc.distribution)
        inst = extend_instances(inst, pair, L.weight, L.bias)
        if not np.array_equal(inst.counts[::q], st.count):
            raise AssertionError("adaptive growth: live counts disagree with the grown construction")
        plan = pair.plan
    sel = np.zeros((len(inst), inst.width), dtype=bool)
    sel[:, :res.selections.shape[1]] = res.selections      # unit lists only grow at their end
    for i, s in new_sel.items():
        sel[i] = False
        sel[i, :s.size] = s
    res = BatchResult(inst.ids, sel, errors, status, res.solver, seconds, messages, engines.astype(str))
    # what is left outside τ says what it is and why its block stopped
    left = np.flatnonzero((res.status == Status.INFEASIBLE) | (res.status == Status.TIMEOUT))
    if left.size:
        blocks = block_of_row[left]
        for r, i, j in zip(left, inst.ids[left], blocks):
            if int(j) in stopped:
                res.messages[int(i)] = _stop_message(inst, int(r), stopped[int(j)])
        log.warning("layer %d: %d instances outside τ after growth (%s)", plan.index, left.size,
                    "; ".join(sorted({stopped[int(j)] for j in blocks if int(j) in stopped})) or "no growth")
    return inst, pair, res
