"""Solving every layer's instances at a tolerance τ, growing blocks where needed, and — for a
network-level ε (``--eps``) — tightening τ round by round until the certificate meets ε."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from subsetsum_lth import limits
from subsetsum_lth.certify import certified_bound
from subsetsum_lth.certify_box import box_bound
from subsetsum_lth.construction import Construction
from subsetsum_lth.layer_instances import LayerInstances, compact_masks_from_selections, dense_masks, layer_instances
from subsetsum_lth.growth import grow_layer
from subsetsum_lth.gstore import support_layer_maps
from subsetsum_lth.limits import EXACT_MAX_N
from subsetsum_lth.progress import close, note, phase
from subsetsum_lth.solve import solve_all
from subsetsum_lth.solvers.instances import BatchResult, Status, row_engines
from subsetsum_lth.target import Target
from subsetsum_lth.tolerance import choose_tolerance

log = logging.getLogger(__name__)


@dataclass
class Solved:
    """Every layer's instances and results at the final τ."""

    layers: list[LayerInstances]
    results: list
    tau: float
    seconds: list[float]                          #: solve wall seconds per layer
    rounds: list[dict] = field(default_factory=list)   #: network mode: τ and certificate per round
    #: per layer, each instance's live count when its subset was last searched (an instance of a
    #: grown block keeps the subset found at its old count); > limits.EXACT_MAX_N: fix-and-search
    solved_counts: list = field(default_factory=list)

    def engine_counts(self) -> dict:
        """{"total": {engine: instances}, "per_layer": [{engine: instances}, ...]}: which engine
        produced each instance's answer (report.json 'engines'); names sorted."""
        per_layer = []
        for r in self.results:
            names, counts = np.unique(row_engines(r), return_counts=True)
            per_layer.append({str(n): int(c) for n, c in zip(names, counts)})
        total: dict = {}
        for layer in per_layer:
            for n, c in layer.items():
                total[n] = total.get(n, 0) + c
        return {"total": dict(sorted(total.items())), "per_layer": per_layer}

    def beyond_exact(self) -> list[int]:
        """Per layer, the instances whose subset was searched beyond exact search's reach."""
        return [int((c > EXACT_MAX_N).sum()) for c in self.solved_counts]

    def compact_masks(self) -> list[dict]:
        """Per layer pair, the masks in the support's form ({u, b1, w2, b2}, see
        :func:`subsetsum_lth.layer_instances.compact_masks_from_selections`)."""
        return [compact_masks_from_selections(i, r.selections) for i, r in zip(self.layers, self.results)]

    def layer_masks(self) -> list[dict]:
        """Per layer pair, dense {w1 (H, p), b1, w2, b2} masks (for small networks and tests)."""
        return [dense_masks(i.plan, m) for i, m in zip(self.layers, self.compact_masks())]


def build_instances(target: Target, construction: Construction) -> list[LayerInstances]:
    layers, offset = [], 0
    for L, pair in zip(target.layers, construction.pairs):
        inst = layer_instances(pair, L.weight, L.bias, offset)
        layers.append(inst)
        offset += len(inst)
    return layers


#: a layer whose coefficient matrix (float64) is larger than this is solved in slices of
#: instances, so that only one slice's coefficients are held at a time (issue 15)
SLICE_BYTES = 128 << 20


