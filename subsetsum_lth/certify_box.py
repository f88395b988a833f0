"""A box-domain differential certificate: sup over lo <= x <= hi of ‖f(x) − ĝ(x)‖₂.

Because every pruned block collapses exactly (:func:`subsetsum_lth.certify.layer_maps`), ĝ has the
target's architecture with weights W̃ = W − E, so f − ĝ is bounded by *differential* verification
of two networks of the same shape (as in ReluDiff / NeuroDiff): per layer i the bounds track g's
pre-activation z'_i and the difference d_i = z_i − z'_i (z_i: f's pre-activation) jointly,

    z'_{i+1} = W̃_{i+1} a'_i + b̃_{i+1},          a'_i = σ(z'_i)
    d_{i+1}  = W_{i+1} D_i + E_{i+1} a'_i + e_{i+1},   D_i = σ(z'_i + d_i) − σ(z'_i)

so the small difference d is never the difference of two large bounds. The relaxations:

* a' = σ(z'): the usual triangle — upper chord s(z' − l), lower α z' (α ∈ [0, 1] optimised);
* D = σ(z) − σ(z'), a convex combination (weight θ ∈ [0, 1], optimised) of two valid planes:
  "separate" (upper U_f(z) − L_g(z'), lower L_f(z) − U_g(z'), exact when both units are stable)
  and "clip" (D lies between min(d, 0) and max(d, 0) since σ is monotone and 1-Lipschitz:
  upper the chord of max(d, 0), lower the chord of min(d, 0) over [d_l, d_u]).

Bounds are CROWN-style backward linear bounds (α-CROWN: slopes α and weights θ per objective,
optimised by projected Adam; every iterate is a sound bound, the best one per objective is kept).
Intermediate layers get CROWN bounds with the default slopes; the first layer's are exact
intervals. ĝ's first layer on signed inputs is linear in (x⁺, x⁻); every linear bound is minimised
over x exactly, coordinate by coordinate at x_j ∈ {lo_j, 0, hi_j} (:func:`_concretize`).

The ℓ2 bound is the smaller of two sound bounds: sqrt(Σ_k max(|lo_k|, |hi_k|)²) over the
per-output intervals (as if every output reached its extreme at the same x: up to √q too large),
and a zonotope bound (:func:`zonotope_l2`): f − ĝ = c + G s over s ∈ [−1, 1]^N, one generator per
input coordinate and two per hidden unit (parallel-plane relaxations of σ(z') and of D on the
bounds above), and max ‖c + G s‖₂ ≤ sqrt(λ_max(G D⁻¹ Gᵀ) · tr D) for any positive diagonal D
(:func:`psd_l2_bound`, the dual of the semidefinite relaxation), which keeps the correlation of the
outputs through the shared generators. With the "|·|" forms (σ(z') = z'/2 + |z'|/2 and
D = d/2 ± |d|/2, the residuals bounded by zonotopes of the earlier symbols rather than by their
largest values, :func:`refined_l2_bound`) the slack of the hidden units is no longer taken as free
of x. On the MNIST 784-500-10 ticket at τ = 0.01 (box attack 0.123): ℓ2 of the intervals 1.074,
plain zonotope 0.588, refined 0.361.

Everything is float64 on the CPU, batched; the bound is widened by :data:`NUMERIC_SLACK`.
MLPs only (``Target.layers`` are Linear layers with ReLU between them).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from subsetsum_lth import limits
from subsetsum_lth.certify import LayerMap, NUMERIC_SLACK, check_soundness
from subsetsum_lth.errors import RunFolderError, UserError
from subsetsum_lth.options import option
from subsetsum_lth.progress import note, phase
from subsetsum_lth.target import Target
# The certificate's rooms: the differential α-CROWN bounds (box_crown), the zonotope ℓ2 bound
# (box_zonotope), the attack (box_attack) and the certified agreement (box_agreement). Their public
# names are re-exported here, where the run-level code, the tests and the experiments find them.
from subsetsum_lth.box_agreement import local_agreement
from subsetsum_lth.box_attack import box_attack
from subsetsum_lth.box_crown import (DT, Bounds, DiffNet, _argmin_corner, _hidden_bounds, _optimise, _split_of,
                                     hidden_alpha_iterations,
                                     box_arrays, branch_and_bound, diff_net, twin_net)
from subsetsum_lth.box_net import chain_intervals, rounding_slack
from subsetsum_lth.box_zonotope import Zonotope, psd_l2_bound, refined_l2_bound, zonotope_l2

__all__ = ["DT", "Bounds", "DiffNet", "Zonotope", "diff_net", "twin_net", "branch_and_bound", "psd_l2_bound",
           "refined_l2_bound", "zonotope_l2", "box_attack", "local_agreement", "output_intervals",
           "l2_of_intervals", "widen", "box_certificate", "BOX_WITNESS", "DEFAULT_LOCAL_RADII", "BoxConfig",
           "parse_box", "box_bound", "box_report", "box_set", "box_from_report"]

#: absolute widening of every reported interval end (float64 rounding of sums of ~1e4 terms)
ABS_SLACK = 1e-12
METHOD = ("differential alpha-CROWN (joint bounds on z' and d = z - z'), per-output intervals; l2: the smaller of "
          "the l2 of their maxima and a zonotope of f - g (|.| forms of the hidden units' residuals) with "
          "semidefinite-dual norm bounds")
METHOD_CHAIN = ("differential alpha-CROWN over the op chain (conv2d, relu, max/avg pooling, flatten, linear; joint "
                "bounds on z' and d = z - z'), per-output intervals; l2 of their maxima")
METHOD_GRAPH = ("differential alpha-CROWN over the op graph (conv2d, relu, max/avg pooling, flatten, linear, residual "
                "adds: coefficients into both branches, summed at the fork; joint bounds on z' and d = z - z'), "
                "per-output intervals; l2 of their maxima")


# ----------------------------------------------------------------------------- the certificate

def output_intervals(target: Target, maps: list[LayerMap], lo, hi, iters: int = 60, lr: float = 0.1,
                     time_budget: float | None = None, bab_seconds: float = 0.0, bab_domains: int = 256,
                     progress=None, zonotope_iters: int = 150, hidden_iters: int = 0):
    """Sound per-output intervals [lo_k, hi_k] of (f − ĝ)_k over the box, the X-corner that
    minimises each objective's final linear bound (2q corners, good attack starts), and (in the
    info dict, ``zonotope``) the zonotope bound on the ℓ2 norm (:func:`zonotope_l2`)."""
    p = target.sizes[0]
    lo, hi = box_arrays(lo, hi, p)
    net = diff_net(target, maps, _split_of(lo, hi))
    Xlo, Xhi = net.input_box(torch.as_tensor(lo, dtype=DT)[None], torch.as_tensor(hi, dtype=DT)[None])
    deadline = None if time_budget is None else time.perf_counter() + time_budget
    t0 = time.perf_counter()

    def stage(what: str) -> None:
        note(progress, f"box certificate: {what} ({time.perf_counter() - t0:.0f} s elapsed)")

    hidden_done = hidden_alpha_iterations(net, hidden_iters)
    if hidden_done:
        stage(f"hidden-unit bounds: alpha-CROWN, {hidden_done} iterations per layer")
    bounds = _hidden_bounds(net, Xlo, Xhi, iters=hidden_done, lr=lr)
    stage(f"hidden-unit bounds done; optimising the output bounds (alpha-CROWN, ≤ {iters} iterations"
          + (f", ≤ {time_budget:g} s with the zonotope)" if time_budget is not None and math.isfinite(time_budget)
             else ")"))
    q = net.wf[-1].shape[0]
    I = torch.eye(q, dtype=DT)[None]
    lam_d = torch.cat([I, -I], 1)
    lam_z = torch.zeros_like(lam_d)
    val, cX, done = _optimise(net, bounds, net.depth - 1, lam_z, lam_d, Xlo, Xhi, iters, lr, deadline)
    if bab_seconds > 0 and net.depth > 1:
        stage(f"{done} alpha-CROWN iterations done; branch and bound for {bab_seconds:g} s")
        with torch.no_grad():
            val = branch_and_bound(net, bounds, net.depth - 1, lam_z, lam_d, Xlo, Xhi, val, bab_seconds,
                                   max_domains=bab_domains)
    lower, upper = val[0, :q], -val[0, q:]
    corners = _argmin_corner(cX, Xlo, Xhi, net.split, p)    # argmin of each objective's linear bound
    stage("output intervals done; zonotope bound of the ℓ2 norm")
    with torch.no_grad():
        zono = zonotope_l2(net, bounds, Xlo, Xhi, iters=zonotope_iters, deadline=deadline)
    return lower.numpy(), upper.numpy(), corners.numpy(), {"iterations": done, "hidden_bounds": bounds,
                                                           "hidden_iterations": hidden_done, "zonotope": zono}


def l2_of_intervals(lower: np.ndarray, upper: np.ndarray) -> float:
    """sup of ‖v‖₂ over the box ∏[lower_k, upper_k] (widened by the numeric slack)."""
    m = np.maximum(np.abs(lower), np.abs(upper))
    m = m * (1 + NUMERIC_SLACK) + ABS_SLACK
    return float(np.sqrt(np.sum(m ** 2)))


def widen(bound: float) -> float:
    """A float64 bound widened by the numeric slack (relative and absolute)."""
    return float(bound) * (1 + NUMERIC_SLACK) + ABS_SLACK


def _raw_corners(target: Target, corners):
    """Corners found on the layers' input box, mapped back to ``target.forward``'s inputs (pixels)
    through the inverse of the target's input op (none: unchanged)."""
    if target.preprocessing is None:
        return corners
    a, c = target.preprocessing.affine(target.input_dim)
    return (np.asarray(corners, dtype=np.float64).reshape(-1, target.input_dim) - c) / a


