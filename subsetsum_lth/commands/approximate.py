"""`subsetsum-lth approximate`: build g, solve, certify, write the run folder."""
from __future__ import annotations

import math

import sys
from pathlib import Path

from subsetsum_lth.commands._common import bound_text, integer, print_json, scale_text
from subsetsum_lth.commands._progress import progress_factory
from subsetsum_lth.data.mnist import DATASETS
from subsetsum_lth.commands._target_args import (add_layers_argument, add_preprocessing_arguments,
                                                 preprocessing_from_args, target_flags_given)

HELP = "prune a random network to approximate a target MLP, with a certified error"
DESCRIPTION = (
    "Allocate the random network of Pensia et al.'s Theorem 1 for a target ReLU MLP, solve one "
    "subset-sum problem per weight (and sign half, and bias), and write the masks, the random "
    "network, a certificate sup_{|x|<=r} |f(x) - g(x)| <= bound, and plots into --out. "
    "Without --target: the default MNIST 784-500-10 target (trained once per seed and cached in the "
    "user cache) when MNIST is found or can be downloaded, else (or with --synthetic) a seeded "
    "synthetic 784-300-10 target with biases and spectral norms <= 1, inside Theorem 1's class; "
    "the command says which.")



def add_arguments(p) -> None:
    # every default of a flag that maps onto a config field is that field's default (written once,
    # in the dataclass; tests/test_cli_config.py checks it)
    from subsetsum_lth.approximate import ApproximateConfig
    from subsetsum_lth.construction import ConstructionConfig

    p.add_argument("--target", type=Path, default=None,
                   help="target checkpoint (a state_dict in .pt/.pth/.ckpt/.bin/.tar or .safetensors, bare or in "
                        "a checkpoint dict; see 'subsetsum-lth inspect FILE') or a train-target folder; "
                        "default: a 784-500-10 MNIST target trained once and cached when MNIST is "
                        "found or can be downloaded (then evaluated on MNIST), else a seeded "
                        "synthetic 784-300-10 target inside Theorem 1's class")
    add_layers_argument(p)
    from subsetsum_lth.commands._target_args import add_arch_argument
    add_arch_argument(p)
    add_preprocessing_arguments(p)
    p.add_argument("--synthetic", action="store_true",
                   help="without --target: use the seeded synthetic 784-300-10 target even when MNIST is available")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--eps", type=float, default=ApproximateConfig.eps,
                   help="network-level ε: pick the per-weight tolerance so that the certified bound is <= ε")
    g.add_argument("--weight-eps", type=float, default=ApproximateConfig.weight_eps,
                   help="per-weight tolerance τ (Pensia et al. Experiment 1 mode); default "
                        f"{ConstructionConfig.eps:g} if --eps is not given")
    _add_certificate_arguments(p)
    p.add_argument("--data", choices=DATASETS, default=None,
                   help="evaluate target and pruned network on this data set's test images")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the data set files")
    p.add_argument("--seed", type=integer, default=ConstructionConfig.seed, help="seed of the random network")
    _add_solver_arguments(p)
    _add_width_arguments(p)
    p.add_argument("--allow-infeasible", action="store_true",
                   help="exit 0 even if some instances are not within τ (closest subsets are kept)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--samples", type=integer, default=ApproximateConfig.empirical_samples,
                   help="random points for the empirical bound")
    p.add_argument("--steps", type=integer, default=ApproximateConfig.ascent_steps,
                   help="gradient-ascent steps for the empirical bound (0: evaluate the points only)")
    p.add_argument("--store", choices=("auto", "dense", "compact"), default=ApproximateConfig.store,
                   help="how the run folder stores g: dense (random_net.safetensors, masks.safetensors), "
                        "compact (the block support, its masks and the generator spec; 'export-dense RUN' "
                        "writes the dense files), auto (dense up to 2e8 entries of g; default)")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress output (bars on a terminal, else a line every ~10 s)")
    p.add_argument("--json", action="store_true", help="print report.json to stdout")


