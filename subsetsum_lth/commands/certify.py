"""`subsetsum-lth certify RUN`: recompute the certificate from a run folder's files alone."""
from __future__ import annotations

from pathlib import Path

from subsetsum_lth.commands._common import bound_text, non_negative_float, positive_float, print_json, scale_text

HELP = "recompute the certified and empirical bounds of a run folder from its files"


def add_arguments(p) -> None:
    p.add_argument("run", type=Path, help="run folder written by 'approximate'")
    p.add_argument("--input-radius", type=positive_float, default=None,
                   help="radius r of the input ball (default: the run's)")
    p.add_argument("--input-domain", choices=("nonnegative", "signed", "box"), default=None,
                   help="input domain of the first layer (default: the run's); box: certify the box "
                        "--input-box too (a run made with --input-domain box is always certified on its box)")
    p.add_argument("--input-box", default=None, metavar="LO,HI",
                   help="bounds of every input coordinate for --input-domain box (default: the run's box, else 0,1)")
    p.add_argument("--bab-seconds", type=non_negative_float, default=0.0, metavar="S",
                   help="box certificate: branch and bound on unstable units for S seconds (default 0: none)")
    p.add_argument("--samples", type=int, default=512, help="random points for the empirical bound")
    p.add_argument("--steps", type=int, default=100, help="gradient-ascent steps for the empirical bound")
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
                      samples=args.samples, steps=args.steps, box=box,
                      progress=progress_factory(not args.json))
    if args.json:
        print_json(res)
        return 0
    print(f"run:             {args.run}")
    print(f"input ball:      radius {res['input_radius']:g}, domain {res['input_domain']}")
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
        print(f"  l2 of the per-output intervals {bc['bound_intervals']:.6g}, zonotope {bc['bound_zonotope']:.6g}")
        bw = bc.get("witness")
        if bw is not None and "error" in bw:
            print(f"stored box witness: error {bw['error']:.6g} at the x* in {bw['file']}, <= certified")
        if bc.get("matches_report") is False:
            print("note: the box bound differs from the one stored in report.json")
    if res.get("matches_report") is False:
        print("note: differs from the bound stored in report.json")
    return 0
