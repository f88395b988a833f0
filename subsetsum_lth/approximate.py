"""The pipeline: target → construction → instances → solve → masks → certificate → run folder.

Each stage lives in its own module; :func:`approximate` only calls them in order:
:mod:`subsetsum_lth.construction` (g and its instances), :mod:`subsetsum_lth.layer_solve`
(solving, growth, τ-tightening for ``--eps``), :mod:`subsetsum_lth.certify` (the certificate
and the empirical bound, from the state dicts alone), :mod:`subsetsum_lth.evaluation`,
:mod:`subsetsum_lth.run_report` and :mod:`subsetsum_lth.runwriter` (the folder)."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from subsetsum_lth import manifest
from subsetsum_lth.certify import CollapsedNet, certified_bound, check_soundness, empirical_bound_fast, pruned_module
from subsetsum_lth.certify_box import BOX_WITNESS, box_report
from subsetsum_lth.construction import ConstructionConfig, build_construction
from subsetsum_lth.gstore import (STORES, DenseMasks, DenseState, SupportNet, choose_store, generator_spec,
                                  support_layer_maps)
from subsetsum_lth.errors import UserError
from subsetsum_lth.evaluation import evaluate_pair, spot_check  # noqa: F401  (public here too)
from subsetsum_lth.layer_solve import build_instances, solve_layers
from subsetsum_lth.progress import Progress
from subsetsum_lth.run_report import build_report, raise_if_failed
from subsetsum_lth.runcheck import WITNESS
from subsetsum_lth.runwriter import GWrite, completed_run, prepare_folder, write_run
from subsetsum_lth.solve import SolveConfig, check_solver
from subsetsum_lth.target import Target
from subsetsum_lth.tolerance import apriori_bound, choose_tolerance  # noqa: F401  (public here too)

log = logging.getLogger(__name__)


@dataclass
class ApproximateConfig:
    """Everything `approximate` needs besides the target.

    Exactly one of ``eps`` (network-level bound to certify) and ``weight_eps`` (per-weight
    tolerance τ, the paper's Experiment 1 mode) is set; if neither is, τ = 0.01.
    """

    construction: ConstructionConfig = field(default_factory=ConstructionConfig)
    solve: SolveConfig = field(default_factory=SolveConfig)
    eps: float | None = None
    weight_eps: float | None = None
    input_radius: float = 1.0
    allow_infeasible: bool = False
    resume: bool = False
    overwrite: bool = False
    empirical_samples: int = 512
    ascent_steps: int = 100
    max_rounds: int = 8
    plots: bool = True
    max_hours: float = 24.0       #: refuse a run whose estimated solve time is longer (subsetsum_lth.limits)
    #: how the run folder stores g: 'dense' (random_net/masks.safetensors), 'compact' (the block
    #: support + generator spec; ``export-dense`` writes the dense files), 'auto' (dense up to
    #: gstore.DENSE_MAX_ENTRIES entries)
    store: str = "auto"
    #: facts about what the caller did before (e.g. ``target_training_seconds``), added to report.json
    report_extra: dict = field(default_factory=dict)
    #: the box domain (subsetsum_lth.certify_box.BoxConfig): a box certificate too, and --eps checked on it
    box: object | None = None

    def __post_init__(self) -> None:
        if self.eps is not None and self.weight_eps is not None:
            raise UserError("give either --eps (network bound) or --weight-eps (per-weight tolerance), not both")
        for name in ("eps", "weight_eps"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag} must be a positive number, got {v}")
        if self.eps is None and self.weight_eps is None:
            self.weight_eps = 0.01
        # the width formula's ε is the run's ε (network mode) or τ: one value, set here, on a copy
        # (the caller's ConstructionConfig is not changed)
        from dataclasses import replace
        want = self.eps if self.eps is not None else self.weight_eps
        if self.construction.eps != want:
            self.construction = replace(self.construction, eps=want)
        from subsetsum_lth.runcheck import MAX_INPUT_RADIUS
        if not (math.isfinite(self.input_radius) and 0 < self.input_radius <= MAX_INPUT_RADIUS):
            # beyond it certify, compare and the API refuse the run folder this would write
            raise UserError(f"--input-radius must be a positive number <= {MAX_INPUT_RADIUS:g}, got "
                            f"{self.input_radius:g}; rescale the inputs or choose a smaller radius")
        if self.store not in STORES:
            raise UserError(f"--store must be one of {STORES}, got {self.store!r}")
        if not (self.max_hours > 0):
            raise UserError(f"--max-hours must be a positive number, got {self.max_hours}")
        if self.empirical_samples < 1:
            raise UserError(f"--samples must be a positive integer, got {self.empirical_samples}")
        if self.ascent_steps < 0:
            raise UserError(f"--steps must be a non-negative integer, got {self.ascent_steps}")

    @property
    def mode(self) -> str:
        return "network" if self.eps is not None else "weight"


def approximate(target: Target, config: ApproximateConfig, out: str | Path,
                progress: Progress | None = None,
                eval_data: dict | None = None,
                empirical_data: np.ndarray | None = None,
                executor=None) -> dict:
    """Run the whole construction and write the run folder. Returns the report.

    The folder is locked and recorded in its manifest while this runs; the tool's temporaries
    are removed on every exit (see :mod:`subsetsum_lth.manifest`). Args, raises: see
    :func:`_approximate`."""
    with manifest.session(out):
        return _approximate(target, config, out, progress, eval_data, empirical_data, executor)


def _approximate(target: Target, config: ApproximateConfig, out: str | Path,
                 progress: Progress | None = None,
                 eval_data: dict | None = None,
                 empirical_data: np.ndarray | None = None,
                 executor=None) -> dict:
    """Run the whole construction and write the run folder. Returns the report.

    Args:
        eval_data: optional {"x": float32 (N, p), "y": int64 (N,)} to measure accuracies.
        empirical_data: optional points fed to the empirical lower bound.
    Raises:
        IncompleteRun after writing everything, if instances are infeasible or failed and
        ``allow_infeasible`` is off, or if the network-level ε cannot be certified.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out)
    if config.mode == "network" and config.construction.width == "adaptive" \
            and config.construction.tau is None:
        # adaptive blocks start from the per-weight τ the run starts with (ε is far looser)
        from dataclasses import replace
        from subsetsum_lth.layer_solve import initial_tau
        config = replace(config, construction=replace(config.construction,
                                                      tau=initial_tau(target, config)))
    cc = config.construction
    store, done = _prepare(target, config, out, executor)
    if done is not None:
        return done

    t = time.perf_counter()
    construction = build_construction(target, cc)
    layers = build_instances(target, construction)
    timings["build"] = time.perf_counter() - t
    log.info("built g: %s parameters, %d instances", f"{construction.total_parameters:,}",
             sum(len(i) for i in layers))

    t = time.perf_counter()
    solved = solve_layers(target, construction, layers, config, store, executor, progress)
    timings["solve"] = time.perf_counter() - t

    # --- masks and certificate, recomputed from the stored tensors (the support) alone; the
    # dense g of a pair is never held in float64 (gstore: support layer maps, SupportNet)
    t = time.perf_counter()
    layer_masks = solved.compact_masks()
    layout = construction.layout
    image = not target.is_mlp
    store_kind = choose_store(config.store, construction.plans, image)
    maps = support_layer_maps(construction.pairs, layer_masks)
    certificate = certified_bound(target, maps, config.input_radius, cc.input_domain)
    if image:   # conv pairs: the dense module (image g's are small; the compact store is MLP-only)
        state = DenseState(construction.pairs, layout)
        dmasks = DenseMasks(construction.plans, layer_masks, layout)
        g64 = pruned_module(state, dmasks, layout, torch.float64)
    else:
        g64 = SupportNet(construction.pairs, layer_masks, torch.float64)
    emp = empirical_bound_fast(target, maps, g64, config.input_radius, cc.input_domain,
                               data=empirical_data, samples=config.empirical_samples,
                               steps=config.ascent_steps, seed=cc.seed)
    timings["certify"] = time.perf_counter() - t
    check_soundness(emp["empirical_bound"], certificate.bound)
    witness = emp.pop("witness")
    box_rep, eps_bound, extra_files = None, certificate.bound, {}
    if config.box is not None:   # the box certificate, its attack (checked), certified agreement
        box_rep, box_x = box_report(target, maps, g64, config.box, data=empirical_data, seed=cc.seed,
                                    eval_x=None if eval_data is None else eval_data["x"])
        eps_bound = box_rep["bound"]
        timings["certify_box"] = box_rep["seconds"] + box_rep["attack"]["seconds"]
        extra_files[BOX_WITNESS] = {"x": box_x}
    del g64

    evaluation = {}
    if eval_data is not None:
        t = time.perf_counter()
        collapsed = CollapsedNet(maps, target=target)
        evaluation = evaluate_pair(target, collapsed, eval_data["x"], eval_data["y"])
        g32 = (pruned_module(state, dmasks, layout, torch.float32) if image
               else SupportNet(construction.pairs, layer_masks, torch.float32))
        evaluation.update(spot_check(collapsed, g32, eval_data["x"][:256]))
        del g32
        timings["evaluate"] = time.perf_counter() - t

    report, metrics, bad_list, n_bad = build_report(target, config, construction, solved, layer_masks, layout,
                                                    certificate, emp, witness, evaluation, timings, executor,
                                                    eps_bound=eps_bound, box_rep=box_rep, store=store_kind)
    meta = {"format": "run", "seed": cc.seed, "depth": target.depth}
    if not target.is_mlp:
        meta.update({"g_arch": layout.ops(), "input_shape": list(target.input_shape)})
    plots = None
    if config.plots:
        from subsetsum_lth import plots as plot_mod
        plots = lambda: plot_mod.run_plots(out, solved.layers, solved.results, report)  # noqa: E731
    write_run(out, masks=None, meta=meta, report=report, metrics=metrics, t_start=t_start, timings=timings,
              g=GWrite(store_kind, construction.pairs, construction.plans, layer_masks, layout,
                       generator_spec(cc.seed, cc.distribution, construction.plans)),
              target=target,
              extra={WITNESS: {"x": np.asarray(witness["x"], dtype=np.float64)}, **extra_files}, plots=plots,
              store_name=store.folder.name,
              extra_report={"wall_seconds_covers": "this approximation: construction, solve, certificate, "
                                                   "evaluation, writing (not the training of a target)",
                            **config.report_extra})
    raise_if_failed(report, bad_list, n_bad, config, out, eps_bound)
    return report


