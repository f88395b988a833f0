"""The pipeline: target → construction → instances → solve → masks → certificate → run folder."""
from __future__ import annotations

import json
import logging
import math
import platform
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from subsetsum_lth import __version__
from subsetsum_lth import manifest
from subsetsum_lth import runfolder as rf
from subsetsum_lth.certify import (CollapsedNet, certified_bound, check_soundness,
                                   empirical_bound_fast, layer_maps, pruned_module)
from subsetsum_lth.certify_box import BOX_WITNESS, box_bound, box_from_report, box_report
from subsetsum_lth.construction import (ConstructionConfig, LayerInstances,
                                        build_construction, draw_layer_pair, layer_instances,
                                        masks_from_selections, masks_state_dict)
from subsetsum_lth.errors import IncompleteRun, RunFolderError, UserError
from subsetsum_lth.solvers.instances import Status
from subsetsum_lth.runcheck import WITNESS
from subsetsum_lth.solve import ResumeStore, SolveConfig, check_solver, solve_all
from subsetsum_lth.target import Target, save_target

log = logging.getLogger(__name__)


class Progress(Protocol):
    def __call__(self, total: int, desc: str) -> Callable[[int], None]: ...


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
        from subsetsum_lth.runcheck import MAX_INPUT_RADIUS
        if not (math.isfinite(self.input_radius) and 0 < self.input_radius <= MAX_INPUT_RADIUS):
            # beyond it certify, compare and the API refuse the run folder this would write
            raise UserError(f"--input-radius must be a positive number <= {MAX_INPUT_RADIUS:g}, got "
                            f"{self.input_radius:g}; rescale the inputs or choose a smaller radius")
        if not (self.max_hours > 0):
            raise UserError(f"--max-hours must be a positive number, got {self.max_hours}")
        if self.empirical_samples < 1:
            raise UserError(f"--samples must be >= 1, got {self.empirical_samples}")
        if self.ascent_steps < 0:
            raise UserError(f"--steps must be >= 0, got {self.ascent_steps}")

    @property
    def mode(self) -> str:
        return "network" if self.eps is not None else "weight"


def apriori_bound(target: Target, tau: float, radius: float, domain: str, typical: bool) -> float:
    """The certified bound if every weight/bias error were τ: with ‖E‖₂ ≤ τ√(q·p·h) (sound,
    ``typical=False``) or the random-matrix estimate τ(√q + √(p·h)) (``typical=True``)."""
    R, delta = radius, 0.0
    norms = _weight_norms(target)
    for i, L in enumerate(target.layers):
        q, p = L.weight.shape
        h = 2 if (i == 0 and domain == "signed") else 1
        nE = tau * ((math.sqrt(q) + math.sqrt(p * h)) if typical else math.sqrt(q * p * h))
        neb = tau * math.sqrt(q) if L.bias is not None else 0.0
        nW = norms[i]
        delta = nW * delta + (R + delta) * nE + neb
        R = nW * R + (0.0 if L.bias is None else float(np.linalg.norm(L.bias)))
    return delta


def _weight_norms(target: Target) -> list[float]:
    cached = getattr(target, "_spectral_norms", None)
    if cached is None:
        from subsetsum_lth.certify import spectral_norm
        cached = [spectral_norm(L.weight) for L in target.layers]
        target._spectral_norms = cached
    return cached


def choose_tolerance(target: Target, eps: float, radius: float, domain: str, typical=True) -> float:
    """Largest τ (bisection, log scale) whose a-priori bound is ≤ 0.9 ε; never above ε."""
    lo, hi = 1e-12, eps
    if apriori_bound(target, hi, radius, domain, typical) <= 0.9 * eps:
        return hi
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        if apriori_bound(target, mid, radius, domain, typical) <= 0.9 * eps:
            lo = mid
        else:
            hi = mid
    return lo


