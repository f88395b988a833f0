"""The box certificate for any target built of the ops of :mod:`subsetsum_lth.box_ops` (CNNs:
conv2d, max/average pooling, flatten, linear, ReLU): the pair (f, ĝ) as a chain of op objects
(:func:`op_chain`), intermediate bounds by differential CROWN over chunks of objectives (memory
bounded: at most :data:`CHUNK_ELEMENTS` coefficients per tensor, whatever the width of the maps),
the output intervals by α-CROWN (the ReLUs' α/θ optimised), the ℓ2 bound of the intervals.

The MLP path of :mod:`subsetsum_lth.certify_box` (with its zonotope) is unchanged; on an MLP this
chain gives the same intervals (``tests/test_box_cnn.py`` checks it).

A residual target is a graph (:func:`op_graph`: each op with the ops it reads; a block's body and
shortcut read one fork and meet at an :class:`AddOp`): the same functions take its ``inputs`` and
walk it in reverse topological order, an add handing its coefficients to both branches and the
fork summing them (docs/certificate.md, "Residual networks").
"""
from __future__ import annotations

import time

import numpy as np
import torch

from subsetsum_lth.box_crown import DT, Bounds, _argmin_corner, _concretize, _split_of, adam_ascent, box_arrays
from subsetsum_lth.box_ops import (AddOp, AvgPool2dOp, BoxOp, Conv2dOp, FlattenOp, LinearOp, MaxPool2dOp,
                                   ReluOp, op_class)
from subsetsum_lth.certify import LayerMap
from subsetsum_lth.errors import RunFolderError, UserError
from subsetsum_lth.progress import note
from subsetsum_lth.target import Layer, Target

#: at most this many coefficients in one (B, m, n) tensor of an intermediate-bound pass
CHUNK_ELEMENTS = 4_000_000


def _param_op(i: int, L: Layer, M: LayerMap, split: str) -> BoxOp:
    """The pair's op of conv2d/linear layer i (f's weights W, ĝ's W̃; layer 0 reads X as ``split`` says)."""
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=DT)
    kind = L.kind
    if M.w_plus.shape != L.weight.shape:
        raise RunFolderError(f"layer {i}: pruned map has shape {M.w_plus.shape}, target {L.weight.shape}")
    W = t(L.weight)
    b = torch.zeros(W.shape[0], dtype=DT) if L.bias is None else t(L.bias)
    Wp, Wm, bg = t(M.w_plus), t(M.w_minus), t(M.bias)
    if i == 0 and split == "both":
        Wf, Wg = torch.cat([W, W], 1), None
    else:
        Wf, Wg = W, (Wm if (i == 0 and split == "minus") else Wp)
    if kind.name == "linear":
        if Wg is None:
            Wg = torch.cat([Wp, Wm], 1)
        return LinearOp(Wf, b, Wg, bg)
    op_class(kind.name)
    ks = kind.weight_shape()
    K = lambda A: A.reshape(ks)
    if i == 0 and split == "both":
        kf, kg = torch.cat([K(W), K(W)], 1), torch.cat([K(Wp), K(Wm)], 1)
        shape = (2 * kind.in_channels, *kind.in_hw)
    else:
        kf, kg, shape = K(W), K(Wg), kind.in_shape
    return Conv2dOp(kf, b, kg, bg, shape, kind.stride, kind.padding)


def op_chain(target: Target, maps: list[LayerMap], split: str = "plus") -> list[BoxOp]:
    """The pair (f, ĝ) as op objects. The first parametric op acts on X: x ('plus'), x⁻ ('minus')
    or (x⁺, x⁻) stacked as extra input channels / columns ('both')."""
    if target.graph is not None:        # a chain of its layers would drop the skip connections' adds
        raise ValueError("op_chain on a residual target; use op_graph")
    if len(maps) != target.depth:
        raise RunFolderError(f"the run has {len(maps)} layer pairs but the target has {target.depth} layers")
    ops: list[BoxOp] = []
    for i, (L, M) in enumerate(zip(target.layers, maps)):
        ops.append(_param_op(i, L, M, split))
        shape = ops[-1].out_shape
        if i < target.depth - 1:
            ops.append(ReluOp(shape))
        for op in target.ops_after(i):
            op_class(op.name)
            if op.name == "flatten":
                ops.append(FlattenOp(shape))
            elif op.name == "maxpool2d":
                ops.append(MaxPool2dOp(shape, op.kernel, op.stride))
            else:
                ops.append(AvgPool2dOp(shape, op.kernel, op.stride))
            shape = ops[-1].out_shape
    return ops