def _add_certificate_arguments(p) -> None:
    """The input set of the certificate: the ball or the box."""
    from subsetsum_lth.certify_box import BoxConfig

    p.add_argument("--input-radius", type=float, default=None,
                   help="radius r of the input ball for the certificate (default: 1, or from --data)")
    p.add_argument("--input-domain", choices=("nonnegative", "signed", "box"), default=None,
                   help="sign of the first layer's inputs (default: from the target's metadata or --data, "
                        "else signed); box: every input coordinate lies in --input-box, and a box "
                        "certificate (differential alpha-CROWN) is added; --eps is then checked on it")
    p.add_argument("--input-box", default=None, metavar="LO,HI",
                   help="bounds of every input coordinate for --input-domain box (default with --data mnist: 0,1); "
                        "a negative LO is written --input-box=-1,1")
    p.add_argument("--local-radius", type=float, action="append", default=None, metavar="RHO",
                   help="with --input-domain box and --data: certified agreement of f and the pruned network "
                        "on l-inf balls of radius RHO around the test images (repeatable; default 0.01 and 0.05)")
    p.add_argument("--bab-seconds", type=float, default=BoxConfig.bab_seconds, metavar="S",
                   help="with --input-domain box: refine the box certificate by branch and bound on unstable "
                        "units for S seconds (default 0: none)")


def _add_solver_arguments(p) -> None:
    """The solver, its workers and limits, and where its batches run."""
    from subsetsum_lth.approximate import ApproximateConfig
    from subsetsum_lth.limits import DEFAULT_TIME_LIMIT
    from subsetsum_lth.solve import SolveConfig

    p.add_argument("--solver", default=SolveConfig.solver, help="solver backend (see 'subsetsum-lth solvers')")
    p.add_argument("--objective", choices=("error", "feasible", "cardinality"), default=SolveConfig.objective,
                   help="error: minimise |w - ŵ| (the paper's MIP); cardinality: fewest kept "
                        "coefficients within τ; feasible: any subset within τ")
    p.add_argument("--workers", type=integer, default=SolveConfig.workers,
                   help="solver processes (default: all cores)")
    p.add_argument("--batch-size", type=integer, default=SolveConfig.batch_size,
                   help="instances per solver batch (default: per backend, e.g. 1024 for ortools, 4096 for mitm)")
    p.add_argument("--time-limit", type=float, default=SolveConfig.time_limit,
                   help="per-instance solver time limit (s) of the backends that take one, and of the "
                        f"fallback for instances beyond exact search (default: {DEFAULT_TIME_LIMIT:g})")
    p.add_argument("--max-hours", type=float, default=ApproximateConfig.max_hours,
                   help="refuse (before any work) a run whose estimated solve time, ~2^(n/2) per instance "
                        "of n live coefficients, is longer than this; block growth (--width auto, "
                        "adaptive) stops before its re-solves pass this many hours of estimated "
                        "single-core time")
    x = p.add_argument_group("where the solver batches run")
    x.add_argument("--executor", choices=("process", "dask", "dask-local"), default=SolveConfig.executor,
                   help="process: a local process pool; dask: a Dask distributed cluster (--scheduler); "
                        "dask-local: start a Dask LocalCluster of --workers processes "
                        "(dask needs: pip install 'subsetsum-lth[dask]')")
    x.add_argument("--scheduler", default=SolveConfig.scheduler, metavar="ADDRESS",
                   help="Dask scheduler address for --executor dask, e.g. tcp://10.0.0.1:8786")
    x.add_argument("--batch-timeout", type=float, default=SolveConfig.batch_timeout, metavar="SECONDS",
                   help="a batch not done in this time is cancelled (its worker replaced) and retried, "
                        "then its instances are reported as failed")
    x.add_argument("--retries", type=integer, default=SolveConfig.retries,
                   help="extra attempts for a batch whose worker died or that timed out")
    x.add_argument("--no-fallback", dest="fallback", action="store_false", default=SolveConfig.fallback,
                   help="do not re-solve TIMEOUT/ERROR instances with another exact backend")


