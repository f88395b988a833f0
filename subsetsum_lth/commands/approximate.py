"""`subsetsum-lth approximate`: build g, solve, certify, write the run folder."""
from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

from subsetsum_lth.approximate import ApproximateConfig, approximate
from subsetsum_lth import manifest
from subsetsum_lth import runfolder as rf
from subsetsum_lth.assumptions import header_line, mismatch_warning, read_from, target_assumptions
from subsetsum_lth.certify import ball_set
from subsetsum_lth.certify_box import box_set
from subsetsum_lth.commands._common import bound_text, print_json, scale_text
from subsetsum_lth.errors import IncompleteRun, RunFolderError, UserError
from subsetsum_lth.executors import make_pool
from subsetsum_lth.default_target import default_target
from subsetsum_lth.runfolder import read_report
from subsetsum_lth.runcheck import choose_dataset, read_json
from subsetsum_lth.preprocess import accuracy_warning, declared_accuracy, measure_accuracy
from subsetsum_lth.layerkinds import describe_arch
from subsetsum_lth.safetext import escape
from subsetsum_lth.commands._progress import is_terminal, progress_factory, say
from subsetsum_lth.data.mnist import DATASETS, evaluation_inputs
from subsetsum_lth.request import ApproximateRequest
from subsetsum_lth.solve import in_process

HELP = "prune a random network to approximate a target MLP, with a certified error"
DESCRIPTION = (
    "Allocate the random network of Pensia et al.'s Theorem 1 for a target ReLU MLP, solve one "
    "subset-sum problem per weight (and sign half, and bias), and write the masks, the random "
    "network, a certificate sup_{|x|<=r} |f(x) - g(x)| <= bound, and plots into --out. "
    "Without --target: the default MNIST 784-500-10 target (trained once per seed and cached in the "
    "user cache) when MNIST is found or can be downloaded, else (or with --synthetic) a seeded "
    "synthetic 784-300-10 target with biases and spectral norms <= 1, inside Theorem 1's class; "
    "the command says which.")



#: the request `run` takes (subsetsum_lth.request: the options, and the one reader of the flags)
REQUEST = ApproximateRequest


def add_arguments(p) -> None:
    # the options are generated from the config dataclasses' fields: each default is written once
    # (tests/test_cli_config.py checks it)
    ApproximateRequest.add_arguments(p)


def run(req: ApproximateRequest) -> int:


    req = _resume_dataset(req)
    progress = progress_factory(not req.no_progress, unit="inst")
    training_seconds = None
    target_info: dict = {}
    if req.target is None:
        _check_out_early(req)   # before minutes of training the default target, not after
        bars = not req.no_progress and is_terminal()
        dt = default_target(seed=req.config.construction.seed, data_dir=req.data_dir, synthetic=req.synthetic,
                            progress=bars, announce=say,
                            heartbeat=say if not req.no_progress and not bars else None)
        training_seconds = dt.training_seconds
        print(dt.description, file=sys.stderr)
        target = dt.target
        if dt.kind == "mnist" and req.data is None:
            req = replace(req, data="mnist", data_dir=dt.data_dir)
    else:
        target = req.load(info=target_info)

    req.check_data()
    eval_data = emp_data = None
    radius = req.input_radius
    box = req.box_for(target)   # --input-domain box: the box, and the construction's domain
    header = header_line(target_info, req.arch) if req.target is not None else None
    if header:      # a state_dict does not record the computation: say what was assumed
        print(escape(header), file=sys.stderr)
    domain = (box.domain if box is not None else req.input_domain) or target.metadata.get("input_domain")
    if req.data is not None:
        eval_data, emp_data, radius = evaluation_inputs(target.input_dim, req.data_dir, req.config.construction.seed,
                                                        radius=radius, dataset=req.data)
        domain = domain or "nonnegative"
        _check_accuracy(target, eval_data, req.expected_accuracy, target_assumptions(target_info, req.arch))
    if radius is None:   # the ball around the box, else the config default
        radius = (ApproximateConfig.input_radius if box is None
                  else max(abs(box.lo), abs(box.hi)) * target.input_dim ** 0.5)
    domain = domain or "signed"

    extra = {"data": req.data}    # null: made without data (a synthetic target, or no --data)
    # where the certificate's input radius came from (certify checks a data radius against the data)
    extra["input_radius_source"] = ("option" if req.input_radius is not None else "data" if req.data is not None
                                    else "box" if box is not None else "default")
    if req.target is not None:     # how the target was read, and what that assumed (state_dicts)
        extra.update({"target_read_from": read_from(target_info),
                      "target_assumptions": target_assumptions(target_info, req.arch)})
    if training_seconds is not None:
        extra.update({"target_training_seconds": training_seconds,
                      "target_training_note": "the default target was trained by this command before the "
                                              "approximation; wall_seconds does not include it"})
    config = req.config_for(domain, radius, extra, box)
    status = 0
    # one pool (process pool, Dask cluster or connection) for the whole run, started lazily on the
    # first batch; --workers 1 without --batch-timeout solves in this process
    sc = config.solve
    pool = None if in_process(sc) else make_pool(sc.executor, sc.workers, sc.scheduler)
    try:
        report = approximate(target, config, req.out, progress=progress, eval_data=eval_data,
                             empirical_data=emp_data, executor=pool)
    except IncompleteRun as exc:
        report = read_report(req.out)
        _summary(report, req.out)
        raise exc
    except BaseException:
        if pool is not None:    # interrupted (Ctrl-C, SIGTERM) or failed: stop the workers now
            pool, doomed = None, pool
            doomed.abort()
        raise
    finally:
        if pool is not None:
            pool.close()
    if getattr(report, "already_complete", False):
        print(f"--resume: the run in {req.out} is already complete with these settings; nothing to do",
              file=sys.stderr)
    if req.json:
        print_json(report)
    else:
        _summary(report, req.out)
    return status