def op_graph(target: Target, maps: list[LayerMap], split: str = "plus") -> tuple[list[BoxOp], list[list[int]]]:
    """A residual target's pair (f, ĝ) as a graph of op objects in forward (topological) order and,
    per op, the indices of the ops it reads (-1: X). A residual op ``{"body", "shortcut"}`` becomes
    its body's ops, its shortcut's ops (none for an identity: the add reads the fork itself), both
    reading the fork, and an :class:`AddOp` reading the two branches' last ops. The layers' maps are
    used as :func:`op_chain` does (ĝ's hidden layers are W̃⁺: every hidden layer's input must be
    non-negative, i.e. after a ReLU; one clear error otherwise)."""
    if len(maps) != target.depth:
        raise RunFolderError(f"the run has {len(maps)} layer pairs but the target has {target.depth} layers")
    check_box_graph(target)
    ops: list[BoxOp] = []
    inputs: list[list[int]] = []
    counter = [0]

    def push(op: BoxOp, src: list[int]) -> int:
        ops.append(op)
        inputs.append(src)
        return len(ops) - 1

    def walk(seq, node: int, shape: tuple) -> tuple[int, tuple]:
        for op in seq:
            name = op["op"]
            if name in ("conv2d", "linear"):
                i = counter[0]
                counter[0] += 1
                node = push(_param_op(i, target.layers[i], maps[i], split), [node])
            elif name == "relu":
                node = push(ReluOp(shape), [node])
            elif name == "flatten":
                node = push(FlattenOp(shape), [node])
            elif name in ("maxpool2d", "avgpool2d"):
                cls = MaxPool2dOp if name == "maxpool2d" else AvgPool2dOp
                node = push(cls(shape, op["kernel"], op.get("stride") or op["kernel"]), [node])
            elif name == "residual":
                body, b_shape = walk(op["body"], node, shape)
                short, s_shape = walk(op["shortcut"], node, shape)
                if tuple(b_shape) != tuple(s_shape):
                    raise RunFolderError(f"a residual block's body gives {b_shape} but its shortcut {s_shape}")
                node = push(AddOp(b_shape), [body, short])
            else:
                op_class(name)
                raise UserError(f"the box certificate has no bounds for op {name!r}")   # pragma: no cover
            shape = ops[node].out_shape
        return node, shape

    shape = tuple(target.input_shape) if target.input_shape is not None else (target.input_dim,)
    walk(target.graph, -1, shape)
    return ops, inputs


def check_box_graph(target: Target) -> None:
    """One clear error for a residual target the box certificate cannot bound: a layer past the
    first whose input can be negative (ĝ splits its input's signs there, a relaxation not written)."""
    if target.graph is None:
        return
    for i, s in enumerate(target.signed_inputs("nonnegative")):
        if i > 0 and s:
            raise UserError(f"the box certificate needs a ReLU before every conv2d/linear but the first; layer {i} "
                            f"({target.arch_indices()[i]}) reads a value that can be negative (an add or a "
                            "conv2d/linear without a ReLU after it); certify the ball (--input-domain nonnegative)")


def cut_nodes(inputs: list[list[int]]) -> set[int]:
    """The ops every path from X to the output passes through (no later op reads an earlier one)."""
    cuts, low = set(), len(inputs)
    for j in range(len(inputs) - 1, -1, -1):
        if low >= j:
            cuts.add(j)
        low = min([low] + [s for s in inputs[j]])
    return cuts


def input_box(split: str, lo: torch.Tensor, hi: torch.Tensor):
    """The box of X for boxes of x (B, p) (as :meth:`subsetsum_lth.box_crown.DiffNet.input_box`)."""
    if split != "both":
        return lo, hi
    return (torch.cat([lo.clamp_min(0), lo.clamp_max(0)], -1), torch.cat([hi.clamp_min(0), hi.clamp_max(0)], -1))


