"""`certify`'s audit of report.json (issue 21): every figure it states that the run's files can
give is recomputed from them, and each one that differs is listed as "FIELD: stored X, the files
give Y". Nothing stored is believed; a figure that cannot be recomputed here (the data set is
missing, an older run lacks a field) is named in a note instead.

What is recomputed, from target.safetensors, random_net/masks (or the compact files),
run_config.json and the data set:

* ``certified_bound`` (and ``certified_ok`` of an ``--eps`` run), the box bound, the witness
  errors (by :mod:`subsetsum_lth.certify_run`);
* per layer ``max_weight_error``, ``max_bias_error`` (the collapsed weights against the target),
  ``kept_parameters``, ``kept_parameters_first``/``_second``, ``kept_coefficients``,
  ``kept_units``, ``total_parameters``; in all ``kept_parameters``, ``total_parameters``;
* ``target_sha256`` (the bytes of target.safetensors; runs from before it was recorded get a note);
* ``eps``, ``weight_eps``, ``mode``, ``seed``, ``input_domain``, ``input_radius``, ``solver``,
  ``objective``, ``distribution``, ``C``, ``delta`` against the settings run_config.json records
  (and its target digest against the target); ``weight_eps`` against the recomputed errors when
  the report claims every instance within it;
* ``target_accuracy``, ``pruned_accuracy``, ``prediction_agreement``, output deviations on the
  recorded data set's test images, and ``input_radius`` against the images' largest norm when
  the radius came from the data;
* ``engines`` ({"total": {engine: instances}, "per_layer": [{engine: instances}, ...]}, which
  engine produced each instance's answer): each layer's counts sum to its ``instances``, the
  totals to the per-layer counts and to ``instances``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from subsetsum_lth import runfolder as rf
from subsetsum_lth.data.mnist import input_radius, load_mnist
from subsetsum_lth.certify import CollapsedNet
from subsetsum_lth.errors import RunFolderError, UserError
from subsetsum_lth.evaluation import evaluate_pair
from subsetsum_lth.manifest import sha256_file
from subsetsum_lth.solvers.portfolio import LEGACY_NAMES
from subsetsum_lth.target import target_digest

#: the relative tolerance for figures recomputed in float64 by the same arithmetic
REL = 1e-6


@dataclass
class Audit:
    mismatches: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def number(self, name: str, stored, got, rel: float = REL, abs_tol: float = 1e-12, source: str = "") -> None:
        if stored is None:
            return
        self.checked.append(name)
        ok = (isinstance(stored, (int, float)) and not isinstance(stored, bool)
              and math.isclose(float(stored), float(got), rel_tol=rel, abs_tol=abs_tol))
        if not ok:
            self.differs(name, stored, got, source)

    def exact(self, name: str, stored, got, source: str = "") -> None:
        if stored is None and got is None:
            return
        self.checked.append(name)
        if stored != got or isinstance(stored, bool) != isinstance(got, bool):
            self.differs(name, stored, got, source)

    def differs(self, name: str, stored, got, source: str = "") -> None:
        self.mismatches.append({"field": name, "stored": stored, "recomputed": got, "source": source})

    def to_dict(self) -> dict:
        return {"mismatches": self.mismatches, "notes": self.notes, "checked": self.checked}


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.10g}"
    return repr(v) if isinstance(v, str) else str(v)


def mismatch_lines(mismatches: list[dict]) -> list[str]:
    return [f"{m['field']}: stored {fmt(m['stored'])}, the files give {fmt(m['recomputed'])}"
            + (f" ({m['source']})" if m.get("source") else "") for m in mismatches]


def target_sha256(path: Path) -> str:
    """What report.json records as ``target_sha256``: the sha256 of target.safetensors' bytes."""
    return sha256_file(Path(path))[0]


def audit_report(run, cert, maps, *, bound_checked: bool, eps_bound: float | None = None,
                 data_dir=None, audit: Audit | None = None) -> Audit:
    """Compare report.json with what ``run``'s files give (``cert``: the certificate recomputed
    at the run's own input ball; ``bound_checked``: whether it was, i.e. no --input-radius or
    --input-domain override). Returns the audit (mismatches and notes)."""
    a = audit or Audit()
    rep = run.report
    if bound_checked:
        a.number("certified_bound", rep.get("certified_bound"), cert.bound, rel=1e-9, abs_tol=1e-15,
                 source=f"the certificate over ‖x‖₂ ≤ {run.input_radius:g}, {run.input_domain}")
    _target_hash(a, run)
    _kept(a, run)
    if run.kind == "subset-sum":
        _layer_errors(a, rep, cert)
        _engine_counts(a, rep)
        _settings(a, run, cert, bound_checked, eps_bound)
    _data(a, run, maps, data_dir)
    return a


def _target_hash(a: Audit, run) -> None:
    stored = run.report.get("target_sha256")
    if stored is None:
        a.notes.append("report.json records no target_sha256 (a run from before it was recorded): the target "
                       "was checked against run_config.json's digest only")
        return
    a.exact("target_sha256", stored, target_sha256(run.path / rf.TARGET), f"sha256 of {rf.TARGET}")