def _add_width_arguments(p) -> None:
    """The width of g's blocks and how they grow; g's weight distribution."""
    from subsetsum_lth.construction import ConstructionConfig

    p.add_argument("--block-width", type=integer, default=ConstructionConfig.block_width,
                   help="units per block m (overrides the Theorem 1 formula)")
    p.add_argument("--width", choices=("formula", "auto", "adaptive"), default=ConstructionConfig.width,
                   help="adaptive (default): blocks start at ceil(2 log2(max(1, max|w|)/τ) + 6) units "
                        "(from τ and the weights, not the layer size; or --block-width) and blocks with an "
                        "instance outside τ grow by fresh seeded units until all are within τ: the "
                        "smallest g and the fastest run, at a looser certified bound; auto: the same "
                        "growth from the Theorem 1 formula's width (or --block-width); formula: every "
                        "block has the formula's (or --block-width) units, no growth")
    p.add_argument("--grow", type=integer, default=ConstructionConfig.grow,
                   help="units appended to a block per growth step (default: max(4, m/4))")
    p.add_argument("--max-growth", type=integer, default=ConstructionConfig.max_growth,
                   help="growth steps per block at most (0: no growth, as --width formula); default: no "
                        "step cap, a block grows while it has an instance outside τ, its live units stay "
                        "within exact search's reach and its estimated re-solve time within --max-hours")
    p.add_argument("--C", dest="C", type=float, default=ConstructionConfig.C,
                   help="constant C in m = ceil(C log2(p q l / min(ε, δ))), the starting width of "
                        "--width auto and formula")
    p.add_argument("--delta", type=float, default=ConstructionConfig.delta,
                   help="δ in the width formula of --width auto and formula (default: ε)")
    p.add_argument("--distribution", choices=("uniform", "normal"), default=ConstructionConfig.distribution,
                   help="distribution of g's weights (uniform = U[-1, 1])")


def run(args) -> int:

    from subsetsum_lth.approximate import ApproximateConfig, approximate
    from subsetsum_lth.construction import ConstructionConfig
    from subsetsum_lth.errors import IncompleteRun
    from subsetsum_lth.target import load_target

    if args.target is None and target_flags_given(args):
        from subsetsum_lth.errors import UserError
        raise UserError(f"{', '.join(target_flags_given(args))} describe a --target file; pass --target "
                        "or drop them")
    # every number is checked by the config dataclasses, before any work (training the default
    # target takes minutes); input domain and radius are filled in later, from the target and --data
    early_domain = args.input_domain if args.input_domain in ("nonnegative", "signed") else None
    _config(args, early_domain or ConstructionConfig.input_domain,
            ApproximateConfig.input_radius if args.input_radius is None else args.input_radius)
    from subsetsum_lth.certify_box import BoxConfig   # --bab-seconds, --local-radius: checked by BoxConfig
    BoxConfig(local_radii=tuple(args.local_radius or ()), bab_seconds=args.bab_seconds)
    from subsetsum_lth.executors import check_executor
    check_executor(args.executor, args.scheduler)
    _resume_dataset(args)
    progress = progress_factory(not args.no_progress, unit="inst")
    training_seconds = None
    if args.target is None:
        _check_out_early(args)   # before minutes of training the default target, not after
        from subsetsum_lth.commands._progress import is_terminal, say
        from subsetsum_lth.default_target import default_target
        bars = not args.no_progress and is_terminal()
        dt = default_target(seed=args.seed, data_dir=args.data_dir, synthetic=args.synthetic,
                            progress=bars, announce=say,
                            heartbeat=say if not args.no_progress and not bars else None)
        training_seconds = dt.training_seconds
        print(dt.description, file=sys.stderr)
        target = dt.target
        if dt.kind == "mnist" and args.data is None:
            args.data, args.data_dir = "mnist", dt.data_dir
    else:
        if args.synthetic:
            from subsetsum_lth.errors import UserError
            raise UserError("--synthetic and --target exclude each other: drop one of them")
        target = load_target(args.target, layers=args.layers, preprocessing=preprocessing_from_args(args),
                             arch=args.arch)

    eval_data = emp_data = None
    radius = args.input_radius
    box = _box_args(args, target)   # --input-domain box: the box, and the construction's domain
    domain = (box.domain if box is not None else args.input_domain) or target.metadata.get("input_domain")
    if args.data is not None:
        from subsetsum_lth.data.mnist import evaluation_inputs
        eval_data, emp_data, radius = evaluation_inputs(target.input_dim, args.data_dir, args.seed, radius=radius,
                                                        dataset=args.data)
        domain = domain or "nonnegative"
        _check_accuracy(target, eval_data, getattr(args, "expected_accuracy", None))
    from subsetsum_lth.commands._target_args import check_expected_accuracy
    check_expected_accuracy(args)
    if radius is None:   # the ball around the box, else the config default
        radius = (ApproximateConfig.input_radius if box is None
                  else max(abs(box.lo), abs(box.hi)) * target.input_dim ** 0.5)
    domain = domain or "signed"

    extra = {"data": args.data}    # null: made without data (a synthetic target, or no --data)
    # where the certificate's input radius came from (certify checks a data radius against the data)
    extra["input_radius_source"] = ("option" if args.input_radius is not None else "data" if args.data is not None
                                    else "box" if box is not None else "default")
    if training_seconds is not None:
        extra.update({"target_training_seconds": training_seconds,
                      "target_training_note": "the default target was trained by this command before the "
                                              "approximation; wall_seconds does not include it"})
    config = _config(args, domain, radius, extra, box)
    status = 0
    from subsetsum_lth.executors import make_pool
    from subsetsum_lth.solve import in_process
    # one pool (process pool, Dask cluster or connection) for the whole run, started lazily on the
    # first batch; --workers 1 without --batch-timeout solves in this process
    pool = None if in_process(config.solve) else make_pool(args.executor, args.workers, args.scheduler)
    try:
        report = approximate(target, config, args.out, progress=progress, eval_data=eval_data,
                             empirical_data=emp_data, executor=pool)
    except IncompleteRun as exc:
        from subsetsum_lth.runfolder import read_report
        report = read_report(args.out)
        _summary(report, args.out)
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
        print(f"--resume: the run in {args.out} is already complete with these settings; nothing to do",
              file=sys.stderr)
    if args.json:
        print_json(report)
    else:
        _summary(report, args.out)
    return status


