"""Adaptive width (``--width auto|adaptive``): blocks with an instance outside τ grow by fresh
seeded units and only those instances are solved again.

Growth is driven by the evidence of the solves and by live units, not by a step cap: a block
grows while one of its instances is outside τ, as long as (a) the live count of every such
instance's group after the step stays within exact search's reach (:func:`limits.growth_within_reach`;
a 60-unit block may hold 14 live units in a sign half, so the block width says little), (b) the
run's :class:`limits.GrowthBudget` (the ``--max-hours`` budget of estimated solve time, the
construction's allocation cap) pays for the step, and (c) an explicit ``--max-growth`` allows it.
Every decision depends only on the instances' statuses and the seeded draws, never on batching
or the number of workers, so a seed gives the same masks everywhere. A block that has to stop
says why in its instances' messages (report.json ``infeasible_examples``, exit 3)."""
from __future__ import annotations

import logging

import numpy as np

from subsetsum_lth.construction import (ConstructionConfig, LayerInstances, chunk_inputs, extend_instances,
                                        extend_layer_pair)
from subsetsum_lth.limits import GrowthBudget, _solver_reach, growth_within_reach, instance_seconds
from subsetsum_lth.progress import close
from subsetsum_lth.solve import SolveConfig, solve_all
from subsetsum_lth.solvers.instances import BatchResult, Status
from subsetsum_lth.target import Target

log = logging.getLogger(__name__)

#: reasons a block stops growing (the instance messages of what is left outside τ)
STOP_CAP = "growth stopped at --max-growth {cap} steps"
STOP_REACH = ("growth stopped: one more step gives {n} live coefficients, beyond exact search (at most "
              "n = {reach}); loosen τ or use a MIP solver")
STOP_BUDGET = "growth stopped: {why}"


def _live_after(inst: LayerInstances, plan, cc: ConstructionConfig, groups: np.ndarray) -> dict[int, int]:
    """Live count of each group in ``groups`` after its block's next growth chunk."""
    out, drawn = {}, {}
    for g in groups:
        g = int(g)
        j = int(inst.group_block[g]) if inst.group_block[g] >= 0 else plan.p
        if j not in drawn:
            drawn[j] = chunk_inputs(plan, cc.seed, cc.distribution, j, int(plan.extensions[j]) + 1)
        v, h = drawn[j], int(inst.group_half[g])
        out[g] = len(inst.group_units[g]) + int((v < 0).sum() if h < 0 else (v > 0).sum())
    return out


def grow_layer(target: Target, pair, inst: LayerInstances, res, tau, cc: ConstructionConfig,
               sc: SolveConfig, store, executor, progress, budget: GrowthBudget | None = None):
    """Adaptive width: append fresh seeded units to every block that has an instance outside τ
    and re-solve only those instances, until all are within τ or no such block may grow (see the
    module docstring). Feasible instances of a grown block keep their subset (their units still
    exist); their status becomes FEASIBLE since optimality over the grown block is not proved.
    ``budget`` is spent in place (shared by all layers and rounds of a run); None: unlimited."""
    plan = pair.plan
    L = target.layers[plan.index]
    reach = _solver_reach(sc.solver)
    limit = sc.time_limit or 10.0
    step = 0
    stopped: dict[int, str] = {}     # block -> why it may not grow
    while True:
        infeasible = np.flatnonzero(res.status == Status.INFEASIBLE)
        if infeasible.size == 0:
            break
        g_of = inst.group_of_instance()
        block_of_group = np.where(inst.group_block >= 0, inst.group_block, plan.p)
        groups = np.unique(g_of[infeasible])
        want = np.unique(block_of_group[groups])
        if cc.max_growth is not None:
            capped = want[plan.extensions[want] >= cc.max_growth]
            for j in capped:
                stopped[int(j)] = STOP_CAP.format(cap=cc.max_growth)
            want = np.setdiff1d(want, capped)
        live_after = _live_after(inst, plan, cc, groups[np.isin(block_of_group[groups], want)])
        over = {}
        for g, n in live_after.items():
            j = int(block_of_group[g])
            if not growth_within_reach(n, reach):
                over[j] = max(over.get(j, 0), n)
        for j, n in over.items():
            stopped[j] = STOP_REACH.format(n=n, reach=reach)
        want = np.setdiff1d(want, np.fromiter(over, dtype=np.int64, count=len(over)))
        if want.size and budget is not None:
            redo = infeasible[np.isin(block_of_group[g_of[infeasible]], want)]
            seconds = sum(instance_seconds(live_after[int(g)], reach, limit) for g in g_of[redo])
            why = budget.charge(seconds, int(want.size) * plan.grow * (plan.p + plan.q))
            if why is not None:
                for j in want:
                    stopped[int(j)] = STOP_BUDGET.format(why=why)
                want = want[:0]
        if want.size == 0:
            break
        step += 1
        grow_mask = np.zeros(plan.n_blocks, dtype=bool)
        grow_mask[want] = True
        new_plan = _grown_plan(plan, grow_mask)
        log.info("layer %d growth step %d: %d blocks grow by %d units, %d instances to re-solve",
                 plan.index, step, int(want.size), plan.grow, infeasible.size)
        pair = extend_layer_pair(pair, new_plan, cc.seed, cc.distribution)
        new_inst = extend_instances(inst, pair, L.weight, L.bias)
        plan = new_plan
        n_new = new_inst.coefficients.shape[1]
        sel = np.zeros((len(new_inst), n_new), dtype=bool)
        sel[:, :res.selections.shape[1]] = res.selections   # unit lists only grow at their end
        status = res.status.copy()
        grown_rows = grow_mask[block_of_group][g_of]
        status[grown_rows & (status == Status.OPTIMAL)] = Status.FEASIBLE
        # re-solve the instances of grown blocks; those of blocks that stopped stay as they are
        redo = infeasible[grown_rows[infeasible]]
        sub = new_inst.batch(tau, sc.objective).take(redo)
        bar = progress(len(sub), f"layer {plan.index + 1}: growth {step}") if progress else None
        r2 = solve_all(sub, sc, on_progress=bar, store=store, executor=executor)
        close(bar)
        sel[redo] = False
        sel[redo, :r2.selections.shape[1]] = r2.selections
        errors = res.errors.copy()
        errors[redo] = r2.errors
        status[redo] = r2.status
        messages = {**res.messages, **r2.messages}
        res = BatchResult(new_inst.ids, sel, errors, status, res.solver, res.seconds + r2.seconds, messages)
        inst = new_inst
    # what is left outside τ says why its block stopped
    left = np.flatnonzero(res.status == Status.INFEASIBLE)
    if left.size:
        block_of_group = np.where(inst.group_block >= 0, inst.group_block, plan.p)
        blocks = block_of_group[inst.group_of_instance()[left]]
        for i, j in zip(inst.ids[left], blocks):
            if int(j) in stopped:
                res.messages[int(i)] = stopped[int(j)]
        log.warning("layer %d: %d instances outside τ after growth (%s)", plan.index, left.size,
                    "; ".join(sorted({stopped[int(j)] for j in blocks if int(j) in stopped})) or "no growth")
    return inst, pair, res


def _grown_plan(plan, grow_mask: np.ndarray):
    from dataclasses import replace
    return replace(plan, extensions=plan.extensions + grow_mask.astype(np.int64))
