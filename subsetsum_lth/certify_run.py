"""Recompute a run folder's certificate from random_net, masks and target files."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from subsetsum_lth.certify import ball_set, certified_bound, check_soundness, empirical_bound_fast
from subsetsum_lth.certify_box import BOX_WITNESS, DT, BoxConfig, box_from_report, box_report, box_set
from subsetsum_lth.gstore import run_layer_maps, run_pruned_module
from subsetsum_lth.errors import RunFolderError
from subsetsum_lth.report_check import Audit, audit_report
from subsetsum_lth.progress import phase
from subsetsum_lth.runcheck import MAX_INPUT_RADIUS, RECREATE, WITNESS, Run, read_run
from subsetsum_lth.runfolder import check_regular, load_tensors


def certify_run(path, input_radius=None, input_domain=None, samples=512, steps=100, box=None,
                data_dir=None, progress=None) -> dict:
    """``box``: a certify_box.BoxConfig to certify the box domain too (default: the run's box, if any).
    The result's ``report_check`` lists every figure of report.json that the files give otherwise
    (:mod:`subsetsum_lth.report_check`; ``data_dir``: the recorded data set's files).
    ``progress``: the stages are announced and shown (:mod:`subsetsum_lth.progress`)."""
    path = Path(path)
    run = read_run(path, need_target=True)     # checked first: bad input gets one line alone
    box_from_report(run.report, f"{path}/report.json")
    if not run.all_relu:
        raise RunFolderError(f"{path}: report.json 'relu_after' drops some ReLUs (an edge-popup --no-inner-relu "
                             "run); the certificate is for the construction's ReLU network: certify a run "
                             "with every ReLU")
    target = run.target
    if run.n_linear != 2 * target.depth:
        raise RunFolderError(f"{path}: {run.n_linear} Linear layers, but the construction for the depth-"
                             f"{target.depth} target has {2 * target.depth}; {RECREATE}")
    r = input_radius if input_radius is not None else run.input_radius
    dom = input_domain or run.input_domain
    if r is None or dom is None:
        raise RunFolderError(f"{path}/report.json lacks input_radius/input_domain; pass --input-radius and --input-domain")
    r = float(r)
    if not (math.isfinite(r) and 0 < r <= MAX_INPUT_RADIUS):
        raise RunFolderError(f"--input-radius must be a positive number <= {MAX_INPUT_RADIUS:g}, got {r:g}")
    where = ball_set(r, dom)
    maps = run_layer_maps(run)
    stored = read_witness(run)      # checked before any work is announced: bad input gets one line alone
    with phase(progress, "certified bound", f"bounding sup over {where} of ‖f(x) − ĝ(x)‖₂ from the files "
                                            "(layer by layer)", total=target.depth, unit="layer") as bar:
        cert = certified_bound(target, maps, r, dom, bar=bar)
    if not math.isfinite(cert.bound):
        raise RunFolderError(f"the certified bound overflows at input radius {r:g} ({path}); use a smaller "
                             "--input-radius")
    with phase(progress, "empirical bound", f"searching {where} for a large ‖f(x) − ĝ(x)‖₂ ({samples} random "
                                            f"points, {steps} ascent steps)", total=steps, unit="step") as bar:
        g64 = run_pruned_module(run, torch.float64)
        emp = empirical_bound_fast(target, maps, g64, r, dom, samples=samples, steps=steps,
                                   seed=run.seed or 0, bar=bar)
    emp.pop("witness", None)
    out = {"run": str(path), **cert.to_dict(), "certified_set": where, "empirical_bound": emp["empirical_bound"],
           "empirical": emp,
           "data": run.data, "data_source": run.data_source}
    scale = run.report.get("bound_scale")
    if isinstance(scale, dict) and same_set(run.report, r, dom):
        out["bound_scale"] = scale     # measured by approximate on the test images, for the same set
    # the stored witness x*: re-evaluated from the files, never believed
    if stored is not None:
        x, recorded = stored
        nonneg = dom == "nonnegative"
        inside = float(np.linalg.norm(x)) <= r * (1 + 1e-12) and (not nonneg or bool((x >= 0).all()))
        w = {"file": WITNESS, "recorded_error": recorded, "inside_ball": inside}
        if inside:
            with torch.no_grad():
                xt = torch.as_tensor(x, dtype=torch.float64)[None, :]
                err = float((target.forward(xt) - g64(xt)).norm())
            w["error"] = err
            w["matches_report"] = math.isclose(err, recorded, rel_tol=1e-9, abs_tol=1e-15)
            if err > out["empirical_bound"]:
                out["empirical_bound"] = err
                emp["source"] = "stored witness"
        out["witness"] = w
    check_soundness(out["empirical_bound"], cert.bound)
    if stored is not None and "error" in out["witness"]:
        out["witness"]["within_certified"] = True
    box_out = certify_run_box(run, target, maps, g64, box, progress)
    if box_out is not None:
        out["box_certificate"] = box_out
    stored_bound = run.report.get("certified_bound")
    own_ball = input_radius is None and input_domain is None
    if stored_bound is not None and own_ball:
        out["matches_report"] = math.isclose(stored_bound, cert.bound, rel_tol=1e-9, abs_tol=1e-15)
    # every figure report.json states that the files give, recomputed (report_check)
    audit = Audit()
    if stored is not None and "matches_report" in out["witness"] and not out["witness"]["matches_report"]:
        audit.differs("witness.error", out["witness"]["recorded_error"], out["witness"]["error"],
                      f"the network at the x* in {WITNESS}")
    if box_out is not None:
        if box_out.get("matches_report") is False:
            audit.differs("box_certificate.bound", run.report["box_certificate"]["bound"], box_out["bound"],
                          "the box certificate recomputed")
        bw = box_out.get("witness") or {}
        if bw.get("matches_report") is False:
            audit.differs("box_certificate.witness.error", bw["recorded_error"], bw["error"],
                          f"the network at the x* in {BOX_WITNESS}")
    eps_bound = cert.bound
    stored_box = box_from_report(run.report, f"{path}/report.json")
    if stored_box is not None and box_out is not None and list(box_out.get("box", [])) == [stored_box.lo, stored_box.hi]:
        eps_bound = box_out["bound"]
    elif stored_box is not None:
        eps_bound = None
    audit_report(run, cert, maps, bound_checked=own_ball, eps_bound=eps_bound, data_dir=data_dir, audit=audit)
    out["report_check"] = audit.to_dict()
    return out


def same_set(report: dict, r: float, dom: str) -> bool:
    """Whether the ball (r, dom) is the one report.json was certified on."""
    rr = report.get("input_radius")
    return isinstance(rr, (int, float)) and math.isclose(float(rr), r, rel_tol=1e-12) \
        and report.get("input_domain") == dom


def certify_run_box(run, target, maps, g: torch.nn.Module, box, progress=None):
    """``certify``'s box half: the box certificate and attack recomputed from the run's files (the
    run's box unless ``box`` is given; True: the run's box, else [0, 1]; a tuple (box, seconds):
    with branch and bound), the stored witness x* re-evaluated on the pruned network, never
    believed. None when the run has no box and none is asked for."""
    import os

    where = f"{run.path}/report.json"
    stored_box = box_from_report(run.report, where)
    bab = 0.0
    if isinstance(box, tuple):             # (box or True, branch-and-bound seconds) from the CLI
        box, bab = box
    asked = box is not None and box is not True
    if box is True:                       # --input-domain box without --input-box
        box = stored_box or BoxConfig(0.0, 1.0)
    box = box or stored_box
    if box is None:
        return None
    if bab:
        box = BoxConfig(box.lo, box.hi, bab_seconds=bab)
    stored = run.report.get("box_certificate") if stored_box is not None else None
    same_box = stored_box is not None and [stored_box.lo, stored_box.hi] == [box.lo, box.hi]
    wpath = run.path / BOX_WITNESS
    x = None
    if same_box and wpath.exists():      # checked before any work is announced: bad input gets one line alone
        p = target.input_dim
        check_regular(wpath)
        if os.stat(wpath).st_size > 8 * p + (1 << 20):
            raise RunFolderError(f"{wpath} must hold one tensor 'x' of shape ({p},); {RECREATE}")
        t = load_tensors(wpath)
        x = t.get("x")
        if set(t) != {"x"} or x is None or tuple(x.shape) != (p,):
            raise RunFolderError(f"{wpath} must hold one tensor 'x' of shape ({p},); {RECREATE}")
        x = np.asarray(x, dtype=np.float64)
    # branch and bound runs against the clock: only bounds without it are reproducible
    timed = bab > 0 or (isinstance(stored, dict) and "branch and bound" in str(stored.get("method", "")))
    if same_box and not timed:           # the stored certificate's own work, replayed (box_from_report)
        box = stored_box
    rep, _x = box_report(target, maps, g, box, seed=run.seed or 0, progress=progress)
    rep["set"] = box_set(box.lo, box.hi, target.input_dim)
    rep.pop("witness")
    if same_box and isinstance(stored, dict) and isinstance(stored.get("bound"), (int, float)):
        if timed:
            rep["report_bound"] = float(stored["bound"])
        else:
            rep["matches_report"] = math.isclose(float(stored["bound"]), rep["bound"], rel_tol=1e-6,
                                                 abs_tol=1e-12)
    if x is not None:
        inside = bool(np.all(x >= box.lo) and np.all(x <= box.hi))
        w = {"file": BOX_WITNESS, "inside_box": inside}
        if inside:
            with torch.no_grad():
                xt = torch.as_tensor(x, dtype=DT)[None]
                err = float((target.forward(xt) - g.to(DT)(xt)).norm())
            w["error"] = err
            rec = (stored.get("witness") or {}).get("error") if isinstance(stored, dict) else None
            if isinstance(rec, (int, float)):
                w["recorded_error"] = float(rec)
                w["matches_report"] = math.isclose(err, float(rec), rel_tol=1e-9, abs_tol=1e-15)
            if err > rep["empirical_bound"]:
                rep["empirical_bound"] = err
                rep["attack"]["source"] = "stored witness"
                rep["ratio"] = rep["bound"] / err if err > 0 else None
            check_soundness(err, rep["bound"])
        rep["witness"] = w
    check_soundness(rep["empirical_bound"], rep["bound"])
    rep["recomputed_from"] = "run folder files" + ("" if not asked else " (box from --input-box)")
    return rep


def read_witness(run: Run) -> tuple[np.ndarray, float] | None:
    """The stored worst point x* (float64, shape (p,)) and its recorded error, or None when
    report.json lists no witness. Refuses a damaged or misplaced witness file."""
    if "witness" not in run.report:
        return None
    w = run.report["witness"]
    path = run.path / WITNESS
    p = run.input_dim
    check_regular(path)
    # the tool's witness is p float64 values and one short metadata entry: refuse a file whose
    # header could make the reader allocate gigabytes before its shape is checked
    if os.stat(path).st_size > 8 * p + (1 << 20):
        raise RunFolderError(f"{path} must hold one tensor 'x' of shape ({p},), but it is "
                             f"{os.stat(path).st_size:,} bytes; {RECREATE}")
    tensors = load_tensors(path)
    x = tensors.get("x")
    if set(tensors) != {"x"} or x is None or x.shape != (p,) or not np.issubdtype(x.dtype, np.floating):
        raise RunFolderError(f"{path} must hold one tensor 'x' of shape ({p},); {RECREATE}")
    return np.asarray(x, dtype=np.float64), float(w["error"])