def _config(args, domain: str, radius: float, report_extra: dict | None = None, box=None):
    """The ApproximateConfig the flags describe (its dataclasses check every number)."""
    from subsetsum_lth.approximate import ApproximateConfig
    from subsetsum_lth.construction import ConstructionConfig
    from subsetsum_lth.solve import SolveConfig
    return ApproximateConfig(
        construction=ConstructionConfig(input_domain=domain, seed=args.seed,
                                        eps=args.eps or args.weight_eps or ConstructionConfig.eps,
                                        delta=args.delta, C=args.C,
                                        block_width=args.block_width, distribution=args.distribution,
                                        width=args.width, grow=args.grow, max_growth=args.max_growth),
        solve=SolveConfig(solver=args.solver, objective=args.objective, workers=args.workers,
                          batch_size=args.batch_size, time_limit=args.time_limit,
                          executor=args.executor, scheduler=args.scheduler,
                          batch_timeout=args.batch_timeout, retries=args.retries, fallback=args.fallback),
        eps=args.eps, weight_eps=args.weight_eps, input_radius=radius,
        allow_infeasible=args.allow_infeasible, resume=args.resume, overwrite=args.overwrite,
        empirical_samples=args.samples, ascent_steps=args.steps, plots=not args.no_plots,
        max_hours=args.max_hours, store=args.store, report_extra=report_extra or {}, box=box)


def _box_args(args, target):
    """--input-domain box / --input-box / --local-radius -> a BoxConfig (or None), one clear error each."""
    from subsetsum_lth.errors import UserError
    if args.input_domain != "box":
        if args.input_box is not None or args.local_radius or args.bab_seconds:
            raise UserError("--input-box, --local-radius and --bab-seconds need --input-domain box")
        return None
    from subsetsum_lth.certify_box import DEFAULT_LOCAL_RADII, BoxConfig, parse_box
    if args.input_box is None and args.data is None:
        raise UserError("--input-domain box needs --input-box LO,HI (e.g. --input-box 0,1), or --data mnist "
                        "whose pixels lie in [0, 1]")
    lo, hi = parse_box(args.input_box) if args.input_box is not None else (0.0, 1.0)
    radii = tuple(args.local_radius) if args.local_radius else (DEFAULT_LOCAL_RADII if args.data else ())
    if radii and args.data is None:
        raise UserError("--local-radius needs test images: add --data mnist")
    return BoxConfig(lo, hi, local_radii=radii, bab_seconds=args.bab_seconds)


