"""report.json and metrics.csv of an approximate run: per-layer figures, failures, versions."""
from __future__ import annotations

import platform

import numpy as np
import torch

from subsetsum_lth import __version__
from subsetsum_lth.certify import ball_set
from subsetsum_lth.certify_box import box_set
from subsetsum_lth.errors import IncompleteRun
from subsetsum_lth.gstore import generator_spec
from subsetsum_lth.preprocess import report
from subsetsum_lth.runcheck import WITNESS
from subsetsum_lth.solvers.instances import Status


def versions() -> dict:
    import numpy
    out = {"subsetsum_lth": __version__, "python": platform.python_version(),
           "numpy": numpy.__version__, "torch": torch.__version__}
    for mod in ("ortools", "safetensors", "gurobipy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


def preprocess_report(target) -> dict:
    return report(target)


def build_report(target, config, construction, solved, layer_masks, layout, certificate, emp,
                 witness, evaluation, timings, executor=None, eps_bound=None,
                 box_rep=None, store: str = "dense") -> tuple[dict, list[dict], list[dict], int]:
    """(report, metrics rows, first failures, number of failed instances). ``layer_masks``: per
    pair the support-form masks {u, b1, w2, b2}; ``store``: 'dense' or 'compact'. Network mode: the
    certificate is the goal, and instances outside the internal τ only count as failures when
    the certified bound misses ε; weight mode: every instance must be within τ."""
    cc, sc = config.construction, config.solve
    eps_bound = certificate.bound if eps_bound is None else eps_bound    # the box's, in the box domain
    layer_reports, metrics = [], []
    kept_total = 0
    n_bad_total = 0
    n_outside_total = 0
    bad_list = []
    # network mode: the certificate is the goal; instances outside the internal τ only count
    # as failures when the certified bound misses ε. Weight mode: every instance must be within τ.
    network_ok = config.mode == "network" and eps_bound <= config.eps
    beyond = solved.beyond_exact() if solved.solved_counts else [0] * len(solved.layers)
    for li, (inst, res, mk) in enumerate(zip(solved.layers, solved.results, layer_masks)):
        rep, n_bad, n_outside, examples = _layer_report(li, inst, res, mk, network_ok, cc, layout, construction,
                                                        solved, certificate)
        n_bad_total += n_bad
        n_outside_total += n_outside
        bad_list += examples
        kept_total += rep["kept_parameters"]
        rep["live_coefficients_max"] = int(inst.counts.max()) if len(inst) else 0
        # subsets searched beyond exact search's reach (40 live coefficients): by fix-and-search (auto)
        rep["beyond_exact_count"] = beyond[li]
        layer_reports.append(rep)
        for key in ("max_weight_error", "mean_weight_error", "max_bias_error", "kept_coefficients",
                    "kept_units", "kept_parameters", "instances", "infeasible", "seconds", "block_width"):
            metrics.append({"layer": li, "metric": key, "value": rep[key]})
    report = {
        "eps": config.eps if config.eps is not None else config.weight_eps,
        "mode": config.mode,
        "weight_eps": solved.tau,
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
        **({} if target.is_mlp else {"target_arch": target.arch(), "input_shape": list(target.input_shape),
                                      "g_arch": layout.ops()}),
        "target_parameters": target.n_parameters,
        "target_source": target.source,
        "preprocessing": preprocess_report(target),
        "certified_bound": certificate.bound,
        "certified_set": ball_set(config.input_radius, cc.input_domain),
        "certified_meaning": f"sup over {{x: {ball_set(config.input_radius, cc.input_domain)}}} of "
                             "‖f(x) − ĝ(x)‖₂ ≤ certified_bound; empirical_bound is the largest "
                             "‖f(x) − ĝ(x)‖₂ found on that set (a lower bound of the sup)",
        "empirical_bound": emp["empirical_bound"],
        "empirical": emp,
        # x* of the empirical bound, re-evaluated by `certify` from the files
        "witness": {"file": WITNESS, "error": float(witness["error"])},
        "certified_ok": (eps_bound <= config.eps) if config.eps is not None else None,
        "kept_parameters": kept_total,
        "total_parameters": construction.total_parameters,
        "store": store,
        **({"generator": generator_spec(cc.seed, cc.distribution, construction.plans)} if store == "compact" else {}),
        "prepruned_parameters": construction.prepruned_parameters,
        "instances": sum(len(inst) for inst in solved.layers),
        "infeasible_count": n_bad_total,
        "outside_tolerance_count": n_outside_total,
        "beyond_exact_count": int(sum(beyond)),
        # which engine produced each instance's answer: {"total": {name: count}, "per_layer": [...]}
        "engines": solved.engine_counts(),
        "infeasible_examples": bad_list,
        "rounds": solved.rounds,
        "layers": layer_reports,
        **evaluation,
        "timings": timings,
        "versions": versions(),
    }
    if box_rep is not None:
        report["box_certificate"] = {**box_rep, "set": box_set(*box_rep["box"], target.input_dim)}
    for key in ("certified_bound", "empirical_bound", "kept_parameters", "total_parameters",
                "infeasible_count"):
        metrics.append({"layer": "all", "metric": key, "value": report[key]})
    for key in ("target_accuracy", "pruned_accuracy", "prediction_agreement"):
        if key in report:
            metrics.append({"layer": "all", "metric": key, "value": report[key]})

    return report, metrics, bad_list, n_bad_total


def _layer_report(li: int, inst, res, mk: dict, network_ok: bool, cc, layout, construction, solved,
                  certificate) -> tuple[dict, int, int, list[dict]]:
    """Layer ``li``'s entry of report.json 'layers', its numbers of failed and outside-tolerance
    instances, and its first (at most 20) failed instances."""
    plan = inst.plan
    is_bias = inst.group_half[inst.group_of_instance()] == 0
    werr = res.errors[~is_bias]
    berr = res.errors[is_bias]
    outside = res.status == Status.INFEASIBLE
    hard = ~np.isin(res.status, (Status.OPTIMAL, Status.FEASIBLE, Status.INFEASIBLE))
    bad = hard | (outside & (not network_ok))
    examples = []
    for idx in np.flatnonzero(bad)[:20]:
        g = inst.group_of_instance()[idx]
        examples.append({"layer": li, "row": int(inst.rows()[idx]), "column": int(inst.group_block[g]),
                         "half": int(inst.group_half[g]), "target": float(inst.targets[idx]),
                         "error": float(res.errors[idx]), "status": Status(int(res.status[idx])).name,
                         "message": res.messages.get(int(inst.ids[idx]), "")})
    kept_units = int(((mk["u"] != 0) | (mk["b1"] != 0)).sum())
    kept_coef = int(mk["w2"].sum())
    kept_params = int(sum(int(a.sum()) for a in mk.values()))
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
        # a support-drawn pair (--support-draw-above): its first layer holds only the block support
        **({"first_layer": "support"} if plan.lean else {}),
        "random_shapes": [list(s) for s in layout.kinds[li].g_shapes(plan.hidden)],
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
        "kept_parameters_first": int(mk["u"].sum() + mk["b1"].sum()),
        "kept_parameters_second": int(mk["w2"].sum() + mk["b2"].sum()),
        "total_parameters": int(construction.pairs[li].size),
        "seconds": solved.seconds[li],
        "certificate": certificate.layers[li],
    }
    return rep, int(bad.sum()), int(outside.sum()), examples