def _prepare(target: Target, config: ApproximateConfig, out: Path, executor):
    """Check the solver, the width against exact search's reach and the time budget, then
    prepare ``out`` (manifest, lock, resume store). Returns (store, report of an already
    finished run for ``--resume`` or None)."""
    cc, sc = config.construction, config.solve
    check_solver(sc)
    fingerprint = {
        "target_sizes": target.sizes, "target_bias": target.has_bias,
        "target_digest": _digest(target),
        # tau only when set, so runs recorded before the field existed resume unchanged
        "construction": {k: v for k, v in asdict(cc).items() if not (k == "tau" and v is None)},
        "solver": sc.solver, "objective": sc.objective, "eps": config.eps,
        "weight_eps": config.weight_eps, "input_radius": config.input_radius, "store": config.store,
        **({} if config.box is None else {"input_box": [config.box.lo, config.box.hi]}),
    }
    # refuse absurd widths (with the estimate) and a full disk before any file is written
    from subsetsum_lth import limits
    from subsetsum_lth.construction import plan_layers
    plans = plan_layers(target, cc)
    entries = sum(pl.hidden * (pl.p + pl.q + 1) + pl.q for pl in plans)
    cost = limits.estimate(plans, sc.solver, _estimate_workers(sc, executor), sc.time_limit)
    log.info("estimated solve time %s, memory %.2g GB", cost.describe_time(), cost.memory_bytes / 1e9)
    limits.check_reach(cost, config.max_hours, "--eps" if config.mode == "network" else "--weight-eps")
    limits.check_growth(plans, cc.grow, cc.max_growth, cc.width,
                        limits.growth_reach(sc.solver, sc.objective))
    store = prepare_folder(out, config, fingerprint, need_bytes=int(entries * 5 * 1.1))
    done = completed_run(out) if config.resume else None
    if done is not None:
        log.info("--resume: the run in %s is already complete (same settings); nothing to solve", out)
        manifest.writer_for(out).remove_store(store.folder.name)
        return store, done
    return store, None


def _estimate_workers(sc: SolveConfig, executor) -> int:
    """Cores the solve will use, for the cost estimate (never more than this machine's)."""
    from subsetsum_lth.limits import solve_workers
    return solve_workers(sc, executor)


def _digest(target: Target) -> str:
    import hashlib
    h = hashlib.sha256()
    for L in target.layers:
        h.update(np.ascontiguousarray(L.weight).tobytes())
        if L.bias is not None:
            h.update(np.ascontiguousarray(L.bias).tobytes())
    return h.hexdigest()[:16]
