"""Recompute a run folder's certificate from random_net, masks and target files."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from subsetsum_lth import runfolder as rf
from subsetsum_lth.api import load_run
from subsetsum_lth.certify import (certified_bound, check_soundness, empirical_bound, layer_maps,
                                   pruned_module)
from subsetsum_lth.errors import RunFolderError
from subsetsum_lth.target import load_target


def certify_run(path, input_radius=None, input_domain=None, samples=512, steps=100) -> dict:
    path = Path(path)
    run = load_run(path)
    tpath = path / rf.TARGET
    if not tpath.exists():
        raise RunFolderError(f"{path} has no {rf.TARGET}; a certificate needs the target")
    target = load_target(tpath)
    r = input_radius if input_radius is not None else run.report.get("input_radius")
    dom = input_domain or run.report.get("input_domain")
    if r is None or dom is None:
        raise RunFolderError(f"{path}/report.json lacks input_radius/input_domain; pass --input-radius and --input-domain")
    cert = certified_bound(target, layer_maps(run.random_state, run.masks, target.depth), float(r), dom)
    emp = empirical_bound(target, pruned_module(run.random_state, run.masks, target.depth, torch.float64),
                          float(r), dom, samples=samples, steps=steps, seed=int(run.report.get("seed", 0)))
    check_soundness(emp["empirical_bound"], cert.bound)
    out = {"run": str(path), **cert.to_dict(), "empirical_bound": emp["empirical_bound"], "empirical": emp}
    stored = run.report.get("certified_bound")
    if stored is not None and input_radius is None and input_domain is None:
        out["matches_report"] = math.isclose(stored, cert.bound, rel_tol=1e-9, abs_tol=1e-15)
    return out