def _resume_dataset(req: ApproximateRequest) -> ApproximateRequest:
    """--resume continues on the data set the run recorded (run_config.json or report.json
    'data'): ``req`` with --data defaulted to it; a --data that contradicts it is refused (exit 2)."""
    if not req.config.resume:
        return req
    out = Path(req.out)
    for name in ("run_config.json", rf.REPORT):
        path = out / name
        if not path.is_file():
            continue
        record = read_json(path, fix="use --overwrite to start the run again, or another --out")
        if "data" not in record:
            continue
        recorded = record["data"]
        if recorded is None:
            if req.data is not None:
                raise UserError(f"--data {req.data} contradicts the run in {out}, which was made without data "
                                f"(recorded in {name}); drop --data to resume it, or use another --out")
            return req
        if recorded not in DATASETS:
            raise UserError(f"{path}: 'data' is {recorded!r}, not one of {', '.join(DATASETS)}; use "
                            "--overwrite to start the run again, or another --out")
        return replace(req, data=choose_dataset(req.data, recorded, name, f"the run in {out}", "use another --out"))
    return req


def _check_out_early(req: ApproximateRequest) -> None:
    """Refuse --out as approximate() will (read-only): a folder that is not the tool's, or that
    already holds a run without --resume/--overwrite."""
    out = Path(req.out)
    manifest.check_folder(out, "approximate")
    existing = [p for p in (out / rf.REPORT, out / rf.MASKS, out / "partial") if p.exists()]
    if existing and not (req.config.resume or req.config.overwrite):
        raise RunFolderError(f"{out} already holds a run ({', '.join(p.name for p in existing)}); "
                             "use --resume to continue it, --overwrite to replace it, or another --out")


def _check_accuracy(target, eval_data, expected, assumed=()) -> None:
    """Warn (before the long run) when the target scores more than ACCURACY_GAP below its declared
    accuracy; for a state_dict the warning names every assumption that could explain it."""
    declared = declared_accuracy(target.metadata or {}, expected)
    if declared is None:
        return
    measured = measure_accuracy(target, eval_data["x"], eval_data["y"])
    msg = accuracy_warning(measured, declared, target)
    if msg and assumed:
        msg = mismatch_warning(measured, declared, list(assumed))
    if msg:
        print(f"warning: {msg}", file=sys.stderr)


