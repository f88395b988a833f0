"""`subsetsum-lth certify RUN`: recompute the certificate from a run folder's files alone."""
from __future__ import annotations

import sys
from pathlib import Path

from subsetsum_lth.commands._common import bound_text, int_range, positive_float, print_json, scale_text, seconds
from subsetsum_lth.errors import REPORT_MISMATCH_EXIT
from subsetsum_lth.limits import MAX_SAMPLES, MAX_STEPS

HELP = "recompute the certified and empirical bounds of a run folder from its files"
DESCRIPTION = (
    "Recompute a run folder's certificate and every figure its report.json states that the files "
    "give (the certified bound, per-layer weight errors and kept counts, eps/weight_eps against "
    "the settings in run_config.json, the target's sha256, accuracies on the recorded data set). "
    "Exit 0 when all agree; exit 5 listing each field whose stored value differs "
    "(\"FIELD: stored X, the files give Y\"); exit 2 when the folder cannot be read.")


def add_arguments(p) -> None:
    p.add_argument("run", type=Path, help="run folder written by 'approximate'")
    p.add_argument("--input-radius", type=positive_float, default=None,
                   help="radius r of the input ball (default: the run's)")
    p.add_argument("--input-domain", choices=("nonnegative", "signed", "box"), default=None,
                   help="input domain of the first layer (default: the run's); box: certify the box "
                        "--input-box too (a run made with --input-domain box is always certified on its box)")
    p.add_argument("--input-box", default=None, metavar="LO,HI",
                   help="bounds of every input coordinate for --input-domain box (default: the run's box, else 0,1)")
    p.add_argument("--bab-seconds", type=seconds(zero_ok=True), default=0.0, metavar="S",
                   help="box certificate: branch and bound on unstable units for S seconds (default 0: none)")
    p.add_argument("--samples", type=int_range(1, MAX_SAMPLES, "each point is an input vector in float64"),
                   default=512, help="random points for the empirical bound")
    p.add_argument("--steps", type=int_range(0, MAX_STEPS), default=100, help="gradient-ascent steps for the empirical bound")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder with the files of the data set the run records (to recompute its accuracies "
                        "and input radius; default: the usual data locations, never a download)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> int:
    from subsetsum_lth.certify_run import certify_run
    from subsetsum_lth.commands._progress import progress_factory
    box = None
    if args.input_domain == "box" or args.input_box is not None:
        from subsetsum_lth.certify_box import BoxConfig, parse_box
        from subsetsum_lth.errors import UserError
        if args.input_domain != "box":
            raise UserError("--input-box needs --input-domain box")
        box = BoxConfig(*parse_box(args.input_box)) if args.input_box is not None else True
    if args.bab_seconds:          # the run's box (or the asked one), refined by branch and bound
        box = (box, args.bab_seconds)
    res = certify_run(args.run, input_radius=args.input_radius,
                      input_domain=None if args.input_domain == "box" else args.input_domain,
                      samples=args.samples, steps=args.steps, box=box, data_dir=args.data_dir,
                      progress=progress_factory(not args.json))
    check = res["report_check"]
    status = REPORT_MISMATCH_EXIT if check["mismatches"] else 0
    if args.json:
        print_json(res)
        _print_mismatches(args.run, check)
        return status
    print(f"run:             {args.run}")
    print(f"input ball:      radius {res['input_radius']:g}, domain {res['input_domain']}")
    src = res.get("data_source")
    print("data:            " + (f"{res['data']} (recorded in {src})" if res.get("data") else
                                 "none (the run was made without data: a synthetic target, or no --data)"
                                 if src == "none" else "not recorded (a run written before runs recorded it)"))
    print(f"certified bound: {bound_text(res['certified_bound'], res['certified_set'], 6)}")
    print(f"empirical bound: {res['empirical_bound']:.6g}  (lower bound: the largest error found on that set, "
          f"{res['empirical']['source']})")
    scale = scale_text(res.get("bound_scale"), bound_name="the certified bound in report.json",
                       lead="to judge it (from report.json)")
    if scale:
        print(f"  {scale}")
    w = res.get("witness")
    if w is not None:
        if "error" in w:
            print(f"stored witness:  error {w['error']:.6g} at the x* stored in {w['file']} "
                  f"(report.json: {w['recorded_error']:.6g}{'' if w['matches_report'] else ', DIFFERS'}), "
                  "<= certified")
        else:
            print(f"stored witness:  x* in {w['file']} lies outside this input ball; not evaluated")
    bc = res.get("box_certificate")
    if bc is not None:
        print(f"box [{bc['box'][0]:g}, {bc['box'][1]:g}]:  certified {bound_text(bc['bound'], bc['set'], 6)}   box attack "
              f"{bc['empirical_bound']:.6g} ({bc['attack']['source']})   ratio {bc['ratio']:.3g}   "
              f"{bc['seconds']:.1f} s")
        zono = "" if bc.get("bound_zonotope") is None else f", zonotope {bc['bound_zonotope']:.6g}"
        print(f"  l2 of the per-output intervals {bc['bound_intervals']:.6g}{zono}")
        bw = bc.get("witness")
        if bw is not None and "error" in bw:
            print(f"stored box witness: error {bw['error']:.6g} at the x* in {bw['file']}, <= certified")
    for note in check["notes"]:
        print(f"note: {note}")
    _print_mismatches(args.run, check)
    return status


def _print_mismatches(run: Path, check: dict) -> None:
    from subsetsum_lth.report_check import mismatch_lines
    if not check["mismatches"]:
        return
    n = len(check["mismatches"])
    print(f"error: {run}/report.json states {n} figure{'s' if n > 1 else ''} that the run's files do not "
          "give (edited, or not this run's report):", file=sys.stderr)
    for line in mismatch_lines(check["mismatches"]):
        print(f"  {line}", file=sys.stderr)