def raise_if_failed(report: dict, bad_list: list[dict], n_bad: int, config, out, eps_bound=None) -> None:
    """IncompleteRun (after everything is written) unless the user tolerates failures.
    ``eps_bound``: the bound ε is checked on (the box certificate's in the box domain)."""
    certified = report["certified_bound"] if eps_bound is None else eps_bound
    failed = n_bad > 0 or (config.mode == "network" and certified > config.eps)
    if not failed or config.allow_infeasible:
        return
    if n_bad:
        lines = [f"  layer {b['layer']} row {b['row']} col {b['column']}: {b['status']} "
                 f"(target {b['target']:.4g}, best error {b['error']:.3g})"
                 + (f": {b['message']}" if b.get("message") else "") for b in bad_list[:10]]
        raise IncompleteRun(
            f"{n_bad} of {report['instances']} instances are not within τ={report['weight_eps']:.3g}; everything "
            f"computed is written to {out}. First ones:\n" + "\n".join(lines) +
            "\nWiden the random network (--block-width, --C), loosen --weight-eps/--eps, or pass "
            "--allow-infeasible to accept the closest subsets.")
    raise IncompleteRun(f"the certified bound {certified:.4g} exceeds ε={config.eps:g} at this "
                        f"width; everything computed is written to {out}. Widen the network "
                        "(--block-width, --C) or use --objective error.")
