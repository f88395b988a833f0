"""Adaptive width (``--width auto|adaptive``): blocks with an instance outside τ grow by fresh
seeded units and only those instances are solved again."""
from __future__ import annotations

import logging

import numpy as np

from subsetsum_lth.construction import ConstructionConfig, LayerInstances, draw_layer_pair, layer_instances
from subsetsum_lth.limits import _solver_reach, growth_allowed
from subsetsum_lth.progress import close
from subsetsum_lth.solve import SolveConfig, solve_all
from subsetsum_lth.solvers.instances import BatchResult, Status
from subsetsum_lth.target import Target

log = logging.getLogger(__name__)


def grow_layer(target: Target, pair, inst: LayerInstances, res, tau, cc: ConstructionConfig,
                sc: SolveConfig, store, executor, progress):
    """Adaptive width: append fresh seeded units to every block that has an infeasible instance
    and re-solve only those instances, until all are within τ or ``max_growth`` steps are taken.
    Feasible instances of a grown block keep their subset (their units still exist); their status
    becomes FEASIBLE since optimality over the grown block is not proved."""
    plan = pair.plan
    L = target.layers[plan.index]
    for step in range(cc.max_growth):
        infeasible = np.flatnonzero(res.status == Status.INFEASIBLE)
        if infeasible.size == 0:
            break
        groups = np.unique(inst.group_of_instance()[infeasible])
        blocks = np.unique(np.where(inst.group_block[groups] >= 0, inst.group_block[groups], plan.p))
        grow_mask = np.zeros(plan.n_blocks, dtype=bool)
        grow_mask[blocks[blocks < plan.n_blocks]] = True
        grow_mask &= plan.extensions < cc.max_growth    # max_growth steps per block over the whole run
        # never grow a block beyond exact search's reach (its instances could only time out)
        grow_mask &= growth_allowed(plan.block_widths, plan.grow, _solver_reach(sc.solver))
        if not grow_mask.any():
            break
        plan.extensions = plan.extensions + grow_mask.astype(np.int64)
        log.info("layer %d growth step %d: %d blocks grow by %d units, %d instances to re-solve",
                 plan.index, step + 1, int(grow_mask.sum()), plan.grow, infeasible.size)
        pair = draw_layer_pair(plan, cc.seed, cc.distribution)
        new_inst = layer_instances(pair, L.weight, L.bias, inst.offset)
        n_new = new_inst.width
        sel = np.zeros((len(new_inst), n_new), dtype=bool)
        sel[:, :res.selections.shape[1]] = res.selections   # unit lists only grow at their end
        status = res.status.copy()
        grown_rows = np.isin(new_inst.group_of_instance(),
                             [g for g in range(len(new_inst.group_units))
                              if grow_mask[new_inst.group_block[g] if new_inst.group_block[g] >= 0 else plan.p]])
        status[grown_rows & (status == Status.OPTIMAL)] = Status.FEASIBLE
        sub = new_inst.batch_of(infeasible, tau, sc.objective)
        bar = progress(len(sub), f"layer {plan.index + 1}: growth {step + 1}") if progress else None
        r2 = solve_all(sub, sc, on_progress=bar, store=store, executor=executor)
        close(bar)
        sel[infeasible] = False
        sel[infeasible, :r2.selections.shape[1]] = r2.selections
        errors = res.errors.copy()
        errors[infeasible] = r2.errors
        status[infeasible] = r2.status
        messages = {**res.messages, **r2.messages}
        res = BatchResult(new_inst.ids, sel, errors, status, res.solver, res.seconds + r2.seconds, messages)
        inst = new_inst
    return inst, pair, res
