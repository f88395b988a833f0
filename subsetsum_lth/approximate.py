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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from subsetsum_lth import limits, manifest
from subsetsum_lth import plots as plot_mod
from subsetsum_lth.limits import solve_workers
from subsetsum_lth.overwrite import staged_overwrite
from subsetsum_lth.certify import (CollapsedNet, ball_set, certified_bound, check_soundness, empirical_bound_fast,
                                   in_ball, pruned_module)
from subsetsum_lth.certify_box import BOX_WITNESS, box_report
from subsetsum_lth.construction import MAX_RANDOM_ENTRIES, ConstructionConfig, build_construction, plan_layers
from subsetsum_lth.gstore import (STORES, DenseMasks, DenseState, SupportNet, choose_store, generator_spec,
                                  support_layer_maps, support_pruned_module)
from subsetsum_lth.errors import DiskFull, UserError
from subsetsum_lth.evaluation import evaluate_pair, spot_check  # noqa: F401  (public here too)
from subsetsum_lth.layer_solve import build_instances, initial_tau, solve_layers
from subsetsum_lth.preprocess import with_input_op
from subsetsum_lth.options import flag, option
from subsetsum_lth.progress import Progress, note, phase
from subsetsum_lth.run_report import build_report, raise_if_failed
from subsetsum_lth.runcheck import MAX_INPUT_RADIUS, WITNESS
from subsetsum_lth.runwriter import SOLVER_NAMES, GWrite, completed_run, continue_stage, prepare_folder, write_run
from subsetsum_lth.solve import SolveConfig, check_solver
from subsetsum_lth.target import Target, target_digest
from subsetsum_lth.tolerance import apriori_bound, choose_tolerance  # noqa: F401  (public here too)

log = logging.getLogger(__name__)


class AlreadyComplete(dict):
    """The report :func:`approximate` returns when ``--resume`` found the run already complete
    (same settings, the files check out): nothing was solved or written."""

    already_complete = True


