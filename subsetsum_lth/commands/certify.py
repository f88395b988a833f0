"""`subsetsum-lth certify RUN`: recompute the certificate from a run folder's files alone."""
from __future__ import annotations

from pathlib import Path

from subsetsum_lth.commands._common import positive_float, print_json

HELP = "recompute the certified and empirical bounds of a run folder from its files"


def add_arguments(p) -> None:
    p.add_argument("run", type=Path, help="run folder written by 'approximate'")
    p.add_argument("--input-radius", type=positive_float, default=None,
                   help="radius r of the input ball (default: the run's)")
    p.add_argument("--input-domain", choices=("nonnegative", "signed"), default=None,
                   help="input domain of the first layer (default: the run's)")
    p.add_argument("--samples", type=int, default=512, help="random points for the empirical bound")
    p.add_argument("--steps", type=int, default=100, help="gradient-ascent steps for the empirical bound")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> int:
    from subsetsum_lth.certify_run import certify_run
    res = certify_run(args.run, input_radius=args.input_radius, input_domain=args.input_domain,
                      samples=args.samples, steps=args.steps)
    if args.json:
        print_json(res)
        return 0
    print(f"run:             {args.run}")
    print(f"input ball:      radius {res['input_radius']:g}, domain {res['input_domain']}")
    print(f"certified bound: {res['certified_bound']:.6g}")
    print(f"empirical bound: {res['empirical_bound']:.6g}  (lower bound, {res['empirical']['source']})")
    w = res.get("witness")
    if w is not None:
        if "error" in w:
            print(f"stored witness:  error {w['error']:.6g} at the x* stored in {w['file']} "
                  f"(report.json: {w['recorded_error']:.6g}{'' if w['matches_report'] else ', DIFFERS'}), "
                  "<= certified")
        else:
            print(f"stored witness:  x* in {w['file']} lies outside this input ball; not evaluated")
    if res.get("matches_report") is False:
        print("note: differs from the bound stored in report.json")
    return 0