def _shape(tensors, k) -> tuple:
    return tuple(tensors.shape(k)) if hasattr(tensors, "shape") and callable(tensors.shape) \
        else tuple(np.asarray(tensors[k]).shape)


def _pair_counts(run) -> list[dict] | None:
    """Per target layer: kept parameters (first/second random layer), kept coefficients, kept
    units and total parameters, from the masks (support-form masks of a compact run)."""
    layout = run.layout
    if run.plans is None:
        return None
    out = []
    for i in range(len(run.plans)):
        kw1, kb1, kw2, kb2 = layout.pair_keys(i)
        total = sum(int(np.prod(_shape(run.random_state, k))) for k in (kw1, kb1, kw2, kb2))
        if run.compact is not None:
            mk = run.compact.cmasks[i]
            u, b1, w2, b2 = (np.asarray(mk[r]) for r in ("u", "b1", "w2", "b2"))
            units = int(((u != 0) | (b1 != 0)).sum())
            first = int(np.count_nonzero(u) + np.count_nonzero(b1))
        else:
            w1, b1, w2, b2 = (np.asarray(run.masks[k]) for k in (kw1, kb1, kw2, kb2))
            rows = w1.reshape(w1.shape[0], -1) != 0
            units = int((rows.any(axis=1) | (b1.reshape(-1) != 0)).sum()) if rows.shape[0] == b1.size else None
            first = int(np.count_nonzero(w1) + np.count_nonzero(b1))
        second = int(np.count_nonzero(w2) + np.count_nonzero(b2))
        out.append({"kept_parameters": first + second, "kept_parameters_first": first,
                    "kept_parameters_second": second, "kept_coefficients": int(np.count_nonzero(w2)),
                    "kept_units": units, "total_parameters": total})
    return out


def _kept(a: Audit, run) -> None:
    rep = run.report
    counts = _pair_counts(run)
    if counts is None:     # an edge-popup run without the construction's plan: count every tensor
        kept = sum(int(np.count_nonzero(np.asarray(run.masks[k]))) for k in run.masks)
        total = sum(int(np.prod(_shape(run.random_state, k))) for k in run.random_state)
    else:
        kept = sum(c["kept_parameters"] for c in counts)
        total = sum(c["total_parameters"] for c in counts)
        layers = rep.get("layers") if run.kind == "subset-sum" else None
        for i, (L, c) in enumerate(zip(layers or [], counts)):
            for key, got in c.items():
                if got is not None and key in L:
                    a.number(f"layers[{i}].{key}", L[key], got, rel=0, abs_tol=0, source="the masks")
    a.number("kept_parameters", rep.get("kept_parameters"), kept, rel=0, abs_tol=0, source="the masks")
    a.number("total_parameters", rep.get("total_parameters"), total, rel=0, abs_tol=0,
             source=f"the shapes in {rf.RANDOM_NET}" if run.compact is None else "the compact g")


def _solver_name(name, legacy: bool):
    """``name`` as this version calls it: in a file written before ``auto`` existed (``legacy``),
    ``ortools`` named the portfolio that is ``auto`` now."""
    return LEGACY_NAMES.get(name, name) if legacy and isinstance(name, str) else name


def _engine_counts(a: Audit, rep: dict) -> None:
    """report.json ``engines``: the per-layer counts sum to each layer's instances, the totals to
    the per-layer counts and to ``instances`` (runs from before it was recorded get a note)."""
    eng = rep.get("engines")
    if eng is None:
        a.notes.append("report.json records no 'engines' (a run from before rows recorded their engine)")
        return
    layers = rep.get("layers") if isinstance(rep.get("layers"), list) else []
    per_layer = eng.get("per_layer") if isinstance(eng, dict) else None
    total = eng.get("total") if isinstance(eng, dict) else None
    if not (isinstance(per_layer, list) and isinstance(total, dict) and len(per_layer) == len(layers)
            and all(isinstance(d, dict) for d in per_layer)):
        a.differs("engines", eng, f"{{'total': {{...}}, 'per_layer': [{len(layers)} counts]}}", "its shape")
        return

    def count(d: dict) -> int | None:
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in d.values())
        return sum(d.values()) if ok else None

    for li, (d, L) in enumerate(zip(per_layer, layers)):
        if isinstance(L, dict) and "instances" in L:
            a.exact(f"engines.per_layer[{li}] (sum)", count(d), L["instances"], f"layer {li + 1}'s instances")
    summed: dict = {}
    for d in per_layer:
        for k, v in d.items():
            summed[k] = summed.get(k, 0) + (v if isinstance(v, int) else 0)
    a.exact("engines.total", total, dict(sorted(summed.items())), "the sum of engines.per_layer")
    a.exact("engines.total (sum)", count(total), rep.get("instances"), "instances")


def _layer_errors(a: Audit, rep: dict, cert) -> None:
    for i, (L, C) in enumerate(zip(rep.get("layers") or [], cert.layers)):
        for key in ("max_weight_error", "max_bias_error"):
            if key in L and key in C:
                a.number(f"layers[{i}].{key}", L[key], C[key], rel=REL, abs_tol=1e-12,
                         source="the collapsed weights of random_net × masks against the target")