def backward(ops: list[BoxOp], bounds: list, k: int, lam_z, lam_d, Xlo, Xhi, split: str, params=None,
             stop: int = -1, inputs: list[list[int]] | None = None):
    """Lower bound (B, m) of Λz·x'_k + Λd·d_k over the box (x'_k, d_k: op k's output) and the
    coefficients on X. ``bounds[j]``: bounds of op j's output (None where not needed). ``stop`` >= 0:
    go back to op ``stop``'s output only and minimise there over its bounds (x' and d each over
    their interval: sound, looser, much cheaper); the coefficients returned are then on that output.
    ``inputs``: a graph's (:func:`op_graph`) inputs per op; None for a chain."""
    if inputs is not None:
        return _backward_graph(ops, bounds, k, lam_z, lam_d, Xlo, Xhi, split, params, stop, inputs)
    const = torch.zeros(lam_z.shape[:2], dtype=DT)
    for j in range(k, stop, -1):
        b_in = bounds[j - 1] if j > 0 else None
        p = None if params is None else params[j]
        lam_z, lam_d, c = ops[j].backward(lam_z, lam_d, b_in, p)
        const = const + c
    return _finish(const, lam_z, lam_d, bounds, Xlo, Xhi, split, stop)


def _finish(const, lam_z, lam_d, bounds, Xlo, Xhi, split, stop):
    if stop >= 0:
        b = bounds[stop].map(lambda t: t[:, None, :])
        lo = (lam_z.clamp_min(0) * b.l + lam_z.clamp_max(0) * b.u).sum(-1)
        return const + lo + (lam_d.clamp_min(0) * b.dl + lam_d.clamp_max(0) * b.du).sum(-1), lam_z
    return const + _concretize(lam_z, Xlo, Xhi, split), lam_z


def _accumulate(pending: dict, j: int, lam_z, lam_d) -> None:
    """Add an objective's coefficients on op j's output to those already there (a fork's branches)."""
    if j in pending:
        z, d = pending[j]
        pending[j] = (z + lam_z, d + lam_d)
    else:
        pending[j] = (lam_z, lam_d)


def _backward_graph(ops, bounds, k, lam_z, lam_d, Xlo, Xhi, split, params, stop, inputs):
    """:func:`backward` on a graph: the ops in reverse topological order, each op's coefficients on
    its output the sum over the ops that read it (at a residual block's fork: the body's and the
    shortcut's); an :class:`AddOp` hands its coefficients to both of its inputs. ``stop`` must be a
    cut (:func:`cut_nodes`)."""
    const = torch.zeros(lam_z.shape[:2], dtype=DT)
    pending = {k: (lam_z, lam_d)}
    for j in range(k, stop, -1):
        if j not in pending:
            continue
        lz, ld = pending.pop(j)
        src = inputs[j]
        if isinstance(ops[j], AddOp):
            (z1, d1), (z2, d2), c = ops[j].backward(lz, ld)
            _accumulate(pending, src[0], z1, d1)
            _accumulate(pending, src[1], z2, d2)
        else:
            b_in = bounds[src[0]] if src[0] >= 0 else None
            z, d, c = ops[j].backward(lz, ld, b_in, None if params is None else params[j])
            _accumulate(pending, src[0], z, d)
        const = const + c
    if set(pending) != {stop}:
        raise RuntimeError(f"backward pass to op {stop} left coefficients on ops {sorted(pending)}")
    lam_z, lam_d = pending[stop]
    return _finish(const, lam_z, lam_d, bounds, Xlo, Xhi, split, stop)