@dataclass
class ApproximateConfig:
    """Everything `approximate` needs besides the target.

    Exactly one of ``eps`` (network-level bound to certify) and ``weight_eps`` (per-weight
    tolerance τ, the paper's Experiment 1 mode) is set; if neither is, τ = 0.01.
    """

    construction: ConstructionConfig = field(default_factory=ConstructionConfig)
    solve: SolveConfig = field(default_factory=SolveConfig)
    eps: float | None = option(None, flag="--eps", help="network-level ε: pick the per-weight tolerance so that "
                                                         "the certified bound is <= ε")
    weight_eps: float | None = option(None, flag="--weight-eps",
                                      help="per-weight tolerance τ (Pensia et al. Experiment 1 mode); default "
                                           f"{ConstructionConfig.eps:g} if --eps is not given, divided by 1 + the "
                                           "number of skip connections of a residual target")
    input_radius: float = 1.0
    allow_infeasible: bool = option(False, flag="--allow-infeasible",
                                    help="exit 0 even if some instances are not within τ (closest subsets are kept)")
    resume: bool = option(False, flag="--resume", help="continue an interrupted run in --out")
    overwrite: bool = option(False, flag="--overwrite", help="replace an existing run in --out")
    empirical_samples: int = option(512, flag="--samples", help="random points for the empirical bound")
    ascent_steps: int = option(100, flag="--steps",
                               help="gradient-ascent steps for the empirical bound (0: evaluate the points only)")
    max_rounds: int = 8
    plots: bool = option(True, flag="--no-plots", help="do not write PNG plots")
    #: refuse a run whose estimated solve time is longer (subsetsum_lth.limits)
    max_hours: float = option(24.0, flag="--max-hours",
                              help="refuse (before any work) a run whose estimated solve time, ~2^(n/2) per instance "
                                   "of n live coefficients, is longer than this; block growth (--width auto, "
                                   "adaptive) stops before its re-solves pass this many hours of estimated "
                                   "single-core time")
    #: how the run folder stores g: 'dense' (random_net/masks.safetensors), 'compact' (the block
    #: support + generator spec; ``export-dense`` writes the dense files), 'auto' (dense up to
    #: gstore.DENSE_MAX_ENTRIES entries)
    store: str = option("auto", flag="--store", choices=("auto", "dense", "compact"),
                        help="how the run folder stores g: dense (random_net.safetensors, masks.safetensors), "
                             "compact (the block support, its masks and the generator spec; 'export-dense RUN' "
                             "writes the dense files), auto (dense up to 2e8 entries of g; default)")
    #: facts about what the caller did before (e.g. ``target_training_seconds``), added to report.json
    report_extra: dict = field(default_factory=dict)
    #: the box domain (subsetsum_lth.certify_box.BoxConfig): a box certificate too, and --eps checked on it
    box: object | None = None
    #: neither --eps nor --weight-eps was given: τ is the default, which :meth:`for_target` sets
    default_tolerance: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.eps is not None and self.weight_eps is not None:
            raise UserError(f"give either {flag(self, 'eps')} (network bound) or {flag(self, 'weight_eps')} "
                            "(per-weight tolerance), not both")
        for name in ("eps", "weight_eps"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise UserError(f"{flag(self, name)} must be a positive number, got {v}")
        if self.eps is None and self.weight_eps is None:
            self.weight_eps, self.default_tolerance = ConstructionConfig.eps, True
        # the width formula's ε is the run's ε (network mode) or τ: one value, set here, on a copy
        # (the caller's ConstructionConfig is not changed)
        want = self.eps if self.eps is not None else self.weight_eps
        if self.construction.eps != want:
            self.construction = replace(self.construction, eps=want)
        if not (math.isfinite(self.input_radius) and 0 < self.input_radius <= MAX_INPUT_RADIUS):
            # beyond it certify, compare and the API refuse the run folder this would write
            raise UserError(f"--input-radius must be a positive number <= {MAX_INPUT_RADIUS:g}, got "
                            f"{self.input_radius:g}; rescale the inputs or choose a smaller radius")
        if self.store not in STORES:
            raise UserError(f"{flag(self, 'store')} must be one of {STORES}, got {self.store!r}")
        limits.check_float(flag(self, "max_hours"), self.max_hours, 0.0, limits.MAX_HOURS, why="a year of solving")
        limits.check_int(flag(self, "empirical_samples"), self.empirical_samples, 1, limits.MAX_SAMPLES,
                         why="each point is an input vector in float64")
        limits.check_int(flag(self, "ascent_steps"), self.ascent_steps, 0, limits.MAX_STEPS)

    def for_target(self, target: Target) -> "ApproximateConfig":
        """This config with the default τ resolved for ``target`` (itself when τ was given)."""
        if not self.default_tolerance:
            return self
        tau = default_weight_eps(target)
        if tau == self.weight_eps:
            return self
        return replace(self, weight_eps=tau, construction=replace(self.construction, eps=tau), default_tolerance=True)

    @property
    def mode(self) -> str:
        return "network" if self.eps is not None else "weight"

    def fingerprint(self, target: Target) -> dict:
        """The run's identity, recorded in run_config.json: ``--resume`` continues a run only when
        the target and these settings are the same (the dict, its key order included, is the one
        every earlier version wrote, so their run folders still resume)."""
        cc, sc = self.construction, self.solve
        return {
            "target_sizes": target.sizes, "target_bias": target.has_bias,
            "target_digest": target_digest(target),
            # the input op, only when there is one (fingerprints of runs without one are unchanged)
            **({} if target.preprocessing is None else {"preprocessing": target.preprocessing.to_metadata()}),
            # tau only when set, support_draw_above only when not the default, so runs recorded
            # before the fields existed resume unchanged
            "construction": {k: v for k, v in asdict(cc).items()
                             if not ((k == "tau" and v is None)
                                     or (k == "support_draw_above" and v == MAX_RANDOM_ENTRIES))},
            "solver": sc.solver, "solver_names": SOLVER_NAMES, "objective": sc.objective, "eps": self.eps,
            "weight_eps": self.weight_eps, "input_radius": self.input_radius, "store": self.store,
            **({} if self.box is None else {"input_box": [self.box.lo, self.box.hi]}),
            **({"data": self.report_extra["data"]} if "data" in self.report_extra else {}),
        }


def skip_adds(graph) -> int:
    """How many skip connections (residual ops' adds) ``graph`` holds, nested ones too."""
    return sum(1 + skip_adds(op.get("body")) + skip_adds(op.get("shortcut"))
               for op in graph or () if isinstance(op, dict) and op.get("op") == "residual")


def default_weight_eps(target: Target) -> float:
    """The per-weight tolerance τ when the caller gives neither ε nor τ: 0.01, split evenly over
    the error paths a residual net adds. An add sums the errors of its two branches (the ball
    certificate's δ_B + δ_S), so each skip connection is one more place where a whole branch's
    error joins the output's; with k adds τ = 0.01 / (1 + k) keeps the errors that meet at the
    output no larger than a chain's at 0.01 (measured: a 2-block Fashion-MNIST ResNet agrees with
    its ticket on 98.62% of the test set at 0.01 and on ≥ 99.5% at 0.01/3, docs/cnn.md). The
    width costs log2(1 + k) more candidates per block. A chain (no add) keeps 0.01."""
    return ConstructionConfig.eps / (1 + skip_adds(target.graph))


def approximate(target: Target, config: ApproximateConfig, out: str | Path,
                progress: Progress | None = None,
                eval_data: dict | None = None,
                empirical_data: np.ndarray | None = None,
                executor=None) -> dict:
    """Run the whole construction and write the run folder. Returns the report.

    The folder is locked and recorded in its manifest while this runs; the tool's temporaries
    are removed on every exit (see :mod:`subsetsum_lth.manifest`). Args, raises: see
    :func:`_approximate`."""
    out = Path(out)
    dest = out
    config = config.for_target(target)
    try:
        # --overwrite of a folder holding a run: the new run is written beside it and swapped in
        # only when complete, so a failure (a full disk, Ctrl-C) leaves the old run as it was
        with staged_overwrite(out, "approximate", config.overwrite and not config.resume) as dest:
            with manifest.session(dest):
                return _approximate(target, config, dest, progress, eval_data, empirical_data, executor,
                                    shown_out=out)
    except DiskFull as exc:
        if dest == out:
            hint = (f"finished solver work is kept in {out}: free space and run again with --resume"
                    if (out / "partial").is_dir() else "free space and run again")
        else:
            hint = (f"{out} is unchanged" + (f"; finished solver work is kept in {dest}, which the same "
                                               "command continues once space is freed" if dest.is_dir() else ""))
        raise DiskFull(f"{exc}; {hint}") from None


def _approximate(target: Target, config: ApproximateConfig, out: str | Path,
                 progress: Progress | None = None,
                 eval_data: dict | None = None,
                 empirical_data: np.ndarray | None = None,
                 executor=None, shown_out: Path | None = None) -> dict:
    """Run the whole construction and write the run folder. Returns the report.

    Args:
        shown_out: the folder named in messages (``--out``; ``out`` is its staging folder
            during ``--overwrite``)
        eval_data: optional {"x": float32 (N, p), "y": int64 (N,)} to measure accuracies.
        empirical_data: optional points fed to the empirical lower bound.
    Raises:
        IncompleteRun after writing everything, if instances are infeasible or failed and
        ``allow_infeasible`` is off, or if the network-level ε cannot be certified.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out)
    config = _with_initial_tau(target, _with_network_domain(target, config))
    cc = config.construction
    store, done = _prepare(target, config, out, executor)
    if done is not None:
        return done

    t = time.perf_counter()
    with phase(progress, "building g", "the random network and one subset-sum instance per target weight "
                                       "and sign half"):
        construction = build_construction(target, cc)
        layers = build_instances(target, construction)
    timings["build"] = time.perf_counter() - t
    note(progress, f"built g: {construction.total_parameters:,} parameters, "
                   f"{sum(len(i) for i in layers):,} instances in {len(layers)} layers")

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
    where = ball_set(config.input_radius, cc.input_domain)
    with phase(progress, "certified bound", f"bounding sup over {where} of ‖f(x) − ĝ(x)‖₂ from the masks "
                                            f"(layer by layer)", total=target.depth, unit="layer") as bar:
        maps = support_layer_maps(construction.pairs, layer_masks)
        certificate = certified_bound(target, maps, config.input_radius, cc.input_domain, bar=bar)
    note(progress, f"certified: sup over {where} of ‖f(x) − ĝ(x)‖₂ ≤ {certificate.bound:.4g}")
    if image and store_kind == "compact":   # a g with support-drawn pairs: their first layers as gathers
        def make_g(dtype):
            return support_pruned_module(construction.pairs, construction.plans, layout, layer_masks, dtype)
    elif image:   # conv pairs: the dense module (image g's are small)
        state = DenseState(construction.pairs, layout)
        dmasks = DenseMasks(construction.plans, layer_masks, layout)

        def make_g(dtype):
            return pruned_module(state, dmasks, layout, dtype)
    else:
        def make_g(dtype):
            return SupportNet(construction.pairs, layer_masks, dtype)
    g64 = make_g(torch.float64)
    g64 = with_input_op(g64, target)    # ĝ takes the inputs target.forward takes
    n_data = 0 if empirical_data is None else len(empirical_data)
    with phase(progress, "empirical bound", f"searching {where} for a large ‖f(x) − ĝ(x)‖₂ "
                                            f"({config.empirical_samples} random points"
                                            f"{f' and {n_data:,} data points' if n_data else ''}, "
                                            f"{config.ascent_steps} ascent steps)",
               total=config.ascent_steps, unit="step") as bar:
        emp = empirical_bound_fast(target, maps, g64, config.input_radius, cc.input_domain,
                                   data=empirical_data, samples=config.empirical_samples,
                                   steps=config.ascent_steps, seed=cc.seed, bar=bar)
    timings["certify"] = time.perf_counter() - t
    check_soundness(emp["empirical_bound"], certificate.bound)
    witness = emp.pop("witness")
    box_rep, eps_bound, extra_files = None, certificate.bound, {}
    if config.box is not None:   # the box certificate, its attack (checked), certified agreement
        box_rep, box_x = box_report(target, maps, g64, config.box, data=empirical_data, seed=cc.seed,
                                    eval_x=None if eval_data is None else eval_data["x"], progress=progress)
        eps_bound = box_rep["bound"]
        timings["certify_box"] = box_rep["seconds"] + box_rep["attack"]["seconds"]
        extra_files[BOX_WITNESS] = {"x": box_x}
    del g64

    evaluation = _evaluation(target, maps, eval_data, certificate.bound, config, box_rep, timings, progress,
                             lambda: with_input_op(make_g(torch.float32), target))

    report, metrics, bad_list, n_bad = build_report(target, config, construction, solved, layer_masks, layout,
                                                    certificate, emp, witness, evaluation, timings, executor,
                                                    eps_bound=eps_bound, box_rep=box_rep, store=store_kind)
    _write_folder(out, target, config, construction, solved, layer_masks, layout, store, store_kind, report,
                  metrics, timings, t_start, witness, extra_files, eval_data is None and empirical_data is None,
                  progress)
    raise_if_failed(report, bad_list, n_bad, config, shown_out or out, eps_bound)
    return report


def _with_network_domain(target: Target, config: ApproximateConfig) -> ApproximateConfig:
    """``config`` with the signed input domain where the target's input op (a declared
    ``Normalize`` with a positive mean) makes its layers' inputs signed: the construction keeps
    both sign halves of layer 1, and the run records the domain its files were built for (the
    ball certificate holds for every x with ‖x‖₂ ≤ r, x ≥ 0 or not: see subsetsum_lth.preprocess)."""
    cc = config.construction
    if cc.input_domain == "nonnegative" and target.network_ball(1.0, cc.input_domain)[1] == "signed":
        log.info("the input op %s makes the first layer's inputs signed: using the signed input domain",
                 target.preprocessing.describe())
        return replace(config, construction=replace(cc, input_domain="signed"))
    return config


def _with_initial_tau(target: Target, config: ApproximateConfig) -> ApproximateConfig:
    """``config`` with the adaptive blocks' τ set, where --eps (network mode) left it open."""
    if config.mode == "network" and config.construction.width == "adaptive" \
            and config.construction.tau is None:
        # adaptive blocks start from the per-weight τ the run starts with (ε is far looser)
        return replace(config, construction=replace(config.construction, tau=initial_tau(target, config)))
    return config


