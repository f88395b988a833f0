"""`subsetsum-lth certify RUN`: recompute the certificate from a run folder's files alone."""
from __future__ import annotations

import sys
from pathlib import Path

from subsetsum_lth.certify_run import certify_run
from subsetsum_lth.commands._common import bound_text, print_json, scale_text
from subsetsum_lth.commands._progress import progress_factory
from subsetsum_lth.errors import REPORT_MISMATCH_EXIT
from subsetsum_lth.report_check import mismatch_lines
from subsetsum_lth.request import CertifyRequest

HELP = "recompute the certified and empirical bounds of a run folder from its files"
DESCRIPTION = (
    "Recompute a run folder's certificate and every figure its report.json states that the files "
    "give (the certified bound, per-layer weight errors and kept counts, eps/weight_eps against "
    "the settings in run_config.json, the target's sha256, accuracies on the recorded data set). "
    "Exit 0 when all agree; exit 5 listing each field whose stored value differs "
    "(\"FIELD: stored X, the files give Y\"); exit 2 when the folder cannot be read.")


#: the request `run` takes (subsetsum_lth.request)
REQUEST = CertifyRequest


def add_arguments(p) -> None:
    CertifyRequest.add_arguments(p)


def run(req: CertifyRequest) -> int:
    res = certify_run(req.run, input_radius=req.input_radius,
                      input_domain=None if req.input_domain == "box" else req.input_domain,
                      samples=req.samples, steps=req.steps, box=req.box, data_dir=req.data_dir,
                      progress=progress_factory(not req.json))
    check = res["report_check"]
    status = REPORT_MISMATCH_EXIT if check["mismatches"] else 0
    if req.json:
        print_json(res)
        _print_mismatches(req.run, check)
        return status
    print(f"run:             {req.run}")
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
    _print_mismatches(req.run, check)
    return status


def _print_mismatches(run: Path, check: dict) -> None:
    if not check["mismatches"]:
        return
    n = len(check["mismatches"])
    print(f"error: {run}/report.json states {n} figure{'s' if n > 1 else ''} that the run's files do not "
          "give (edited, or not this run's report):", file=sys.stderr)
    for line in mismatch_lines(check["mismatches"]):
        print(f"  {line}", file=sys.stderr)