def _settings(a: Audit, run, cert, bound_checked: bool, eps_bound) -> None:
    """The settings report.json states against run_config.json (what the run was started with),
    and τ against the recomputed errors."""
    rep = run.report
    cfg_path = run.path / "run_config.json"
    mode = rep.get("mode")
    if cfg_path.exists():
        cfg = rf.read_json(cfg_path)
        cc = cfg.get("construction") if isinstance(cfg.get("construction"), dict) else {}
        src = "run_config.json"
        cfg_mode = "network" if cfg.get("eps") is not None else "weight"
        a.exact("mode", mode, cfg_mode, src)
        a.number("eps", rep.get("eps"), cfg.get("eps") if cfg_mode == "network" else cfg.get("weight_eps"),
                 rel=1e-12, source=src)
        if cfg_mode == "weight":
            a.number("weight_eps", rep.get("weight_eps"), cfg.get("weight_eps"), rel=1e-12, source=src)
        a.number("input_radius", rep.get("input_radius"), cfg.get("input_radius"), rel=1e-12, source=src)
        for key in ("seed", "input_domain", "distribution", "C", "delta"):
            if key in cc:
                a.exact(key, rep.get(key), cc[key], src)
        if "solver" in cfg:     # files written before 'auto' name the portfolio 'ortools'
            a.exact("solver", _solver_name(rep.get("solver"), "engines" not in rep),
                    _solver_name(cfg["solver"], "solver_names" not in cfg), src)
        if "objective" in cfg:
            a.exact("objective", rep.get("objective"), cfg["objective"], src)
        if isinstance(cfg.get("target_digest"), str) and run.target is not None:
            got = target_digest(run.target)
            if got != cfg["target_digest"]:
                a.differs("run_config.json target_digest", cfg["target_digest"], got,
                          f"the weights in {rf.TARGET}")
    else:
        a.notes.append("no run_config.json: eps, weight_eps and the settings were not checked against "
                       "the settings the run was started with")
    # τ: every instance within it, as the report claims, means every recomputed error within it
    tau = rep.get("weight_eps")
    if isinstance(tau, (int, float)) and rep.get("outside_tolerance_count") == 0 and cert.layers:
        worst = max(max(C.get("max_weight_error", 0.0), C.get("max_bias_error", 0.0)) for C in cert.layers)
        if worst > tau * (1 + REL) + 1e-12:
            a.differs("weight_eps", tau, worst, "the largest recomputed |w - ŵ|, though the report claims every "
                                                "instance within weight_eps")
    if bound_checked and mode == "network" and isinstance(rep.get("eps"), (int, float)) and \
            "certified_ok" in rep and eps_bound is not None:
        a.exact("certified_ok", rep["certified_ok"], bool(eps_bound <= rep["eps"]), "certified bound <= eps")


def _data(a: Audit, run, maps, data_dir) -> None:
    """Accuracies and deviations on the recorded data set's test images; input_radius against
    the images' largest norm when it came from the data."""
    rep = run.report
    keys = [k for k in ("target_accuracy", "pruned_accuracy", "prediction_agreement") if k in rep]
    dataset = rep.get("data")
    if dataset is None:
        if keys:
            a.notes.append(f"{', '.join(keys)} not checked: report.json names no data set")
        return
    if run.target is None:
        return
    try:
        x, y = load_mnist("test", data_dir=data_dir, download=False, dataset=dataset)
        data_radius = input_radius(data_dir, download=False, dataset=dataset)
    except (UserError, OSError) as exc:
        a.notes.append(f"{', '.join(keys + ['input_radius'])} not checked against the {dataset} test images: "
                       f"{str(exc).splitlines()[0]} (give --data-dir)")
        return
    src = rep.get("input_radius_source")
    r = rep.get("input_radius")
    if isinstance(r, (int, float)) and src in (None, "data"):
        # the radius came from the data (older runs record no source: only a ball that misses
        # images is flagged, a larger one may have been asked for)
        if src == "data" or r < data_radius * (1 - 1e-12):
            a.number("input_radius", r, data_radius, rel=1e-12,
                     source=f"the largest ‖x‖₂ of the {dataset} images")
    if not keys:
        return
    if int(rep.get("eval_examples", len(x))) != len(x):
        a.notes.append(f"accuracies not checked: report.json counts {rep.get('eval_examples')} test images, "
                       f"the {dataset} test set has {len(x)}")
        return
    ev = evaluate_pair(run.target, CollapsedNet(maps, target=run.target), x, y)
    half = 0.5 / max(1, len(x))          # fractions of the test set: one image apart is a difference
    for key in keys:
        a.number(key, rep[key], ev[key], rel=0, abs_tol=half, source=f"the {len(x):,} {dataset} test images")
    for key in ("max_output_deviation", "mean_output_deviation"):
        if key in rep:
            a.number(key, rep[key], ev[key], rel=1e-4, abs_tol=1e-9, source=f"the {dataset} test images")


__all__ = ["Audit", "audit_report", "mismatch_lines", "target_sha256", "RunFolderError"]
