"""The certified bound of DESIGN §2 and an empirical lower bound.

The layer maps of the pruned network are recovered from the two safetensors files alone
(random weights times masks), so a certificate never trusts what a solver reported.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from subsetsum_lth import limits
from subsetsum_lth.errors import CertificateViolation, RunFolderError
from subsetsum_lth.gnet import GLayout, mlp_layout
from subsetsum_lth.progress import advance
from subsetsum_lth.target import Target

log = logging.getLogger(__name__)

#: relative slack that covers float64 rounding in the norm computations
NUMERIC_SLACK = 1e-9


@dataclass
class LayerMap:
    """What one pruned pair of layers computes: ``Wp x⁺ + Wm x⁻ + b`` (x⁻ = min(x, 0))."""

    w_plus: np.ndarray
    w_minus: np.ndarray
    bias: np.ndarray


def _layout(state: dict, depth_or_layout):
    if isinstance(depth_or_layout, GLayout):
        return depth_or_layout
    layout = mlp_layout(state)
    if layout.depth != int(depth_or_layout):
        raise RunFolderError(f"the random network has {layout.depth} layer pairs, expected {depth_or_layout}")
    return layout


def layer_maps(state: dict, masks: dict, depth_or_layout) -> list[LayerMap]:
    """Exact layer maps of ĝ (in each target layer's matrix view), assuming the construction's
    form: every kept hidden unit has at most one kept input edge, and no unit keeps both an
    input edge and a bias. ``depth_or_layout``: a :class:`subsetsum_lth.gnet.GLayout`, or the
    depth of an MLP (the layout is then read off the state dict)."""
    layout = _layout(state, depth_or_layout)
    maps = []
    for i in range(layout.depth):
        A, a, B, c = layout.matrices(state, i, masks)
        k1 = layout.pair_keys(i)[0]
        nnz = (A != 0).sum(axis=1)
        if np.any(nnz > 1):
            raise RunFolderError(
                f"layer {k1.split('.')[0]}: {int((nnz > 1).sum())} hidden units keep more than one input edge; "
                "these masks are not of the subset-sum construction's form, so no certificate applies")
        both = (nnz == 1) & (a != 0)
        if np.any(both):
            raise RunFolderError(f"layer {k1.split('.')[0]}: {int(both.sum())} hidden units keep an input edge "
                                 "and a bias; not the construction's form, no certificate applies")
        q, H = B.shape
        p = A.shape[1]
        col = np.argmax(A != 0, axis=1)
        u = A[np.arange(H), col]
        Wp = np.zeros((q, p))
        Wm = np.zeros((q, p))
        pos, neg = (nnz == 1) & (u > 0), (nnz == 1) & (u < 0)
        # unit h contributes B[:, h] * relu(u_h x_j): = u_h x_j⁺ if u_h>0, u_h x_j⁻ if u_h<0
        np.add.at(Wp.T, col[pos], (B[:, pos] * u[pos]).T)
        np.add.at(Wm.T, col[neg], (B[:, neg] * u[neg]).T)
        const = (nnz == 0) & (a > 0)          # relu(bias) = bias for positive kept biases
        bias = c + B[:, const] @ a[const]
        maps.append(LayerMap(Wp, Wm, bias))
    return maps


@dataclass
class Certificate:
    bound: float
    input_radius: float
    input_domain: str
    layers: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"certified_bound": self.bound, "input_radius": self.input_radius,
                "input_domain": self.input_domain, "layers": self.layers}


from subsetsum_lth.layerkinds import Linear, forward_graph, op_lipschitz, spectral_norm

_spec = spectral_norm


def compose(norms_W, norms_E, norms_eb, norms_b, r, lips=None):
    """The recursion of DESIGN §2 on per-layer norms (a pure function, the one place it lives):
    R_1 = r, δ_1 = 0, η_i(ρ) = ρ·norms_E[i] + norms_eb[i],
    δ_{i+1} = L_i·(norms_W[i]·δ_i + η_i(R_i + δ_i)),  R_{i+1} = L_i·(norms_W[i]·R_i + norms_b[i]),
    where L_i (default 1) is the Lipschitz constant of the parameter-free layers (pooling) after
    layer i's ReLU (ReLU itself is 1-Lipschitz and maps 0 to 0).
    Returns (radii_in, bounds_in, bounds_out), one entry per layer; the bound is bounds_out[-1]."""
    R, delta = float(r), 0.0
    radii, ins, outs = [], [], []
    lips = [1.0] * len(norms_W) if lips is None else lips
    for nW, nE, neb, nb, L in zip(norms_W, norms_E, norms_eb, norms_b, lips):
        eta = (R + delta) * nE + neb
        new_delta = L * (nW * delta + eta)
        radii.append(R)
        ins.append(delta)
        outs.append(new_delta)
        delta = new_delta
        R = L * (nW * R + nb)
    return radii, ins, outs


def layer_step(R: float, delta: float, nW: float, nE: float, neb: float, nb: float) -> tuple[float, float]:
    """One conv2d/linear of the ball recursion: (R', δ') = (‖W‖R + ‖b‖, ‖W‖δ + (R + δ)‖E‖ + ‖e_b‖)
    (see :func:`compose`; a ReLU after it is applied by the caller, and changes neither)."""
    return nW * R + nb, nW * delta + (R + delta) * nE + neb


def add_step(body: tuple[float, float], shortcut: tuple[float, float]) -> tuple[float, float]:
    """A residual add: (R_body + R_shortcut, δ_body + δ_shortcut) (proof in :func:`compose_graph`)."""
    return body[0] + shortcut[0], body[1] + shortcut[1]


def compose_graph(ops: list[dict], kinds: list, norms: list[tuple], r: float, input_shape):
    """The ball recursion of :func:`compose` on a network with residual adds (a canonical
    architecture list, :mod:`subsetsum_lth.ops`), a pure function of per-layer norms.

    State: for the input x of an op, ``R ≥ ‖f_•(x)‖`` (the target's activation there) and
    ``δ ≥ ‖f_•(x) − ĝ_•(x)‖`` (the error of the pruned network's activation), for every x in the
    ball ``‖x‖ ≤ r``; initially (r, 0).

    * conv2d/linear k with ``norms[k] = (‖W‖, ‖[E⁺ E⁻]‖, ‖e_b‖, ‖b‖)`` (ĝ computes
      ``Ŵ⁺y⁺ + Ŵ⁻y⁻ + b̂`` with ``W − Ŵ^± = E^±``; for a non-negative input y = y⁺):
      ``‖Wy + b − Ŵŷ − b̂‖ ≤ ‖W(y − ŷ)‖ + ‖E(ŷ⁺, ŷ⁻)‖ + ‖e_b‖ ≤ ‖W‖δ + ‖E‖(R + δ) + ‖e_b‖``
      since ‖ŷ‖ ≤ ‖y‖ + ‖y − ŷ‖ ≤ R + δ, and ``‖Wy + b‖ ≤ ‖W‖R + ‖b‖`` (:func:`layer_step`).
    * ReLU: 1-Lipschitz and ReLU(0) = 0, so (R, δ) is kept.
    * a pool / flatten with Lipschitz constant L (:meth:`subsetsum_lth.layerkinds.Op.lipschitz`,
      op(0) = 0): (L·R, L·δ).
    * a residual add ``B(y) + S(y)`` (S = identity for an empty shortcut): run each branch from
      the same (R, δ) — each branch's own layers give its own factors, so a branch's Lipschitz
      constant is never borrowed from the other — to (R_B, δ_B), (R_S, δ_S); then by the
      triangle inequality ``‖B(y) + S(y)‖ ≤ R_B + R_S`` and
      ``‖B(y) + S(y) − B̂(ŷ) − Ŝ(ŷ)‖ ≤ ‖B(y) − B̂(ŷ)‖ + ‖S(y) − Ŝ(ŷ)‖ ≤ δ_B + δ_S``
      (:func:`add_step`). Both are attained when the two branches' errors (or outputs) point the
      same way, e.g. 1-d linear branches with errors of one sign (tests/test_residual_certify.py).

    The final δ bounds sup over the ball of ‖f(x) − ĝ(x)‖. Returns (radii_in, bounds_in,
    bounds_out, R_final, δ_final) with one entry per conv2d/linear (forward order) in the
    three lists (bounds_out before any ReLU/pool after the layer)."""
    radii, ins, outs = [], [], []
    counter = [0]

    def walk(seq, R, delta, shape):
        for op in seq:
            name = op["op"]
            if name in ("linear", "conv2d"):
                k = counter[0]
                counter[0] += 1
                radii.append(R)
                ins.append(delta)
                R, delta = layer_step(R, delta, *norms[k])
                outs.append(delta)
                shape = kinds[k].out_shape
            elif name == "residual":
                b = walk(op["body"], R, delta, shape)
                sc = walk(op["shortcut"], R, delta, shape)
                R, delta = add_step(b[:2], sc[:2])
                shape = b[2]
            elif name in ("maxpool2d", "avgpool2d"):
                L = op_lipschitz(op, shape)
                R, delta = L * R, L * delta
                c, h, w = shape
                shape = (c, (h - op["kernel"][0]) // op["stride"][0] + 1, (w - op["kernel"][1]) // op["stride"][1] + 1)
            elif name == "flatten":
                shape = (int(np.prod(shape)),)
        return R, delta, shape

    R, delta, _ = walk(ops, float(r), 0.0, tuple(int(v) for v in input_shape))
    return radii, ins, outs, R, delta


def error_matrix(W: np.ndarray, M: LayerMap, signed: bool) -> np.ndarray:
    """[E⁺ E⁻] (q × 2p) for a layer with signed inputs, E⁺ alone where inputs are ≥ 0."""
    Ep = W - M.w_plus
    Em = W - M.w_minus
    return np.hstack([Ep, Em]) if signed else Ep


def ball_set(input_radius: float, input_domain: str) -> str:
    """The set a ball certificate is over, in words: '‖x‖₂ ≤ 17.18, x ≥ 0' (non-negative domain)
    or '‖x‖₂ ≤ 1' (signed)."""
    return f"‖x‖₂ ≤ {float(input_radius):.4g}" + (", x ≥ 0" if input_domain == "nonnegative" else "")


def in_ball(x: np.ndarray, input_radius: float, input_domain: str) -> np.ndarray:
    """Which rows of ``x`` lie in the set of :func:`ball_set` (a boolean per row)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    inside = np.linalg.norm(x, axis=1) <= float(input_radius) * (1 + NUMERIC_SLACK)
    if input_domain == "nonnegative":
        inside &= (x >= 0).all(axis=1)
    return inside


def certified_bound(target: Target, maps: list[LayerMap], input_radius: float,
                    input_domain: str, bar=None) -> Certificate:
    """sup over ‖x‖ ≤ r (x ≥ 0 for the non-negative domain) of ‖f(x) − ĝ(x)‖, bounded by
    δ_{i+1} = ‖W_i‖ δ_i + η_i(R_i + δ_i), R_{i+1} = ‖W_i‖ R_i + ‖b_i‖,
    η_i(ρ) = ρ ‖[E⁺ E⁻]‖₂ + ‖e_b‖ (E⁻ dropped where inputs are known non-negative). With an
    input op (``target.preprocessing``) the ball is that of ``forward``'s inputs and the recursion
    starts from its image's ball, R_1 = max(a)·r + ‖c‖₂ (:meth:`Target.network_ball`)."""
    if len(maps) != target.depth:
        raise RunFolderError(f"the run has {len(maps)} layer pairs but the target has {target.depth} layers")
    # an input op (declared preprocessing) maps the ball into the layers' input ball (preprocess.py)
    net_radius, net_domain = target.network_ball(input_radius, input_domain)
    rows = []
    signed_in = target.signed_inputs(net_domain)
    for i, (L, M) in enumerate(zip(target.layers, maps)):
        W = L.weight
        b = np.zeros(W.shape[0]) if L.bias is None else L.bias
        if M.w_plus.shape != W.shape:
            raise RunFolderError(f"layer {i}: pruned map has shape {M.w_plus.shape}, target {W.shape}")
        E = error_matrix(W, M, signed_in[i])
        e_b = b - M.bias
        kind = L.kind
        nW, how_W = kind.op_norm(W)
        nE, how_E = kind.op_norm(E)
        rep = math.sqrt(kind.bias_repeat)          # a conv bias is added at every output pixel
        lip = 1.0
        for op in target.ops_after(i):
            lip *= op.lipschitz()
        rows.append((nW, nE, rep * float(np.linalg.norm(e_b)), rep * float(np.linalg.norm(b)), E, e_b,
                     lip, how_W, how_E))
        advance(bar)
    nWs, nEs, nebs, nbs = ([r[k] for r in rows] for k in range(4))
    if target.graph is not None:
        radii, ins, outs, _, final = compose_graph(target.graph, [L.kind for L in target.layers],
                                                    list(zip(nWs, nEs, nebs, nbs)), float(net_radius),
                                                    target.input_shape)
    else:
        radii, ins, outs = compose(nWs, nEs, nebs, nbs, float(net_radius), [r[6] for r in rows])
        final = outs[-1] if outs else 0.0
    details = []
    for i, (nW, nE, neb, _nb, E, e_b, lip, how_W, how_E) in enumerate(rows):
        d = {
            "layer": i, "weight_spectral_norm": nW, "error_spectral_norm": nE,
            "bias_error_norm": neb, "radius_in": radii[i], "bound_in": ins[i], "bound_out": outs[i],
            "max_weight_error": float(np.abs(E).max(initial=0.0)),
            "max_bias_error": float(np.abs(e_b).max(initial=0.0)),
        }
        if target.graph is not None:
            d["path"] = target.arch_indices()[i]
            d["signed_input"] = bool(signed_in[i])
        if target.layers[i].kind.name != "linear" or target.ops_after(i):
            d.update({"kind": target.layers[i].kind.name, "weight_norm_bound": how_W,
                      "error_norm_bound": how_E, "lipschitz_after": lip,
                      "ops_after": [op.name for op in target.ops_after(i)]})
        details.append(d)
    bound = final * (1 + NUMERIC_SLACK) + 1e-300
    return Certificate(bound, float(input_radius), input_domain, details)


def pruned_module(state: dict, masks: dict, depth_or_layout, dtype=torch.float64) -> nn.Sequential:
    """ĝ as a plain nn.Sequential with masks baked in (from the two state dicts). For an image
    network it takes N×C×H×W tensors; :func:`flat_input` wraps it for flat vectors."""
    layout = _layout(state, depth_or_layout)
    g = layout.module(state, masks, dtype)
    return g if layout.input_shape is None else flat_input(g, layout.input_shape)


def flat_input(module: nn.Module, input_shape) -> nn.Sequential:
    """``module`` preceded by an nn.Unflatten, so it takes flat vectors of C·H·W values."""
    return nn.Sequential(nn.Unflatten(1, tuple(input_shape)), *module) if isinstance(module, nn.Sequential) \
        else nn.Sequential(nn.Unflatten(1, tuple(input_shape)), module)


def _project(x: torch.Tensor, radius: float, nonneg: bool) -> torch.Tensor:
    if nonneg:
        x = x.clamp_min(0.0)
    norms = x.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return x * torch.clamp(radius / norms, max=1.0)


#: orthant vertices are enumerated exhaustively up to this input dimension (2^p patterns)
ALL_VERTICES_MAX_P = 12
#: radial scalings of the random starting points (0 is the centre: at x = 0 the error is ‖e_b‖ terms)
RADIAL_SCALES = (0.0, 0.125, 0.25, 0.5, 0.75)


def orthant_vertices(p: int, radius: float, nonneg: bool, n: int, rng: np.random.Generator) -> np.ndarray:
    """r·s/‖s‖ for sign patterns s: all 2^p of them (0/1 patterns without 0 for the non-negative
    domain) when p <= ALL_VERTICES_MAX_P, else ``n`` random ones."""
    if p <= ALL_VERTICES_MAX_P:
        s = ((np.arange(2 ** p)[:, None] >> np.arange(p)) & 1).astype(np.float64)
        s = s[s.sum(axis=1) > 0] if nonneg else 2 * s - 1
    elif nonneg:
        s = (rng.random((n, p)) < rng.random((n, 1))).astype(np.float64)
        s[s.sum(axis=1) == 0, 0] = 1.0
    else:
        s = rng.choice([-1.0, 1.0], size=(n, p))
    return radius * s / np.linalg.norm(s, axis=1, keepdims=True)


def candidate_points(p: int, radius: float, nonneg: bool, n: int, rng: np.random.Generator) -> np.ndarray:
    """The starting points of the empirical search: the centre x = 0, random points on the sphere
    (within the orthant for the non-negative domain), orthant vertices (all sign patterns for small
    p), and radial scalings of the sphere points and vertices (interior maxima: where the ReLUs of
    f and ĝ switch off on the sphere, the error can peak inside the ball)."""
    g = rng.standard_normal((n, p))
    if nonneg:
        g = np.abs(g)
    sphere = radius * g / np.linalg.norm(g, axis=1, keepdims=True)
    vertices = orthant_vertices(p, radius, nonneg, n, rng)
    k = max(1, n // 4)
    seeds = np.vstack([sphere[:k], vertices[:k]])
    inner = [seeds * c for c in RADIAL_SCALES if c > 0]
    return np.vstack([np.zeros((1, p)), sphere, vertices, *inner])


def empirical_bound(target: Target, g: nn.Module, input_radius: float, input_domain: str,
                    data: np.ndarray | None = None, samples: int = 512, steps: int = 100,
                    starts: int = 16, seed: int = 0, return_points: int = 0, bar=None) -> dict:
    """A lower bound on sup ‖f − ĝ‖ over the ball: the max over :func:`candidate_points` (the
    centre, sphere points, orthant vertices, radial scalings), given data points (clipped to the
    ball), then projected gradient ascent from the worst starting points. Computed in float64.
    ``witness`` in the result: the best point x* (float64, shape (p,)) and its error."""
    nonneg = input_domain == "nonnegative"
    rng = np.random.default_rng(seed)
    p = target.input_dim
    # the candidate points, their projection and a float64 copy, each samples x p float64
    limits.check_memory(float(samples) * p * 8 * 4, f"--samples {samples:,} random points of {p:,} inputs",
                        "use fewer --samples")
    pts = [candidate_points(p, input_radius, nonneg, samples, rng)]
    if data is not None and len(data):
        d = np.asarray(data, dtype=np.float64).reshape(len(data), -1)
        pts.append(d)
    X = torch.as_tensor(np.vstack(pts), dtype=torch.float64)
    X = _project(X, input_radius, nonneg)
    g = g.to(torch.float64)

    def err(x):
        return (target.forward(x) - g(x)).norm(dim=1)

    with torch.no_grad():
        rows = target.chunk_rows()     # 4096, fewer for a wide conv target (memory)
        e = torch.cat([err(X[i:i + rows]) for i in range(0, len(X), rows)])
    best = float(e.max())
    best_src = "centre (x = 0)" if int(torch.argmax(e)) == 0 else "samples"
    k = min(starts, len(X))
    x = X[torch.topk(e, k).indices].clone().requires_grad_(True)
    step = 0.05 * input_radius
    for t in range(steps):
        loss = err(x).sum()
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            gn = grad.norm(dim=1, keepdim=True).clamp_min(1e-300)
            x_new = _project(x + step * (0.98 ** t) * grad / gn, input_radius, nonneg)
            x.copy_(x_new)
        advance(bar)
    with torch.no_grad():
        e2 = err(x)
    x_best = X[int(torch.argmax(e))]
    if float(e2.max()) > best:
        best, best_src = float(e2.max()), "gradient ascent"
        x_best = x[int(torch.argmax(e2))]
    out = {"empirical_bound": best, "source": best_src, "points": int(len(X)), "ascent_steps": steps,
           "witness": {"x": x_best.detach().clone().numpy(), "error": best}}
    if return_points:
        allx = torch.cat([X, x.detach()])
        alle = torch.cat([e, e2])
        out["top_points"] = allx[torch.topk(alle, min(return_points, len(allx))).indices]
    return out


def check_soundness(empirical: float, certified: float) -> None:
    """Empirical > certified is a bug in this package: fail loudly."""
    if not math.isfinite(empirical) or empirical > certified * (1 + 1e-6) + 1e-9:
        raise CertificateViolation(
            f"empirical error {empirical:.6g} exceeds the certified bound {certified:.6g}; "
            "this is a bug in subsetsum-lth — please report it with the run folder")


class CollapsedNet(nn.Module):
    """ĝ computed through its exact layer maps (Lemma 1): x ↦ Ŵ⁺x⁺ + Ŵ⁻x⁻ + b̂ (each applied
    as its layer's kind: a matrix, or a convolution with the kernel of that shape), ReLU between
    layers, the target's pooling/flatten unchanged. Equal to the pruned network in exact
    arithmetic and orders of magnitude cheaper than the wide dense network; results taken from
    it are spot-checked against ĝ itself. Takes flat inputs (N, input_dim)."""

    def __init__(self, maps: list[LayerMap], dtype=torch.float64, target: Target | None = None):
        super().__init__()
        self.wp = [torch.as_tensor(M.w_plus, dtype=dtype) for M in maps]
        self.wm = [torch.as_tensor(M.w_minus, dtype=dtype) for M in maps]
        self.b = [torch.as_tensor(M.bias, dtype=dtype) for M in maps]
        self.signed = [bool(np.any(M.w_minus)) for M in maps]
        #: the target's input op, applied first (ĝ takes the same inputs as ``target.forward``)
        self.input_op = None
        if target is None:
            self.kinds = [Linear(M.w_plus.shape[1], M.w_plus.shape[0]) for M in maps]
            self.after = [[] for _ in maps]
        else:
            self.kinds = [L.kind for L in target.layers]
            self.after = [target.ops_after(i) for i in range(len(maps))]
            self.input_op = target.preprocessing
        self.graph = None if target is None else target.graph
        self.input_shape = None if target is None else target.input_shape

    def _layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        dt = h.dtype
        kind = self.kinds[i]
        out = kind.apply(h.clamp_min(0), self.wp[i].to(dt), self.b[i].to(dt))
        if self.signed[i]:
            out = out + kind.apply(h.clamp_max(0), self.wm[i].to(dt), None)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.input_op is None else self.input_op.transform(x)
        if self.graph is not None:
            h = forward_graph(self.graph, h.reshape(h.shape[0], *self.input_shape), self._layer)
            return h.reshape(h.shape[0], -1)
        n = len(self.wp)
        for i, kind in enumerate(self.kinds):
            dt = h.dtype
            out = kind.apply(h.clamp_min(0), self.wp[i].to(dt), self.b[i].to(dt))
            if self.signed[i]:
                out = out + kind.apply(h.clamp_max(0), self.wm[i].to(dt), None)
            h = torch.relu(out) if i < n - 1 else out
            for op in self.after[i]:
                h = op.apply(h)
        return h.reshape(h.shape[0], -1)


def empirical_bound_fast(target: Target, maps: list[LayerMap], g: nn.Module, input_radius: float,
                         input_domain: str, data=None, samples=512, steps=100, starts=16, seed=0,
                         recheck: int = 64, bar=None) -> dict:
    """The empirical search run on the collapsed network, then the best points re-evaluated on
    ĝ itself (float64): the reported value is an error of the real pruned network."""
    collapsed = CollapsedNet(maps, target=target)
    res = empirical_bound(target, collapsed, input_radius, input_domain, data=data, samples=samples,
                          steps=steps, starts=starts, seed=seed, return_points=recheck, bar=bar)
    pts = res.pop("top_points")
    with torch.no_grad():
        real = (target.forward(pts) - g.to(torch.float64)(pts)).norm(dim=1)
        coll = (target.forward(pts) - collapsed(pts)).norm(dim=1)
    res["empirical_bound"] = float(real.max())
    res["witness"] = {"x": pts[int(torch.argmax(real))].detach().clone().numpy(), "error": float(real.max())}
    res["collapsed_vs_real_max_diff"] = float((real - coll).abs().max())
    res["rechecked_points"] = int(len(pts))
    return res