def _resume_dataset(args) -> None:
    """--resume continues on the data set the run recorded (run_config.json or report.json
    'data'): --data defaults to it, and a --data that contradicts it is refused (exit 2)."""
    if not args.resume:
        return
    from pathlib import Path

    from subsetsum_lth import runfolder as rf
    from subsetsum_lth.errors import UserError
    from subsetsum_lth.runcheck import choose_dataset, read_json
    out = Path(args.out)
    for name in ("run_config.json", rf.REPORT):
        path = out / name
        if not path.is_file():
            continue
        record = read_json(path, fix="use --overwrite to start the run again, or another --out")
        if "data" not in record:
            continue
        recorded = record["data"]
        if recorded is None:
            if args.data is not None:
                raise UserError(f"--data {args.data} contradicts the run in {out}, which was made without data "
                                f"(recorded in {name}); drop --data to resume it, or use another --out")
            return
        if recorded not in DATASETS:
            raise UserError(f"{path}: 'data' is {recorded!r}, not one of {', '.join(DATASETS)}; use "
                            "--overwrite to start the run again, or another --out")
        args.data = choose_dataset(args.data, recorded, name, f"the run in {out}", "use another --out")
        return


def _check_out_early(args) -> None:
    """Refuse --out as approximate() will (read-only): a folder that is not the tool's, or that
    already holds a run without --resume/--overwrite."""
    from pathlib import Path

    from subsetsum_lth import manifest
    from subsetsum_lth import runfolder as rf
    from subsetsum_lth.errors import RunFolderError
    out = Path(args.out)
    manifest.check_folder(out, "approximate")
    existing = [p for p in (out / rf.REPORT, out / rf.MASKS, out / "partial") if p.exists()]
    if existing and not (args.resume or args.overwrite):
        raise RunFolderError(f"{out} already holds a run ({', '.join(p.name for p in existing)}); "
                             "use --resume to continue it, --overwrite to replace it, or another --out")


def _check_accuracy(target, eval_data, expected) -> None:
    """Warn (before the long run) when the target scores more than ACCURACY_GAP below its declared accuracy."""
    from subsetsum_lth.preprocess import accuracy_warning, declared_accuracy, measure_accuracy
    declared = declared_accuracy(target.metadata or {}, expected)
    if declared is None:
        return
    msg = accuracy_warning(measure_accuracy(target, eval_data["x"], eval_data["y"]), declared, target)
    if msg:
        print(f"warning: {msg}", file=sys.stderr)


def _summary(r: dict, out: Path) -> None:
    sizes = "-".join(map(str, r["target_sizes"]))
    if r.get("target_arch"):
        from subsetsum_lth.layerkinds import describe_arch
        sizes = f"{describe_arch(r['target_arch'])} on {'×'.join(map(str, r['input_shape']))} inputs"
    print(f"target {sizes} ({r['target_parameters']:,} parameters), input ball r={r['input_radius']:.4g} "
          f"({r['input_domain']})")
    pp = r.get("preprocessing") or {}
    if pp.get("folded"):
        print(f"input preprocessing {pp['declared']} folded into layer 1: the target takes pixels/255 in [0, 1]")
    mode = f"ε={r['eps']:g} (network)" if r["mode"] == "network" else f"τ={r['weight_eps']:g} per weight"
    print(f"solver {r['solver']} / objective {r['objective']}, {mode}, seed {r['seed']}")
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
    from subsetsum_lth.certify import ball_set
    from subsetsum_lth.certify_box import box_set
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
            print(f"  certified agreement at l-inf radius {rho}: {100 * frac:.2f}% of "
                  f"{bc['local_agreement_examples']} test images")
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
