"""Recompute a run folder's certificate from random_net, masks and target files."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from subsetsum_lth.certify import certified_bound, check_soundness, empirical_bound_fast
from subsetsum_lth.gstore import run_layer_maps, run_pruned_module
from subsetsum_lth.errors import RunFolderError
from subsetsum_lth.runcheck import MAX_INPUT_RADIUS, RECREATE, WITNESS, read_run, read_witness


def certify_run(path, input_radius=None, input_domain=None, samples=512, steps=100) -> dict:
    path = Path(path)
    run = read_run(path, need_target=True)
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
    maps = run_layer_maps(run)
    cert = certified_bound(target, maps, r, dom)
    if not math.isfinite(cert.bound):
        raise RunFolderError(f"the certified bound overflows at input radius {r:g} ({path}); use a smaller "
                             "--input-radius")
    g64 = run_pruned_module(run, torch.float64)
    emp = empirical_bound_fast(target, maps, g64, r, dom, samples=samples, steps=steps,
                               seed=run.seed or 0)
    emp.pop("witness", None)
    out = {"run": str(path), **cert.to_dict(), "empirical_bound": emp["empirical_bound"], "empirical": emp}
    # the stored witness x*: re-evaluated from the files, never believed
    stored = read_witness(run)
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
    stored_bound = run.report.get("certified_bound")
    if stored_bound is not None and input_radius is None and input_domain is None:
        out["matches_report"] = math.isclose(stored_bound, cert.bound, rel_tol=1e-9, abs_tol=1e-15)
    return out