def solve_layer(inst: LayerInstances, tau: float, sc, bar=None, store=None, executor=None):
    """All instances of one layer at τ: one ``solve_all`` call, or — when the coefficient
    matrix would exceed :data:`SLICE_BYTES` — one per slice of whole groups, the results put
    together in instance order (each instance's result does not depend on the others)."""
    k, width = len(inst), inst.width
    if k * max(width, 1) * 8 <= SLICE_BYTES:
        return solve_all(inst.batch(tau, sc.objective), sc, on_progress=bar, store=store, executor=executor)
    step = max(inst.q, SLICE_BYTES // (8 * width) // inst.q * inst.q)
    selections = np.zeros((k, width), dtype=bool)
    errors = np.empty(k)
    status = np.empty(k, dtype=np.int8)
    engines = np.empty(k, dtype=object)
    messages: dict = {}
    seconds = 0.0
    solver = sc.solver
    for start in range(0, k, step):
        rows = np.arange(start, min(k, start + step))
        res = solve_all(inst.batch_of(rows, tau, sc.objective), sc, on_progress=bar, store=store, executor=executor)
        selections[rows, :res.selections.shape[1]] = res.selections
        errors[rows] = res.errors
        status[rows] = res.status
        engines[rows] = row_engines(res)
        messages.update(res.messages)
        seconds += res.seconds
        solver = res.solver
        del res
    return BatchResult(inst.ids, selections, errors, status, solver, seconds, messages, engines.astype(str))


def initial_tau(target: Target, config) -> float:
    if config.mode == "weight":
        return float(config.weight_eps)
    # start from 4x the random-matrix estimate (achieved errors sit well below τ), then
    # tighten only if the certificate asks for it; the box lies in the ball through its farthest
    # corner, whose a-priori τ is the box's start (before: τ = ε, six rounds to ε = 1 on MNIST)
    radius, domain = target.network_ball(config.input_radius, config.construction.input_domain)
    box = getattr(config, "box", None)
    if box is not None:
        lo, hi = target.network_box(box.lo, box.hi)
        radius = float(np.linalg.norm(np.maximum(np.abs(np.broadcast_to(lo, (target.sizes[0],))),
                                                 np.abs(np.broadcast_to(hi, (target.sizes[0],))))))
    return min(config.eps, 4 * choose_tolerance(target, config.eps, radius, domain))


def _tighten(inst: LayerInstances, r0, tau, sc, store, executor, progress, li: int, solved_n=None) -> bool:
    """A tighter τ: instances above it need work. With the error objective their exact optimum
    is already above τ (infeasible at this width); otherwise re-solve them — a subset optimal for
    the looser τ and within the tighter one stays optimal. False when nothing is above τ."""
    above = r0.errors > tau
    if not above.any():
        return False
    if sc.objective == "error":
        r0.status[above] = Status.INFEASIBLE
        return True
    redo = np.flatnonzero(above & (r0.status != Status.INFEASIBLE))
    r0.status[above & (r0.status == Status.INFEASIBLE)] = Status.INFEASIBLE
    if redo.size:
        sub = inst.batch_of(redo, tau, sc.objective)
        bar = progress(len(sub), f"layer {li + 1}: τ={tau:.2g}") if progress else None
        res = solve_all(sub, sc, on_progress=bar, store=store, executor=executor)
        close(bar)
        w = res.selections.shape[1]
        r0.selections[redo] = False
        r0.selections[redo, :w] = res.selections
        r0.errors[redo] = res.errors
        r0.status[redo] = res.status
        r0.engines = row_engines(r0).astype(object)     # a re-solve overwrites the engine of its rows
        r0.engines[redo] = row_engines(res)
        r0.engines = r0.engines.astype(str)
        r0.messages.update(res.messages)
        if solved_n is not None:
            solved_n[redo] = inst.counts[redo]
    return True


def layer_line(li: int, n_layers: int, inst: LayerInstances, res, seconds: float, tau: float,
               rnd: int | None = None) -> str:
    """One line saying how layer ``li`` came out, printed as soon as it is solved (and grown)."""
    plan = inst.plan
    is_bias = inst.group_half[inst.group_of_instance()] == 0
    werr = res.errors[~is_bias]
    per_weight = res.selections[~is_bias].sum(axis=1)
    outside = int((res.status == Status.INFEASIBLE).sum())
    grown = int((plan.extensions > 0).sum())
    width = f"m={plan.m}" + (f" ({grown} blocks grown to ≤{int(plan.block_widths.max())})" if grown else "")
    when = f" (round {rnd + 1}, τ={tau:.3g})" if rnd is not None else ""
    return (f"layer {li + 1}/{n_layers} solved{when}: {width}, {len(inst):,} instances, "
            f"max |w-ŵ| {float(werr.max(initial=0.0)):.3g}, "
            f"{float(per_weight.mean()) if per_weight.size else 0.0:.2f} coeff/weight, "
            f"{outside} outside τ, {seconds:.1f} s")


def solve_layers(target: Target, construction: Construction, layers: list[LayerInstances], config,
                 store, executor=None, progress=None) -> Solved:
    """Solve (and grow) every layer at τ; in network mode, certify and tighten τ up to
    ``config.max_rounds`` times. ``construction.pairs`` and ``layers`` are updated in place
    when blocks grow."""
    cc, sc = config.construction, config.solve
    tau = initial_tau(target, config)
    results = [None] * len(layers)
    solved = Solved(layers, results, tau, [0.0] * len(layers))
    solved.solved_counts = [None] * len(layers)
    budget = None
    if cc.width != "formula":      # one growth budget for every layer and round of the run
        budget = limits.growth_budget(construction.plans, getattr(config, "max_hours", limits.DEFAULT_MAX_HOURS))
    for rnd in range(config.max_rounds if config.mode == "network" else 1):
        for li, inst in enumerate(layers):
            t_layer = time.perf_counter()
            if results[li] is None:
                bar = progress(len(inst), f"layer {li + 1}/{len(layers)} ({sc.solver})") if progress else None
                results[li] = solve_layer(inst, tau, sc, bar, store, executor)
                close(bar)
                solved.solved_counts[li] = np.array(inst.counts, dtype=np.int64, copy=True)
            elif not _tighten(inst, results[li], tau, sc, store, executor, progress, li,
                              solved.solved_counts[li]):
                continue
            if cc.width != "formula":
                layers[li], construction.pairs[li], results[li] = grow_layer(
                    target, construction.pairs[li], layers[li], results[li], tau, cc, sc, store,
                    executor, progress, budget, solved.solved_counts[li])
                construction.plans[li] = construction.pairs[li].plan
            layers[li].release()    # the coefficient matrix is recomputed if a later round needs it
            solved.seconds[li] += time.perf_counter() - t_layer
            note(progress, layer_line(li, len(layers), layers[li], results[li], solved.seconds[li], tau,
                                      rnd if config.mode == "network" else None))
        solved.tau = tau
        if config.mode == "weight":
            break
        with phase(progress, f"round {rnd + 1}", f"certifying the bound at τ={tau:.3g} against ε={config.eps:g}"):
            maps = support_layer_maps(construction.pairs, solved.compact_masks())
            bound = certified_bound(target, maps, config.input_radius, cc.input_domain).bound
            if getattr(config, "box", None) is not None:     # --eps is checked on the box certificate
                bound = box_bound(target, maps, config.box)
        n_out = sum(int((r.status == Status.INFEASIBLE).sum()) for r in results)
        solved.rounds.append({"round": rnd, "weight_eps": tau, "certified_bound": bound,
                              "outside_tolerance": n_out})
        note(progress, f"round {rnd + 1}: τ={tau:.3g}, certified bound {bound:.4g} (ε={config.eps:g}), "
                       f"{n_out} instances outside τ")
        if bound <= config.eps:
            break
        if len(solved.rounds) > 1 and bound > 0.95 * solved.rounds[-2]["certified_bound"]:
            break  # no progress: the bound is held up by instances no τ can fix at this width
        tau = tau * min(0.5, 0.9 * config.eps / bound)
    return solved