def _evaluation(target: Target, maps, eval_data: dict | None, bound: float, config: ApproximateConfig,
                box_rep: dict | None, timings: dict, progress, make_g32) -> dict:
    """Accuracies of f and ĝ on ``eval_data`` (none without it), the certified agreement on the
    certified sets, and the spot check of ĝ (``make_g32()``: the pruned g in float32); adds
    ``timings['evaluate']``."""
    if eval_data is None:
        return {}
    t = time.perf_counter()
    n_eval = len(eval_data["x"])
    with phase(progress, "evaluation", f"f and ĝ on {n_eval:,} test images", total=-(-n_eval // target.chunk_rows()),
               unit="batch") as bar:
        collapsed = CollapsedNet(maps, target=target)
        evaluation = evaluate_pair(target, collapsed, eval_data["x"], eval_data["y"], bar=bar,
                                   certified=_certified_sets(eval_data["x"], bound, config, box_rep))
        g32 = make_g32()
        evaluation.update(spot_check(collapsed, g32, eval_data["x"][:256]))
        del g32
    timings["evaluate"] = time.perf_counter() - t
    return evaluation


def _write_folder(out: Path, target: Target, config: ApproximateConfig, construction, solved, layer_masks,
                  layout, store, store_kind: str, report: dict, metrics: list, timings: dict, t_start: float,
                  witness: dict, extra_files: dict, no_data: bool, progress) -> None:
    """Write the run folder (report.json last) and its plots; ``no_data``: made without a data set."""
    cc = config.construction
    meta = {"format": "run", "seed": cc.seed, "depth": target.depth}
    if not target.is_mlp:
        meta.update({"g_arch": layout.ops(), "input_shape": list(target.input_shape)})
    plots = None
    if config.plots:
        plots = lambda: plot_mod.run_plots(out, solved.layers, solved.results, report)  # noqa: E731
    with phase(progress, "writing", f"the run folder {out}" + (" and its plots" if plots else "")):
        write_run(out, masks=None, meta=meta, report=report, metrics=metrics, t_start=t_start, timings=timings,
                  g=GWrite(store_kind, construction.pairs, construction.plans, layer_masks, layout,
                           generator_spec(cc.seed, cc.distribution, construction.plans)),
                  target=target,
                  extra={WITNESS: {"x": np.asarray(witness["x"], dtype=np.float64)}, **extra_files}, plots=plots,
                  store_name=store.folder.name,
                  extra_report={"wall_seconds_covers": "this approximation: construction, solve, certificate, "
                                                       "evaluation, writing (not the training of a target)",
                                # the data set the run was made on ('data'; null: made without data)
                                **({"data": None} if no_data else {}),
                                **config.report_extra})


def _certified_sets(x: np.ndarray, bound: float, config: ApproximateConfig, box_rep: dict | None) -> dict:
    """{name: (bound, which rows of x lie in its set)} for the ball certificate and the box one."""
    sets = {"ball": (bound, in_ball(x, config.input_radius, config.construction.input_domain))}
    if box_rep is not None:
        x2 = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        sets["box"] = (box_rep["bound"], ((x2 >= config.box.lo) & (x2 <= config.box.hi)).all(axis=1))
    return sets


def _prepare(target: Target, config: ApproximateConfig, out: Path, executor):
    """Check the solver, the width against exact search's reach and the time budget, then
    prepare ``out`` (manifest, lock, resume store). Returns (store, report of an already
    finished run for ``--resume`` or None)."""
    cc, sc = config.construction, config.solve
    check_solver(sc)
    fingerprint = config.fingerprint(target)
    # refuse absurd widths (with the estimate) and a full disk before any file is written
    plans = plan_layers(target, cc)
    choose_store(config.store, plans, not target.is_mlp)     # --store dense of a support-drawn g: refused now
    entries = sum(pl.held_entries() + pl.hidden + pl.q for pl in plans)
    cost = limits.estimate(plans, sc.solver, _estimate_workers(sc, executor), sc.time_limit)
    log.info("estimated solve time %s, memory %.2g GB", cost.describe_time(), cost.memory_bytes / 1e9)
    limits.check_reach(cost, config.max_hours, "--eps" if config.mode == "network" else "--weight-eps")
    limits.check_growth(plans, cc.grow, cc.max_growth, cc.width,
                        limits.growth_reach(sc.solver, sc.objective))
    # start the workers or connect to the cluster now: a scheduler that cannot be reached is a
    # one-line error before any file of the run folder is written
    start = getattr(executor, "start", None)
    if callable(start):
        start()
    config = continue_stage(out, config, fingerprint)
    store = prepare_folder(out, config, fingerprint, need_bytes=int(entries * 5 * 1.1))
    done = completed_run(out) if config.resume else None
    if done is not None:
        log.info("--resume: the run in %s is already complete (same settings); nothing to solve", out)
        writer = manifest.writer_for(out)
        writer.remove_store(store.folder.name)
        writer.finish()             # the folder holds a complete run, as before --resume
        return store, AlreadyComplete(done)
    return store, None


def _estimate_workers(sc: SolveConfig, executor) -> int:
    """Cores the solve will use, for the cost estimate (never more than this machine's)."""
    return solve_workers(sc, executor)