def _chunk(n_units: int, widest: int, per_unit: int) -> int:
    return max(1, min(n_units, CHUNK_ELEMENTS // (per_unit * max(widest, 1))))


def hidden_bounds(ops: list[BoxOp], Xlo, Xhi, split: str, twin: bool = False, ibp: bool | int = False,
                  inputs: list[list[int]] | None = None) -> list:
    """Bounds of every op's output that a later op's relaxation needs: CROWN (default slopes) for
    the affine ops' outputs, in chunks of units; :meth:`BoxOp.interval` for the others (and for
    the first affine op when X is x itself: exact there; for every op with ``ibp`` True, for the ops
    after op ``ibp`` when it is an int). ``twin``: f and ĝ
    are the same network (d ≡ 0), only z' is bounded. ``inputs``: a graph's (:func:`op_graph`)."""
    if inputs is not None:
        return _hidden_bounds_graph(ops, Xlo, Xhi, split, twin, ibp, inputs)
    bounds: list = [None] * len(ops)
    zero = torch.zeros_like(Xlo)
    X = Bounds(Xlo, Xhi, zero, zero, Xlo, Xhi)
    for k, op in enumerate(ops[:-1]):
        use_ibp = ibp is True or (ibp is not False and k > ibp)
        if not op.affine or use_ibp or (k == 0 and split != "both"):
            bounds[k] = op.interval(bounds[k - 1] if k else X)
            continue
        bounds[k] = _crown_bounds(ops, bounds, k, Xlo, Xhi, split, twin, None)
    return bounds


def _crown_bounds(ops, bounds, k, Xlo, Xhi, split, twin, inputs):
    """CROWN (default slopes) bounds of op k's output, in chunks of units (memory bounded)."""
    B = Xlo.shape[0]
    widest = max(max(op.n_in, op.n_out) for op in ops)
    n = ops[k].n_out
    parts = []
    kinds = 2 if twin else 6
    step = _chunk(n, widest, kinds * B)
    for s in range(0, n, step):
        c = min(step, n - s)
        I = torch.zeros(c, n, dtype=DT)
        I[torch.arange(c), s + torch.arange(c)] = 1.0
        I = I.expand(B, c, n)
        Z = torch.zeros_like(I)
        if twin:
            v, _ = backward(ops, bounds, k, torch.cat([I, -I], 1), torch.cat([Z, Z], 1), Xlo, Xhi, split,
                            inputs=inputs)
            parts.append(v.reshape(B, 2, c))
            continue
        lam_z = torch.cat([I, -I, Z, Z, I, -I], 1)
        lam_d = torch.cat([Z, Z, I, -I, I, -I], 1)
        v, _ = backward(ops, bounds, k, lam_z, lam_d, Xlo, Xhi, split, inputs=inputs)
        parts.append(v.reshape(B, 6, c))
    v = torch.cat(parts, 2)
    if twin:
        l, u = v[:, 0], -v[:, 1]
        zero = torch.zeros_like(l)
        return Bounds(l, u, zero, zero, l, u)
    l, u, dl, du, lf, uf = v[:, 0], -v[:, 1], v[:, 2], -v[:, 3], v[:, 4], -v[:, 5]
    return Bounds(l, u, dl, du, torch.maximum(lf, l + dl), torch.minimum(uf, u + du))


def _meet(a: Bounds, b: Bounds) -> Bounds:
    """The intersection of two sound bounds of the same values."""
    return Bounds(torch.maximum(a.l, b.l), torch.minimum(a.u, b.u), torch.maximum(a.dl, b.dl),
                  torch.minimum(a.du, b.du), torch.maximum(a.lf, b.lf), torch.minimum(a.uf, b.uf))


def _hidden_bounds_graph(ops, Xlo, Xhi, split, twin, ibp, inputs) -> list:
    """:func:`hidden_bounds` on a graph: every op's interval bounds from its inputs' (an add: the
    sum of its branches'), and CROWN bounds, intersected with them, for every op whose output a
    ReLU or a max pool reads (its relaxation needs them) unless ``ibp`` says intervals, or the op
    reads X alone through exact first-layer intervals."""
    bounds: list = [None] * len(ops)
    zero = torch.zeros_like(Xlo)
    X = Bounds(Xlo, Xhi, zero, zero, Xlo, Xhi)
    readers: list[list[int]] = [[] for _ in ops]
    for j, src in enumerate(inputs):
        for s in src:
            if s >= 0:
                readers[s].append(j)
    for k, op in enumerate(ops[:-1]):
        src = inputs[k]
        if isinstance(op, AddOp):
            iv = op.interval2(bounds[src[0]], bounds[src[1]])
        else:
            iv = op.interval(bounds[src[0]] if src[0] >= 0 else X)
        use_ibp = ibp is True or (ibp is not False and k > ibp)
        needed = any(ops[r].name in ("relu", "maxpool2d") for r in readers[k])
        exact = src == [-1] and split != "both"
        if use_ibp or not needed or exact or not (op.affine or isinstance(op, AddOp)):
            bounds[k] = iv
            continue
        bounds[k] = _meet(_crown_bounds(ops, bounds, k, Xlo, Xhi, split, twin, inputs), iv)
    return bounds


def optimise(ops, bounds, lam_z, lam_d, Xlo, Xhi, split, iters: int, lr: float, deadline: float | None,
             inputs: list[list[int]] | None = None):
    """α-CROWN on the output objectives: Adam on the ReLUs' α/θ (projected to [0, 1]); the best
    bound per objective over all iterates (each a sound bound) and its X coefficients."""
    k = len(ops) - 1
    with torch.no_grad():
        best, best_cX = backward(ops, bounds, k, lam_z, lam_d, Xlo, Xhi, split, inputs=inputs)
    m = lam_z.shape[1]
    params, leaves = [None] * len(ops), []
    for j, op in enumerate(ops):
        if j == 0 or not isinstance(op, ReluOp):
            continue
        bb = bounds[j - 1 if inputs is None else inputs[j][0]].map(lambda t: t[:, None, :].expand(-1, m, -1))
        p = {key: v.clone().requires_grad_(True) for key, v in op.default_params(bb).items()}
        params[j] = p
        leaves += list(p.values())
    if iters <= 0 or not leaves:
        return best, best_cX, 0
    return adam_ascent(lambda: backward(ops, bounds, k, lam_z, lam_d, Xlo, Xhi, split, params, inputs=inputs),
                       leaves, best, best_cX, iters, lr, deadline)


def chain_intervals(target: Target, maps: list[LayerMap], lo, hi, iters: int = 60, lr: float = 0.1,
                    time_budget: float | None = None, progress=None):
    """Sound per-output intervals of (f − ĝ)_k over the box, the X-corner minimising each
    objective's final linear bound, and an info dict (as :func:`certify_box.output_intervals`)."""
    p = target.input_dim
    lo, hi = box_arrays(lo, hi, p)
    split = _split_of(lo, hi)
    ops, inputs = (op_chain(target, maps, split), None) if target.graph is None else op_graph(target, maps, split)
    Xlo, Xhi = input_box(split, torch.as_tensor(lo, dtype=DT)[None], torch.as_tensor(hi, dtype=DT)[None])
    t0 = time.perf_counter()
    with torch.no_grad():
        bounds = hidden_bounds(ops, Xlo, Xhi, split, inputs=inputs)
    deadline = None if time_budget is None else time.perf_counter() + time_budget   # α's own budget
    note(progress, f"box certificate: hidden bounds of {len(ops)} ops done ({time.perf_counter() - t0:.0f} s); "
                   f"alpha-CROWN on the outputs")
    q = ops[-1].n_out
    I = torch.eye(q, dtype=DT)[None]
    lam_d = torch.cat([I, -I], 1)
    val, cX, done = optimise(ops, bounds, torch.zeros_like(lam_d), lam_d, Xlo, Xhi, split, iters, lr, deadline,
                             inputs=inputs)
    lower, upper = val[0, :q], -val[0, q:]
    corners = _argmin_corner(cX, Xlo, Xhi, split, p)
    return lower.numpy(), upper.numpy(), corners.numpy(), {"iterations": done, "hidden_bounds": bounds,
                                                           "ops": [op.name for op in ops]}


#: unit roundoff of float64
UNIT_ROUNDOFF = 2.0 ** -53


def rounding_slack(target: Target, maps: list[LayerMap], lo, hi) -> np.ndarray:
    """Per output, a bound on the float64 rounding of a certificate of (f − ĝ)_k over the box of
    the layers' inputs [lo, hi]: 8 · n · u · (M_d + M_g), with u the unit roundoff, n the fan-ins
    of every affine op summed (plus the op count), and M_d, M_g the magnitudes of the terms the
    bounds sum — the interval bounds of d and of ĝ's values over the symmetric box [−A, A],
    A = max(|lo|, |hi|) (|W|A + |b| layer by layer). Negligible on pixel boxes (~1e-10 on
    LeNet-5 over [0, 1]^784); it dominates only where f − ĝ is ~1e-12 of the terms (inputs of
    ~1e8 and more: an outside audit found the plain relative widening short there)."""
    p = target.input_dim
    lo_a, hi_a = box_arrays(lo, hi, p)
    A = torch.as_tensor(np.maximum(np.abs(lo_a), np.abs(hi_a)), dtype=DT)[None]
    ops, inputs = (op_chain(target, maps, "both"), None) if target.graph is None else op_graph(target, maps, "both")
    Xlo, Xhi = input_box("both", -A, A)
    with torch.no_grad():
        bounds = hidden_bounds(ops, Xlo, Xhi, "both", ibp=True, inputs=inputs)
        src = len(ops) - 2 if inputs is None else inputs[-1][0]
        zero = torch.zeros_like(Xlo)
        out = ops[-1].interval(bounds[src] if src >= 0 else Bounds(Xlo, Xhi, zero, zero, Xlo, Xhi))
    M = (torch.maximum(out.dl.abs(), out.du.abs()) + torch.maximum(out.l.abs(), out.u.abs()))[0]
    n = len(ops) + sum(op.n_in if isinstance(op, LinearOp) else int(op.kf[0].numel())
                       for op in ops if op.affine)
    return (8 * n * UNIT_ROUNDOFF * M).numpy()


def twin_chain(target: Target, weights: list, biases: list) -> list[BoxOp]:
    """One network of the target's architecture (weights in each layer's matrix view) paired with
    itself (d ≡ 0; non-negative inputs): plain CROWN on it through :func:`backward`."""
    ops, inputs = twin_graph(target, weights, biases)
    if inputs is not None:
        raise ValueError("twin_chain on a residual target; use twin_graph")
    return ops


def twin_graph(target: Target, weights: list, biases: list,
               split: str = "plus") -> tuple[list[BoxOp], list[list[int]] | None]:
    """:func:`twin_chain` for any target: the ops and, for a residual target, their inputs
    (:func:`op_graph`); ``split`` as for :func:`op_chain` ('both' for inputs of either sign)."""
    layers = [Layer(np.asarray(W, dtype=np.float64), None if b is None else np.asarray(b, dtype=np.float64), L.kind_)
              for W, b, L in zip(weights, biases, target.layers)]
    t = Target(layers, after=target.after, input_shape=target.input_shape, graph=target.graph)
    maps = [LayerMap(L.weight, L.weight, np.zeros(L.weight.shape[0]) if L.bias is None else L.bias) for L in layers]
    if t.graph is None:
        return op_chain(t, maps, split), None
    return op_graph(t, maps, split)


def margin_objectives(cls: torch.Tensor, q: int) -> torch.Tensor:
    """(N, q−1, q) coefficients of the margins out_c − out_k, k ≠ c = ``cls`` (one row per point)."""
    N = len(cls)
    eye = torch.eye(q, dtype=DT)
    lam = eye[cls][:, None, :] - eye[None, :, :]
    keep = torch.ones(N, q, dtype=torch.bool)
    keep[torch.arange(N), cls] = False
    return lam[keep].reshape(N, q - 1, q)


def chain_robust_lower(ops: list[BoxOp], Xlo, Xhi, cls: torch.Tensor,
                       inputs: list[list[int]] | None = None) -> torch.Tensor:
    """Lower bounds (N, q−1) of out_c − out_k over the boxes [Xlo, Xhi] (N, p) of a twin chain
    (or graph, with its ``inputs``): interval bounds of the hidden ops (cheap for thousands of small
    balls), CROWN from the output back to the last conv/pooling op (on a graph: the last one that
    every path passes through, e.g. the pooling after the last residual block)."""
    # interval bounds of the hidden ops, and CROWN from the output back to the last conv/pooling
    # op's output (the wide maps are not crossed: CROWN bounds there cost ~100× more per image)
    cuts = set(range(len(ops))) if inputs is None else cut_nodes(inputs)
    stop = max((j for j, op in enumerate(ops) if op.name in ("conv2d", "maxpool2d", "avgpool2d") and j in cuts),
               default=-1)
    bounds = hidden_bounds(ops, Xlo, Xhi, "plus", twin=True, ibp=True, inputs=inputs)
    lam = margin_objectives(cls, ops[-1].n_out)
    val, _ = backward(ops, bounds, len(ops) - 1, lam, torch.zeros_like(lam), Xlo, Xhi, "plus", stop=stop,
                      inputs=inputs)
    return val