def _summary(r: dict, out: Path) -> None:
    sizes = "-".join(map(str, r["target_sizes"]))
    if r.get("target_arch"):
        sizes = f"{describe_arch(r['target_arch'])} on {'×'.join(map(str, r['input_shape']))} inputs"
    print(f"target {sizes} ({r['target_parameters']:,} parameters), input ball r={r['input_radius']:.4g} "
          f"({r['input_domain']})")
    pp = r.get("preprocessing") or {}
    if pp.get("folded"):
        print(f"input preprocessing {pp['declared']} folded into layer 1: the target takes pixels/255 in [0, 1]")
    elif pp.get("declared"):
        print(f"input preprocessing {pp['declared']} applied in front of f and ĝ (both take pixels/255); "
              f"the certificate covers its image")
    mode = f"ε={r['eps']:g} (network)" if r["mode"] == "network" else f"τ={r['weight_eps']:g} per weight"
    print(f"solver {r['solver']} / objective {r['objective']}, {mode}, seed {r['seed']}")
    engines = (r.get("engines") or {}).get("total")
    if engines:
        print("engines: " + " · ".join(f"{name} {n:,}" for name, n in
                                       sorted(engines.items(), key=lambda kv: (-kv[1], kv[0]))))
    for L in r["layers"]:
        grown = f", {L['grown_blocks']} blocks grown to ≤{L['block_width_final_max']}" if L.get("grown_blocks") else ""
        if L.get("beyond_exact_count"):
            grown += f"; {L['beyond_exact_count']:,} instances beyond exact search"
        print(f"  layer {L['layer'] + 1}: m={L['block_width']} (formula {L['formula_block_width']}{grown}), "
              f"{L['instances']:,} instances, max |w-ŵ| {L['max_weight_error']:.3g}, "
              f"kept {L['kept_parameters']:,} ({L['kept_coefficients_per_weight']:.2f} coeff/weight), "
              f"{L['seconds']:.1f}s")
    if "target_accuracy" in r:
        print(f"test accuracy: target {100 * r['target_accuracy']:.2f}%, pruned {100 * r['pruned_accuracy']:.2f}%, "
              f"agreement {100 * r['prediction_agreement']:.2f}%")
    where = r.get("certified_set") or ball_set(r["input_radius"], r["input_domain"])
    print(f"certified bound: {bound_text(r['certified_bound'], where)}   empirical (lower) bound: "
          f"{r['empirical_bound']:.4g} (the largest error found on that set)")
    scale = scale_text(r.get("bound_scale"))
    print(f"  {scale}" if scale else "  (no test data: give --data to see the bound beside ‖f(x)‖₂ and the class margins)")
    bc = r.get("box_certificate")
    if bc:
        dim = math.prod(r["input_shape"]) if r.get("input_shape") else r["target_sizes"][0]
        box_where = bc.get("set") or box_set(bc["box"][0], bc["box"][1], dim)
        zono = "" if bc.get("bound_zonotope") is None else f", zonotope {bc['bound_zonotope']:.4g}"
        print(f"box [{bc['box'][0]:g}, {bc['box'][1]:g}]: certified {bound_text(bc['bound'], box_where)}   box attack "
              f"{bc['empirical_bound']:.4g}   ratio {bc['ratio']:.3g}   ({bc['seconds']:.1f} s; l2 of the per-output "
              f"intervals {bc['bound_intervals']:.4g}{zono})")
        bs = r.get("bound_scale") or {}
        if "box_certified_same_class_fraction" in bs:
            print(f"  the box bound guarantees f's class on {100 * bs['box_certified_same_class_fraction']:.2f}% of the "
                  f"{bs['examples']:,} test images ({bs['box_examples_in_certified_set']:,} lie in the box)")
        for rho, frac in (bc.get("local_agreement") or {}).items():
            how = bc.get("local_agreement_bounds")
            print(f"  certified agreement at l-inf radius {rho}: {100 * frac:.2f}% of "
                  f"{bc['local_agreement_examples']:,} test images" + (f" ({how})" if how else ""))
    print(f"kept parameters: {r['kept_parameters']:,} of {r['total_parameters']:,} in g "
          f"({r['prepruned_parameters']:,} after block pre-pruning)")
    print(f"infeasible/failed instances: {r['infeasible_count']}")
    if r.get("beyond_exact_count"):
        print(f"instances beyond exact search (n > 40 live coefficients, solved by fix-and-search): "
              f"{r['beyond_exact_count']:,}")
    if r.get("target_training_seconds") is not None:
        t = r["target_training_seconds"]
        print(f"wall time: {t + r['wall_seconds']:.1f} s ({t:.1f} s training the default target + "
              f"{r['wall_seconds']:.1f} s approximation)   run folder: {out}")
    else:
        print(f"wall time: {r['wall_seconds']:.1f} s (approximation)   run folder: {out}")