def _versions() -> dict:
    import numpy
    out = {"subsetsum_lth": __version__, "python": platform.python_version(),
           "numpy": numpy.__version__, "torch": torch.__version__}
    for mod in ("ortools", "safetensors", "gurobipy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


def _prepare_folder(out: Path, config: ApproximateConfig, fingerprint: dict,
                    need_bytes: int = 0) -> ResumeStore:
    out = Path(out)
    partial = out / "partial"
    # --out must be new, empty, or an approximate run folder written by the tool (manifest.json,
    # files unchanged); it is locked until approximate() returns, and --overwrite removes only
    # the files the manifest lists
    writer = manifest.open_folder(out, "approximate", overwrite=config.overwrite and not config.resume,
                                  need_bytes=need_bytes)
    try:
        existing = [p for p in (out / rf.REPORT, out / rf.MASKS, partial) if p.exists()]
        if existing and not (config.resume or config.overwrite):
            raise RunFolderError(
                f"{out} already holds a run ({', '.join(p.name for p in existing)}); "
                "use --resume to continue it, --overwrite to replace it, or another --out")
        # a resumed run's settings are checked before anything in the folder changes
        cfg_path = out / "run_config.json"
        if config.resume and cfg_path.exists():
            from subsetsum_lth.runcheck import read_json
            old = read_json(cfg_path, fix="use --overwrite to start the run again, or another --out")
            if json.loads(json.dumps(fingerprint, default=rf._json_default)) != old:
                diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
                raise RunFolderError(f"--resume: the run in {out} was started with different settings "
                                     f"({', '.join(diff)}); use the same options or another --out")
        writer.make_store("partial")
    except BaseException:
        writer.close()
        raise
    rf.atomic_write_json(cfg_path, fingerprint)
    return ResumeStore(partial)


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
    cc, sc = config.construction, config.solve
    cc.eps = config.eps if config.eps is not None else config.weight_eps
    check_solver(sc)
    fingerprint = {
        "target_sizes": target.sizes, "target_bias": target.has_bias,
        "target_digest": _digest(target), "construction": asdict(cc),
        "solver": sc.solver, "objective": sc.objective, "eps": config.eps,
        "weight_eps": config.weight_eps, "input_radius": config.input_radius,
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
    limits.check_growth(plans, cc.grow, cc.max_growth, cc.width, cost.reach)
    store = _prepare_folder(out, config, fingerprint, need_bytes=int(entries * 5 * 1.1))
    done = _completed_run(out) if config.resume else None
    if done is not None:
        log.info("--resume: the run in %s is already complete (same settings); nothing to solve", out)
        manifest.writer_for(out).remove_store(store.folder.name)
        return done

    t = time.perf_counter()
    construction = build_construction(target, cc)
    layers: list[LayerInstances] = []
    offset = 0
    for L, pair in zip(target.layers, construction.pairs):
        inst = layer_instances(pair, L.weight, L.bias, offset)
        layers.append(inst)
        offset += len(inst)
    timings["build"] = time.perf_counter() - t
    log.info("built g: %s parameters, %d instances", f"{construction.total_parameters:,}", offset)

    if config.mode == "weight":
        tau = float(config.weight_eps)
    else:
        # start from 4x the random-matrix estimate (achieved errors sit well below τ), then
        # tighten only if the certificate asks for it
        tau = min(config.eps, 4 * choose_tolerance(target, config.eps, config.input_radius, cc.input_domain))
        if config.box is not None:   # the box: no a-priori bound; τ = ε, tightened by the box certificate
            tau = config.eps
    results = [None] * len(layers)
    solve_seconds = [0.0] * len(layers)
    rounds = []
    t = time.perf_counter()
    certificate = None
    for rnd in range(config.max_rounds if config.mode == "network" else 1):
        for li, inst in enumerate(layers):
            batch = inst.batch(tau, sc.objective)
            t_layer = time.perf_counter()
            if results[li] is None:
                sub = batch
                tick = progress(len(sub), f"layer {li + 1}/{len(layers)} ({sc.solver})") if progress else None
                results[li] = solve_all(sub, sc, on_progress=tick, store=store, executor=executor)
                _close(tick)
            else:
                # a tighter τ: instances above it need work. With the error objective their exact
                # optimum is already above τ (infeasible at this width); otherwise re-solve them —
                # a subset optimal for the looser τ and within the tighter one stays optimal.
                r0 = results[li]
                above = r0.errors > tau
                if not above.any():
                    continue
                if sc.objective == "error":
                    r0.status[above] = Status.INFEASIBLE
                else:
                    redo = np.flatnonzero(above & (r0.status != Status.INFEASIBLE))
                    r0.status[above & (r0.status == Status.INFEASIBLE)] = Status.INFEASIBLE
                    if redo.size:
                        sub = batch.take(redo)
                        tick = progress(len(sub), f"layer {li + 1}: τ={tau:.2g}") if progress else None
                        res = solve_all(sub, sc, on_progress=tick, store=store, executor=executor)
                        _close(tick)
                        w = res.selections.shape[1]
                        r0.selections[redo] = False
                        r0.selections[redo, :w] = res.selections
                        r0.errors[redo] = res.errors
                        r0.status[redo] = res.status
                        r0.messages.update(res.messages)
            if cc.width != "formula":
                layers[li], construction.pairs[li], results[li] = _grow_layer(
                    target, construction.pairs[li], layers[li], results[li], tau, cc, sc, store,
                    executor, progress)
            solve_seconds[li] += time.perf_counter() - t_layer
        if config.mode == "weight":
            break
        masks = masks_state_dict([masks_from_selections(i, r.selections) for i, r in zip(layers, results)])
        maps_r = layer_maps(construction.state_dict(), masks, target.depth)
        certificate = certified_bound(target, maps_r, config.input_radius, cc.input_domain)
        eps_bound = certificate.bound if config.box is None else box_bound(target, maps_r, config.box)
        n_out = sum(int((r.status == Status.INFEASIBLE).sum()) for r in results)
        rounds.append({"round": rnd, "weight_eps": tau, "certified_bound": eps_bound,
                       "outside_tolerance": n_out})
        log.info("round %d: τ=%.3g certified=%.4g (ε=%.4g), %d instances outside τ",
                 rnd, tau, eps_bound, config.eps, n_out)
        if eps_bound <= config.eps:
            break
        if len(rounds) > 1 and eps_bound > 0.95 * rounds[-2]["certified_bound"]:
            break  # no progress: the bound is held up by instances no τ can fix at this width
        tau = tau * min(0.5, 0.9 * config.eps / eps_bound)
    timings["solve"] = time.perf_counter() - t

    # --- masks and certificate, recomputed from the state dicts alone
    t = time.perf_counter()
    layer_masks = [masks_from_selections(i, r.selections) for i, r in zip(layers, results)]
    masks = masks_state_dict(layer_masks)
    state = construction.state_dict()
    maps = layer_maps(state, masks, target.depth)
    certificate = certified_bound(target, maps, config.input_radius, cc.input_domain)
    g64 = pruned_module(state, masks, target.depth, torch.float64)
    emp = empirical_bound_fast(target, maps, g64, config.input_radius, cc.input_domain,
                               data=empirical_data, samples=config.empirical_samples,
                               steps=config.ascent_steps, seed=cc.seed)
    timings["certify"] = time.perf_counter() - t
    check_soundness(emp["empirical_bound"], certificate.bound)
    witness = emp.pop("witness")
    box_rep, eps_bound = None, certificate.bound
    if config.box is not None:   # the box certificate, its attack (checked), certified agreement
        box_rep, box_x = box_report(target, maps, g64, config.box, data=empirical_data, seed=cc.seed,
                                    eval_x=None if eval_data is None else eval_data["x"])
        eps_bound = box_rep["bound"]
        timings["certify_box"] = box_rep["seconds"] + box_rep["attack"]["seconds"]

    evaluation = {}
    if eval_data is not None:
        t = time.perf_counter()
        evaluation = evaluate_pair(target, CollapsedNet(maps), eval_data["x"], eval_data["y"])
        evaluation.update(spot_check(CollapsedNet(maps), pruned_module(state, masks, target.depth, torch.float32),
                                     eval_data["x"][:256]))
        timings["evaluate"] = time.perf_counter() - t

    # --- report
    layer_reports, metrics = [], []
    kept_total = 0
    n_bad_total = 0
    n_outside_total = 0
    bad_list = []
    # network mode: the certificate is the goal; instances outside the internal τ only count
    # as failures when the certified bound misses ε. Weight mode: every instance must be within τ.
    network_ok = config.mode == "network" and eps_bound <= config.eps
    for li, (inst, res, mk) in enumerate(zip(layers, results, layer_masks)):
        plan = inst.plan
        is_bias = inst.group_half[inst.group_of_instance()] == 0
        werr = res.errors[~is_bias]
        berr = res.errors[is_bias]
        outside = res.status == Status.INFEASIBLE
        hard = ~np.isin(res.status, (Status.OPTIMAL, Status.FEASIBLE, Status.INFEASIBLE))
        bad = hard | (outside & (not network_ok))
        n_bad_total += int(bad.sum())
        n_outside_total += int(outside.sum())
        for idx in np.flatnonzero(bad)[:20]:
            g = inst.group_of_instance()[idx]
            bad_list.append({"layer": li, "row": int(inst.rows()[idx]), "column": int(inst.group_block[g]),
                             "half": int(inst.group_half[g]), "target": float(inst.targets[idx]),
                             "error": float(res.errors[idx]), "status": Status(int(res.status[idx])).name,
                             "message": res.messages.get(int(inst.ids[idx]), "")})
        kept_units = int((mk["w1"].any(axis=1) | (mk["b1"] != 0)).sum())
        kept_coef = int(mk["w2"].sum())
        kept_params = int(sum(int(a.sum()) for a in mk.values()))
        kept_total += kept_params
        per_weight = res.selections[~is_bias].sum(axis=1)
        rep = {
            "layer": li, "target_shape": [plan.q, plan.p], "has_bias": plan.has_bias,
            "block_width": plan.m, "formula_block_width": plan.formula_m,
            "width_mode": cc.width, "grown_blocks": int((plan.extensions > 0).sum()),
            "block_width_final_max": int(plan.block_widths.max()),
            "block_width_final_mean": float(plan.block_widths.mean()),
            "hidden_units": plan.hidden,
            "growth_units": plan.grow,
            "block_extensions": plan.extensions.tolist(),
            "random_shapes": [[plan.hidden, plan.p], [plan.q, plan.hidden]],
            "instances": len(inst), "weight_instances": int((~is_bias).sum()),
            "bias_instances": int(is_bias.sum()),
            "live_coefficients_mean": float(inst.counts.mean()) if len(inst) else 0.0,
            "live_coefficients_min": int(inst.counts.min()) if len(inst) else 0,
            "max_weight_error": float(werr.max(initial=0.0)),
            "mean_weight_error": float(werr.mean()) if werr.size else 0.0,
            "max_bias_error": float(berr.max(initial=0.0)),
            "infeasible": int((bad & outside).sum()),
            "outside_tolerance": int(outside.sum()),
            "failed": int(hard.sum()),
            "kept_coefficients": kept_coef,
            "kept_coefficients_per_weight": float(per_weight.mean()) if per_weight.size else 0.0,
            "kept_units": kept_units,
            "kept_parameters": kept_params,
            "kept_parameters_first": int(mk["w1"].sum() + mk["b1"].sum()),
            "kept_parameters_second": int(mk["w2"].sum() + mk["b2"].sum()),
            "total_parameters": int(sum(np.asarray(state[f"{4 * li + d}.{t}"]).size
                                        for d in (0, 2) for t in ("weight", "bias"))),
            "seconds": solve_seconds[li],
            "certificate": certificate.layers[li],
        }
        layer_reports.append(rep)
        for key in ("max_weight_error", "mean_weight_error", "max_bias_error", "kept_coefficients",
                    "kept_units", "kept_parameters", "instances", "infeasible", "seconds", "block_width"):
            metrics.append({"layer": li, "metric": key, "value": rep[key]})
    report = {
        "eps": config.eps if config.eps is not None else config.weight_eps,
        "mode": config.mode,
        "weight_eps": tau,
        "input_radius": config.input_radius,
        "input_domain": cc.input_domain,
        "seed": cc.seed,
        "solver": sc.solver,
        "objective": sc.objective,
        "workers": sc.resolved_workers() if executor is None else getattr(executor, "workers", None),
        "executor": sc.executor if executor is None else getattr(executor, "kind", type(executor).__name__),
        "distribution": cc.distribution,
        "C": cc.C, "delta": cc.delta,
        "target_sizes": target.sizes,
        "target_parameters": target.n_parameters,
        "target_source": target.source,
        "preprocessing": _preprocessing_report(target),
        "certified_bound": certificate.bound,
        "empirical_bound": emp["empirical_bound"],
        "empirical": emp,
        # x* of the empirical bound, re-evaluated by `certify` from the files
        "witness": {"file": WITNESS, "error": float(witness["error"])},
        "certified_ok": (eps_bound <= config.eps) if config.eps is not None else None,
        "kept_parameters": kept_total,
        "total_parameters": construction.total_parameters,
        "prepruned_parameters": construction.prepruned_parameters,
        "instances": offset,
        "infeasible_count": n_bad_total,
        "outside_tolerance_count": n_outside_total,
        "infeasible_examples": bad_list,
        "rounds": rounds,
        "layers": layer_reports,
        **evaluation,
        "timings": timings,
        "versions": _versions(),
    }
    if box_rep is not None:
        report["box_certificate"] = box_rep
    for key in ("certified_bound", "empirical_bound", "kept_parameters", "total_parameters",
                "infeasible_count"):
        metrics.append({"layer": "all", "metric": key, "value": report[key]})
    for key in ("target_accuracy", "pruned_accuracy", "prediction_agreement"):
        if key in report:
            metrics.append({"layer": "all", "metric": key, "value": report[key]})

    t = time.perf_counter()
    # one metadata key: safetensors orders several keys at random, which would break byte-identity
    meta = {"subsetsum_lth": json.dumps({"format": "run", "seed": cc.seed, "depth": target.depth},
                                        sort_keys=True)}
    rf.atomic_save_safetensors(state, out / rf.RANDOM_NET, meta)
    rf.atomic_save_safetensors(masks, out / rf.MASKS, meta)
    save_target(target, out / rf.TARGET)
    rf.atomic_save_safetensors({"x": np.asarray(witness["x"], dtype=np.float64)}, out / WITNESS, meta)
    if box_rep is not None:
        rf.atomic_save_safetensors({"x": box_x}, out / BOX_WITNESS, meta)
    if config.plots:
        from subsetsum_lth import plots
        try:
            report["plots"] = plots.run_plots(out, layers, results, report)
        except Exception as exc:  # a plot must never cost the run
            log.warning("plots failed: %s", exc)
    timings["write"] = time.perf_counter() - t
    report["wall_seconds"] = time.perf_counter() - t_start
    report["wall_seconds_covers"] = ("this approximation: construction, solve, certificate, evaluation, "
                                     "writing (not the training of a target)")
    report.update(config.report_extra)
    report["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rf.atomic_write_csv(out / rf.METRICS, metrics)
    rf.atomic_write_json(out / rf.REPORT, report)
    writer = manifest.writer_for(out)
    writer.remove_store(store.folder.name)     # only the store's own files, never a user's
    writer.finish()

    failed = n_bad_total > 0 or (config.mode == "network" and eps_bound > config.eps)
    if failed and not config.allow_infeasible:
        if n_bad_total:
            lines = [f"  layer {b['layer']} row {b['row']} col {b['column']}: {b['status']} "
                     f"(target {b['target']:.4g}, best error {b['error']:.3g})" for b in bad_list[:10]]
            raise IncompleteRun(
                f"{n_bad_total} of {offset} instances are not within τ={tau:.3g}; everything computed "
                f"is written to {out}. First ones:\n" + "\n".join(lines) +
                "\nWiden the random network (--block-width, --C), loosen --weight-eps/--eps, or pass "
                "--allow-infeasible to accept the closest subsets.")
        raise IncompleteRun(f"the certified bound {eps_bound:.4g} exceeds ε={config.eps:g} at this "
                            f"width; everything computed is written to {out}. Widen the network "
                            "(--block-width, --C) or use --objective error.")
    return report


def _estimate_workers(sc: SolveConfig, executor) -> int:
    """Cores the solve will use, for the cost estimate (never more than this machine's)."""
    from subsetsum_lth.limits import available_cores
    if executor is not None:
        return int(getattr(executor, "capacity", None) or getattr(executor, "_max_workers", None) or 1)
    return min(sc.workers or available_cores(), available_cores())


def _preprocessing_report(target: Target) -> dict:
    from subsetsum_lth.preprocess import report
    return report(target)


def _completed_run(out: Path) -> dict | None:
    """The report of a finished, successful run in ``out`` (masks and report written, nothing
    infeasible, ε met), else None. ``_prepare_folder`` has already checked the settings match."""
    if not ((out / rf.REPORT).exists() and (out / rf.MASKS).exists() and (out / rf.RANDOM_NET).exists()):
        return None
    # nothing stored is believed: the folder goes through the validated reader and its
    # certificate and weight errors are recomputed from the files before it counts as done
    from subsetsum_lth.runcheck import read_run
    try:
        run = read_run(out, need_target=True)
        report = run.report
        maps = layer_maps(run.random_state, run.masks, run.target.depth)
        cert = certified_bound(run.target, maps, run.input_radius, run.input_domain)
        box = box_from_report(report, str(out))      # a box run's --eps was checked on its box bound
        eps_bound = cert.bound if box is None else box_bound(run.target, maps, box)
    except Exception as exc:
        log.warning("--resume: the finished run in %s does not check out (%s); solving again", out, exc)
        return None
    if report.get("infeasible_count", 1) != 0 or report.get("certified_ok") is False:
        return None
    stored = report.get("certified_bound")
    tau = report.get("weight_eps")
    ok = stored is not None and math.isclose(stored, cert.bound, rel_tol=1e-9, abs_tol=1e-15)
    if report.get("mode") == "network":
        ok = ok and report.get("eps") is not None and eps_bound <= report["eps"]
    else:
        ok = ok and isinstance(tau, (int, float)) and all(
            max(L["max_weight_error"], L["max_bias_error"]) <= tau * (1 + 1e-6) + 1e-9 for L in cert.layers)
    if not ok:
        log.warning("--resume: the report in %s does not match its recomputed certificate or errors; "
                    "solving again", out)
        return None
    return report


def _close(tick) -> None:
    if tick is not None and hasattr(tick, "close"):
        tick.close()


def _grow_layer(target: Target, pair, inst: LayerInstances, res, tau, cc: ConstructionConfig,
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
        from subsetsum_lth.limits import _solver_reach, growth_allowed
        grow_mask &= growth_allowed(plan.block_widths, plan.grow, _solver_reach(sc.solver))
        if not grow_mask.any():
            break
        plan.extensions = plan.extensions + grow_mask.astype(np.int64)
        log.info("layer %d growth step %d: %d blocks grow by %d units, %d instances to re-solve",
                 plan.index, step + 1, int(grow_mask.sum()), plan.grow, infeasible.size)
        pair = draw_layer_pair(plan, cc.seed, cc.distribution)
        new_inst = layer_instances(pair, L.weight, L.bias, inst.offset)
        n_new = new_inst.coefficients.shape[1]
        sel = np.zeros((len(new_inst), n_new), dtype=bool)
        sel[:, :res.selections.shape[1]] = res.selections   # unit lists only grow at their end
        status = res.status.copy()
        grown_rows = np.isin(new_inst.group_of_instance(),
                             [g for g in range(len(new_inst.group_units))
                              if grow_mask[new_inst.group_block[g] if new_inst.group_block[g] >= 0 else plan.p]])
        status[grown_rows & (status == Status.OPTIMAL)] = Status.FEASIBLE
        sub = new_inst.batch(tau, sc.objective).take(infeasible)
        tick = progress(len(sub), f"layer {plan.index + 1}: growth {step + 1}") if progress else None
        r2 = solve_all(sub, sc, on_progress=tick, store=store, executor=executor)
        if tick is not None and hasattr(tick, "close"):
            tick.close()
        sel[infeasible] = False
        sel[infeasible, :r2.selections.shape[1]] = r2.selections
        errors = res.errors.copy()
        errors[infeasible] = r2.errors
        status[infeasible] = r2.status
        messages = {**res.messages, **r2.messages}
        from subsetsum_lth.solvers.instances import BatchResult
        res = BatchResult(new_inst.ids, sel, errors, status, res.solver, res.seconds + r2.seconds, messages)
        inst = new_inst
    return inst, pair, res


def _digest(target: Target) -> str:
    import hashlib
    h = hashlib.sha256()
    for L in target.layers:
        h.update(np.ascontiguousarray(L.weight).tobytes())
        if L.bias is not None:
            h.update(np.ascontiguousarray(L.bias).tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def spot_check(collapsed: torch.nn.Module, g: torch.nn.Module, x: np.ndarray) -> dict:
    """ĝ itself (float32, dense, as deployed) against its collapsed layer maps on a few inputs."""
    xb = torch.as_tensor(x, dtype=torch.float32)
    a = collapsed(xb.double())
    b = g(xb).double()
    return {"spot_check_examples": int(len(x)),
            "spot_check_max_diff": float((a - b).abs().max()) if len(x) else 0.0,
            "spot_check_agreement": float((a.argmax(1) == b.argmax(1)).double().mean()) if len(x) else 1.0}


@torch.no_grad()
def evaluate_pair(target: Target, g: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 4096) -> dict:
    """Accuracy of f and ĝ, prediction agreement, output deviation (float32, as deployed)."""
    f_pred, g_pred, dev = [], [], []
    for i in range(0, len(x), batch):
        xb = torch.as_tensor(x[i:i + batch], dtype=torch.float32)
        fo = target.forward(xb.double())
        go = g(xb.double()).double()
        f_pred.append(fo.argmax(1))
        g_pred.append(go.argmax(1))
        dev.append((fo - go).norm(dim=1))
    f_pred, g_pred, dev = torch.cat(f_pred), torch.cat(g_pred), torch.cat(dev)
    yt = torch.as_tensor(y)
    return {
        "target_accuracy": float((f_pred == yt).double().mean()),
        "pruned_accuracy": float((g_pred == yt).double().mean()),
        "prediction_agreement": float((f_pred == g_pred).double().mean()),
        "max_output_deviation": float(dev.max()),
        "mean_output_deviation": float(dev.mean()),
        "eval_examples": int(len(x)),
    }