def box_certificate(target: Target, maps: list[LayerMap], lo, hi, iters: int = 60, lr: float = 0.1,
                    time_budget: float | None = 50.0, bab_seconds: float = 0.0, bab_domains: int = 256,
                    progress=None, zonotope_iters: int = 150, hidden_iters: int = 20) -> dict:
    """sup over lo <= x <= hi of ‖f(x) − ĝ(x)‖₂ <= ``bound`` (see the module docstring): the smaller
    of the ℓ2 of the per-output intervals (``bound_intervals``) and the zonotope bound
    (``bound_zonotope``), both sound. ``lo``, ``hi``: scalars or (p,) arrays. Returns a dict with
    ``bound``, both ℓ2 bounds, per-output ``lower`` and ``upper``, ``seconds``, ``method`` and ``corners``,
    and the iterations the optimisers took within ``time_budget`` (``alpha_iterations``,
    ``zonotope_iterations``): the same numbers with no time budget give the same bound, whatever
    the machine's load (``certify`` replays them). ``hidden_iters``: α-CROWN iterations on each
    hidden layer's bounds of an MLP with two or more hidden layers, where the shapes say it is
    affordable (:func:`~subsetsum_lth.box_crown.hidden_alpha_iterations`; no time budget; the count
    taken is ``hidden_alpha_iterations``)."""
    t0, c0 = time.perf_counter(), time.process_time()
    # an input op (declared preprocessing) maps the box onto the box a·lo + c ≤ z ≤ a·hi + c of the
    # layers' inputs, exactly (preprocess.py); the corners are mapped back to forward's inputs
    z_lo, z_hi = target.network_box(lo, hi)
    slack = rounding_slack(target, maps, z_lo, z_hi)      # float64 rounding of the sums, per output
    if not target.is_mlp or target.graph is not None:   # conv/pooling/residual: the op chain/graph (box_net)
        lower, upper, corners, info = chain_intervals(target, maps, z_lo, z_hi, iters=iters, lr=lr,
                                                      time_budget=time_budget, progress=progress)
        lower, upper = lower - slack, upper + slack
        corners = _raw_corners(target, corners)
        bound = l2_of_intervals(lower, upper)
        if not math.isfinite(bound):
            raise UserError("the box certificate overflows: the box is too large for this target; use a smaller --input-box")
        return {"bound": bound, "bound_intervals": bound, "bound_zonotope": None, "l2_from": "intervals",
                "zonotope_generators": 0, "lower": lower.tolist(), "upper": upper.tolist(),
                "method": METHOD_CHAIN if target.graph is None else METHOD_GRAPH,
                "alpha_iterations": info["iterations"], "zonotope_iterations": None, "hidden_alpha_iterations": 0,
                "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "corners": corners}
    lower, upper, corners, info = output_intervals(target, maps, z_lo, z_hi, iters=iters, lr=lr,
                                                   time_budget=time_budget, bab_seconds=bab_seconds,
                                                   bab_domains=bab_domains, progress=progress,
                                                   zonotope_iters=zonotope_iters, hidden_iters=hidden_iters)
    corners = _raw_corners(target, corners)
    lower, upper = lower - slack, upper + slack
    by_intervals = l2_of_intervals(lower, upper)
    by_zonotope = widen(info["zonotope"]["bound"] + float(np.linalg.norm(slack)))
    bound = min(by_intervals, by_zonotope)
    if not math.isfinite(bound):
        raise UserError("the box certificate overflows: the box is too large for this target; use a smaller --input-box")
    return {"bound": bound, "bound_intervals": by_intervals, "bound_zonotope": by_zonotope,
            "l2_from": "zonotope" if by_zonotope < by_intervals else "intervals",
            "zonotope_generators": info["zonotope"]["generators"],
            "lower": lower.tolist(), "upper": upper.tolist(),
            "method": METHOD + (f", branch and bound {bab_seconds:g} s" if bab_seconds > 0 else ""),
            "alpha_iterations": info["iterations"], "zonotope_iterations": info["zonotope"]["iterations"],
            "hidden_alpha_iterations": info["hidden_iterations"], "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "corners": corners}


# ----------------------------------------------------------------------------- run-level wiring

BOX_WITNESS = "box_witness.safetensors"
DEFAULT_LOCAL_RADII = (0.01, 0.05)


@dataclass
class BoxConfig:
    """The box domain of ``approximate``/``certify``: every input coordinate in [lo, hi]."""

    lo: float = 0.0
    hi: float = 1.0
    local_radii: tuple = ()          #: ℓ∞ radii ρ of the per-image certified agreement
    iters: int = 60                  #: α-CROWN iterations
    time_budget: float = 50.0        #: seconds for the α optimisation and the zonotope's weights at most
    zonotope_iters: int = 150        #: iterations of the zonotope's weights (Adam)
    #: α-CROWN iterations on each hidden layer's bounds (MLPs with two or more hidden layers, where
    #: affordable: box_crown.hidden_alpha_iterations); a fixed count, no time budget
    hidden_iters: int = 20
    #: certified agreement on the first N test images only, refined (CROWN on each ball's unstable
    #: units) for conv targets; None: every image, interval bounds through the conv layers
    local_images: int | None = None
    #: seconds of branch and bound on g's unstable units (0: none)
    bab_seconds: float = option(0.0, flag="--bab-seconds", metavar="S",
                                help="with --input-domain box: refine the box certificate by branch and bound on "
                                     "unstable units for S seconds (default 0: none)")
    attack_steps: int = 150

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise UserError(f"--input-box needs finite LO < HI, got {self.lo:g},{self.hi:g}; e.g. --input-box 0,1")
        for r in self.local_radii:
            if not (math.isfinite(r) and r > 0):
                raise UserError(f"--local-radius must be a positive number, got {r}")
        limits.check_seconds("--bab-seconds", self.bab_seconds, zero_ok=True)
        if self.local_images is not None:
            limits.check_int("--local-images", self.local_images, 1, limits.MAX_SAMPLES,
                             why="each image is bounded one by one")
        if self.local_radii and self.lo < 0:
            raise UserError("--local-radius needs a non-negative box (LO >= 0), e.g. --input-box 0,1")

    @property
    def domain(self) -> str:
        """The construction's input domain for this box (sign halves only where x can be < 0)."""
        return "nonnegative" if self.lo >= 0 else "signed"


def parse_box(text: str) -> tuple[float, float]:
    """'LO,HI' -> (lo, hi); one clear error otherwise."""
    parts = str(text).split(",")
    try:
        lo, hi = (float(s) for s in parts)
    except ValueError:
        raise UserError(f"--input-box takes LO,HI (two numbers), got {text!r}; e.g. --input-box 0,1") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise UserError(f"--input-box needs finite LO < HI, got {text!r}; e.g. --input-box 0,1")
    return lo, hi


def box_bound(target: Target, maps: list[LayerMap], box: BoxConfig) -> float:
    """The box certificate's bound alone (what ``--eps`` is checked against in the box domain)."""
    return box_certificate(target, maps, box.lo, box.hi, iters=box.iters, time_budget=box.time_budget,
                           bab_seconds=box.bab_seconds, zonotope_iters=box.zonotope_iters,
                           hidden_iters=box.hidden_iters)["bound"]


def box_report(target: Target, maps: list[LayerMap], g: torch.nn.Module | None, box: BoxConfig,
               data: np.ndarray | None = None, eval_x: np.ndarray | None = None, seed: int = 0,
               random_points: int = 256, progress=None) -> tuple[dict, np.ndarray]:
    """The ``box_certificate`` object of report.json and the attack's witness x*: the bound, the
    box attack (checked to stay under it), their ratio, and the certified agreement per ρ on
    ``eval_x`` when given. ``progress``: announces each stage (:func:`subsetsum_lth.progress.phase`)."""
    where = box_set(box.lo, box.hi, target.input_dim)
    bab = f", then branch and bound for {box.bab_seconds:g} s" if box.bab_seconds else ""
    how = ("intervals, zonotopes, differential alpha-CROWN" if target.is_mlp and target.graph is None else
           f"intervals and differential alpha-CROWN through the {'op graph' if target.graph is not None else 'op chain'}")
    with phase(progress, "box certificate", f"bounding sup over {where} of ‖f(x) − ĝ(x)‖₂ ({how}{bab})"):
        cert = box_certificate(target, maps, box.lo, box.hi, iters=box.iters, time_budget=box.time_budget,
                               bab_seconds=box.bab_seconds, progress=progress, zonotope_iters=box.zonotope_iters,
                               hidden_iters=box.hidden_iters)
    t0 = time.perf_counter()
    q = target.sizes[-1]
    with phase(progress, "box attack", f"searching {where} for a large ‖f(x) − ĝ(x)‖₂ (sign-gradient "
                                       f"ascent on the norm, then on ±(f − ĝ)_k for each of the {q} outputs)",
               total=1 + 2 * q, unit="ascent") as bar:
        att = box_attack(target, maps, box.lo, box.hi, data=data, starts=cert["corners"], g=g, seed=seed,
                         random_points=random_points, steps=box.attack_steps, bar=bar)
    attack_seconds = time.perf_counter() - t0
    check_soundness(att["empirical_bound"], cert["bound"])
    witness = att.pop("witness")
    out = {"box": [box.lo, box.hi], "bound": cert["bound"], "empirical_bound": att["empirical_bound"],
           "bound_intervals": cert["bound_intervals"], "bound_zonotope": cert["bound_zonotope"],
           "l2_from": cert["l2_from"],
           "ratio": cert["bound"] / att["empirical_bound"] if att["empirical_bound"] > 0 else None,
           "method": cert["method"], "seconds": cert["seconds"], "cpu_seconds": cert["cpu_seconds"],
           "alpha_iterations": cert["alpha_iterations"], "zonotope_iterations": cert["zonotope_iterations"],
           "hidden_alpha_iterations": cert["hidden_alpha_iterations"],
           "output_lower": cert["lower"], "output_upper": cert["upper"],
           "attack": {**att, "seconds": attack_seconds},
           "witness": {"file": BOX_WITNESS, "error": float(witness["error"])}}
    if eval_x is not None and box.local_radii:
        t1 = time.perf_counter()
        refine = box.local_images is not None
        eval_x = eval_x if box.local_images is None else eval_x[:box.local_images]
        chunk = 500 if not refine else 8
        with phase(progress, "certified agreement", f"{len(eval_x):,} test images × l-inf radii "
                   f"{', '.join(f'{r:g}' for r in box.local_radii)}",
                   total=len(box.local_radii) * -(-len(eval_x) // chunk), unit="chunk") as bar:
            # a CNN on every test image: interval bounds through the hidden ops (~40 s per 1,000
            # images); CROWN on each ball's unstable units (box_local) is ~100x the time per
            # image, hours on 10,000 images: only on the first --local-images N
            out["local_agreement"] = {f"{r:g}": local_agreement(target, maps, eval_x, r, box.lo, box.hi,
                                                                chunk=chunk, bar=bar, refine=refine)
                                      for r in box.local_radii}
        out["local_agreement_examples"] = int(len(eval_x))
        if not target.is_mlp:
            out["local_agreement_bounds"] = ("CROWN on each ball's unstable units (refined)" if refine else
                                             "interval bounds through the conv layers")
        out["local_agreement_seconds"] = time.perf_counter() - t1
        out["local_agreement_meaning"] = ("fraction of the points where f and the pruned network both provably "
                                          "keep f's class on the whole l-inf ball of radius rho (within the box)")
    return out, np.asarray(witness["x"], dtype=np.float64)


def box_set(lo: float, hi: float, dim: int) -> str:
    """The box in words: 'the box [0, 1]^784'."""
    return f"the box [{lo:g}, {hi:g}]^{dim}"


#: the most optimiser iterations a stored box certificate may have certify replay
MAX_REPLAY_ITERATIONS = 10_000


def box_from_report(report: dict, where: str) -> BoxConfig | None:
    """The box a run was certified on (report.json 'box_certificate'), validated, or None.

    It replays the stored certificate's work: the iterations its optimisers took within
    approximate's time budget (``alpha_iterations``, ``zonotope_iterations``) and no budget, so
    the bound recomputed from it is the recorded one on a loaded machine too (a budget buys a
    slower machine fewer iterations). A report from before the counts were recorded, or one
    refined by branch and bound (against the clock), keeps the budget. The counts are checked,
    never believed: counts made smaller give another bound (certify says it differs), a huge one
    is refused."""
    bc = report.get("box_certificate")
    if bc is None:
        return None
    box = bc.get("box") if isinstance(bc, dict) else None
    if not (isinstance(box, list) and len(box) == 2 and all(isinstance(v, (int, float)) for v in box)
            and math.isfinite(box[0]) and math.isfinite(box[1]) and box[0] < box[1]):
        raise RunFolderError(f"{where}: 'box_certificate.box' must be [LO, HI] with LO < HI, got {box!r}; "
                             "recreate the run with 'subsetsum-lth approximate'")
    out = BoxConfig(float(box[0]), float(box[1]))
    counts = {"hidden_iters": _replay_count(bc, "hidden_alpha_iterations", where, absent=0)}
    if "zonotope_iterations" not in bc or "branch and bound" in str(bc.get("method", "")):
        return replace(out, **counts)
    for key, name in (("alpha_iterations", "iters"), ("zonotope_iterations", "zonotope_iters")):
        v = bc.get(key)
        if v is None and key == "zonotope_iterations":      # a CNN's chain has no zonotope
            continue
        counts[name] = _replay_count(bc, key, where)
    return replace(out, time_budget=math.inf, **counts)


def _replay_count(bc: dict, key: str, where: str, absent: int | None = None) -> int:
    """box_certificate[key], an iteration count certify replays, checked: a whole number in
    [0, MAX_REPLAY_ITERATIONS]; ``absent`` where a report from before the count was recorded
    stands for it (hidden-layer α: none then)."""
    if key not in bc and absent is not None:
        return absent
    v = bc.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_REPLAY_ITERATIONS:
        raise RunFolderError(f"{where}: box_certificate.{key} must be a whole number in "
                             f"[0, {MAX_REPLAY_ITERATIONS:,}], got {v!r}; recreate the run with "
                             "'subsetsum-lth approximate'")
    return v
