"""Greedy forward selection (Ye, Gong, Nie, Zhu, Liu; ICML 2020, "Good Subnetworks Provably
Exist: Pruning via Greedy Forward Selection"), applied to the trained target.

A hidden layer with ``N`` neurons feeds the next pre-activation ``z = sum_j a_j(x) w_j``
(``w_j`` = column ``j`` of the next weight matrix) ``= (1/N) sum_j phi_j`` with
``phi_j = N a_j w_j``. Greedy forward selection builds a multiset ``S`` (repeats allowed) one
neuron at a time, each step picking the neuron that minimises the training loss of the
*average* ``u_k = (1/k) sum_{j in S_k} phi_j``. Layers are selected one after the other, from
the input side; the earlier layers stay pruned while a later one is selected; a layer stops
when its loss gap ``L(u_k) - L(full network) <= gap`` (or after ``k_max`` steps).

The generic step is :func:`greedy_average_selection`; its provable rate, for a loss that is
the squared distance ``ell(u) = ||u - y||^2`` (any fixed positive-semidefinite quadratic works
the same way), is, for every ``u'`` in the convex hull of the points and every ``k >= 1``::

    ell(u_k) - ell(u') <= D^2 H_k / (2 k),    H_k = 1 + 1/2 + ... + 1/k,  D = diam{phi_j}.

Derivation (Frank-Wolfe with step 1/k, greedy over vertices). Write ``u' = sum_j lam_j phi_j``
and ``gam = 1/k``. For a quadratic, averaging over ``j ~ lam`` is exact:

    sum_j lam_j ell((1-gam) u + gam phi_j) = ell((1-gam) u + gam u') + gam^2 V,
    V = sum_j lam_j ||phi_j - u'||^2 = (1/2) sum_{i,j} lam_i lam_j ||phi_i - phi_j||^2 <= D^2 / 2.

The greedy choice is at most this average, and convexity gives
``ell((1-gam) u + gam u') <= (1-gam) ell(u) + gam ell(u')``. With ``h_k = ell(u_k) - ell(u')``:
``h_1 <= V`` and ``h_k <= (1 - 1/k) h_{k-1} + V / k^2``, i.e. ``k h_k <= (k-1) h_{k-1} + V/k``,
so ``k h_k <= V H_k`` and ``h_k <= V H_k / k <= D^2 H_k / (2k)``. (For ``ell = ||u - y||^2 / 2``
the same steps give ``D^2 H_k / (4k)``.) Nothing here says the loss falls at every step, and it
need not: with two points and ``y`` their midpoint the loss is 0 at k = 2 and positive at k = 3.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from subsetsum_lth.target import Layer, Target

log = logging.getLogger(__name__)


def harmonic(k: int) -> float:
    return float(np.sum(1.0 / np.arange(1, k + 1)))


def rate_bound(k: int, diameter: float) -> float:
    """The provable gap of greedy selection after k steps for ``ell(u) = ||u - y||^2``:
    ``D^2 H_k / (2k)`` (see the module docstring)."""
    return diameter ** 2 * harmonic(k) / (2 * k)


def diameter(points: np.ndarray, norm: Callable[[np.ndarray], np.ndarray] | None = None) -> float:
    """Largest pairwise distance of the rows of ``points`` (Euclidean unless ``norm`` given)."""
    P = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    best = 0.0
    for i in range(len(P)):
        d = P[i + 1:] - P[i]
        if d.size:
            n = norm(d) if norm else np.sqrt((d * d).sum(axis=1))
            best = max(best, float(np.max(n)))
    return best


@dataclass
class GreedyPath:
    """One greedy run: the chosen indices in order (repeats allowed) and the loss after each."""

    chosen: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    extra: list[dict] = field(default_factory=list)   #: per-step records from ``on_step``
    stopped: str = ""

    def counts(self, n: int, k: int | None = None) -> np.ndarray:
        k = len(self.chosen) if k is None else k
        return np.bincount(np.asarray(self.chosen[:k], dtype=np.int64), minlength=n)


def greedy_average_selection(n_candidates: int, points: Callable[[np.ndarray], torch.Tensor],
                             loss: Callable[[torch.Tensor], torch.Tensor], k_max: int,
                             stop_loss: float | None = None, chunk: int = 64,
                             on_step: Callable[[int, int, torch.Tensor], dict | None] | None = None,
                             start: torch.Tensor | None = None,
                             candidate_losses: Callable[[np.ndarray, torch.Tensor | None, int], torch.Tensor]
                             | None = None) -> GreedyPath:
    """Greedy selection with repeats: ``u_k = (sum of chosen points) / k``, each step choosing
    ``argmin_j loss((S_{k-1} + phi_j) / k)`` (first index on ties).

    Args:
        points: index array -> tensor (c, *shape) of those candidates' points.
        loss: tensor (c, *shape) of candidate averages -> tensor (c,) of losses.
        stop_loss: stop as soon as the chosen average's loss is <= this.
        on_step: called with (k, chosen index, u_k) after each step; a returned dict is kept in
            ``path.extra``.
        start: sum of already chosen points (defaults to zero).
        candidate_losses: optional fast path, (index array, S_{k-1} or None, k) -> (c,) losses of
            ``(S_{k-1} + phi_j) / k``; must equal ``loss((S + points(idx)) / k)``.
    """
    path = GreedyPath()
    S = start
    for k in range(1, k_max + 1):
        best_val, best_j = float("inf"), -1
        for lo in range(0, n_candidates, chunk):
            idx = np.arange(lo, min(lo + chunk, n_candidates))
            if candidate_losses is not None:
                vals = candidate_losses(idx, S, k)
            else:
                P = points(idx)
                U = P if S is None else P + S.unsqueeze(0)
                vals = loss(U / k)
            v, a = torch.min(vals, dim=0)
            if float(v) < best_val:
                best_val, best_j = float(v), int(idx[int(a)])
        phi = points(np.array([best_j]))[0]
        S = phi.clone() if S is None else S + phi
        path.chosen.append(best_j)
        path.losses.append(best_val)
        if on_step is not None:
            rec = on_step(k, best_j, S / k)
            if rec:
                path.extra.append(rec)
        if stop_loss is not None and best_val <= stop_loss:
            path.stopped = f"loss gap reached at k={k}"
            break
    else:
        path.stopped = f"k_max={k_max} reached"
    return path


# ---------------------------------------------------------------------------------------------
# On a trained MLP
# ---------------------------------------------------------------------------------------------

@dataclass
class GreedyConfig:
    gap: float = 0.02          #: stop a layer when train loss - full train loss <= gap
    k_max: int | None = None   #: steps per layer at most (default: the layer's width)
    chunk: int = 100           #: candidates evaluated at once
    dtype: torch.dtype = torch.float32


def _forward_from(layers: list[Layer], start: int, h: torch.Tensor) -> torch.Tensor:
    """Apply layers[start:] to the *pre-activation* h of layer start-1 (ReLU first)."""
    for i in range(start, len(layers)):
        h = torch.relu(h)
        L = layers[i]
        h = h @ torch.as_tensor(L.weight, dtype=h.dtype).T
        if L.bias is not None:
            h = h + torch.as_tensor(L.bias, dtype=h.dtype)
    return h


def _hidden(layers: list[Layer], upto: int, x: torch.Tensor) -> torch.Tensor:
    """ReLU activations of hidden layer ``upto`` (outputs of layers[upto])."""
    h = x
    for i in range(upto + 1):
        L = layers[i]
        h = h @ torch.as_tensor(L.weight, dtype=h.dtype).T
        if L.bias is not None:
            h = h + torch.as_tensor(L.bias, dtype=h.dtype)
        h = torch.relu(h)
    return h


def count_parameters(layers: list[Layer]) -> int:
    return int(sum(L.weight.size + (0 if L.bias is None else L.bias.size) for L in layers))


def apply_selection(layers: list[Layer], h: int, counts: np.ndarray) -> list[Layer]:
    """Replace hidden layer h (outputs of layers[h]) by the multiset with these counts: keep the
    neurons with count > 0, scale their outgoing weights by ``N * count / k``."""
    N = layers[h].weight.shape[0]
    k = int(counts.sum())
    keep = np.flatnonzero(counts > 0)
    out = list(layers)
    Lh, Ln = layers[h], layers[h + 1]
    out[h] = Layer(Lh.weight[keep].copy(), None if Lh.bias is None else Lh.bias[keep].copy())
    out[h + 1] = Layer(Ln.weight[:, keep] * (N * counts[keep] / k)[None, :],
                       None if Ln.bias is None else Ln.bias.copy())
    return out


@dataclass
class GreedyResult:
    layers: list[Layer]                 #: the pruned network
    paths: list[GreedyPath]             #: one per hidden layer
    curve: list[dict]                   #: per step: layer, k, distinct, train_loss, test_accuracy, kept_parameters
    full_train_loss: float
    full_test_accuracy: float
    full_parameters: int
    seconds: float

    @property
    def kept_parameters(self) -> int:
        return count_parameters(self.layers)


@torch.no_grad()
def greedy_prune_mlp(target: Target, x_train: np.ndarray, y_train: np.ndarray,
                     x_test: np.ndarray, y_test: np.ndarray, config: GreedyConfig | None = None
                     ) -> GreedyResult:
    """Greedy forward selection of every hidden layer of ``target``, input side first, on the
    cross-entropy training loss; test accuracy and kept parameters recorded at every step."""
    config = config or GreedyConfig()
    t0 = time.perf_counter()
    dt = config.dtype
    xtr = torch.as_tensor(x_train, dtype=dt)
    ytr = torch.as_tensor(y_train, dtype=torch.int64)
    xte = torch.as_tensor(x_test, dtype=dt)
    yte = torch.as_tensor(y_test, dtype=torch.int64)
    full = list(target.layers)
    full_params = count_parameters(full)
    logits = target.forward(xtr.double()).to(dt)
    full_loss = float(torch.nn.functional.cross_entropy(logits, ytr))
    full_acc = float((target.forward(xte.double()).argmax(1) == yte).double().mean())
    layers = list(full)
    paths, curve = [], []
    for h in range(len(layers) - 1):
        N = layers[h].weight.shape[0]
        A_tr = _hidden(layers, h, xtr)                 # (n, N)
        A_te = _hidden(layers, h, xte)
        Wn = torch.as_tensor(layers[h + 1].weight, dtype=dt)   # (d, N)
        bn = None if layers[h + 1].bias is None else torch.as_tensor(layers[h + 1].bias, dtype=dt)
        last = h + 1 == len(layers) - 1

        def points(idx, A=A_tr, Wn=Wn, N=N):
            idx = torch.as_tensor(idx)
            # (c, n, d): phi_j(x) = N a_j(x) w_j
            return N * A[:, idx].T.unsqueeze(2) * Wn[:, idx].T.unsqueeze(1)

        def loss(U, bn=bn, last=last, h=h):
            c, n, d = U.shape
            z = U if bn is None else U + bn
            if not last:
                z = _forward_from(layers, h + 2, z.reshape(c * n, d)).reshape(c, n, -1)
            return torch.nn.functional.cross_entropy(z.reshape(c * n, -1), ytr.repeat(c),
                                                     reduction="none").reshape(c, n).mean(1)

        fast = None
        if last:
            Wy = Wn.T[:, ytr].T.contiguous()          # (n, N): w_{y_n, j}
            rows = torch.arange(len(ytr))
            A_T = A_tr.T.contiguous()                 # (N, n)
            W_T = Wn.T.contiguous()                   # (N, d)
            Wy_T = Wy.T.contiguous()                  # (N, n)

            def fast(idx, S, k, A_T=A_T, W_T=W_T, Wy_T=Wy_T, N=N, bn=bn):
                """Cross-entropy of (S + phi_j)/k + b for a chunk of j without materialising phi:
                z = base + (N/k) a_j(x) w_j is rank one per candidate; classes on the middle axis
                so that the log-sum-exp runs over contiguous data points."""
                d = W_T.shape[1]
                base = torch.zeros(len(rows), d, dtype=A_T.dtype) if S is None else S / k
                if bn is not None:
                    base = base + bn
                sl = slice(int(idx[0]), int(idx[-1]) + 1)         # chunks are contiguous ranges
                Ac = A_T[sl]                                          # (c, n)
                z = torch.addcmul(base.T.unsqueeze(0), (N / k) * Ac.unsqueeze(1), W_T[sl].unsqueeze(2))  # (c, d, n)
                mx = z.amax(1, keepdim=True)
                lse = z.sub_(mx).exp_().sum(1).log_().add_(mx.squeeze(1))   # (c, n)
                zy = base[rows, ytr].unsqueeze(0) + (N / k) * Ac * Wy_T[sl]
                return (lse - zy).mean(1)

        counts = np.zeros(N, dtype=np.int64)
        S_te = torch.zeros(len(xte), Wn.shape[0], dtype=dt)

        def on_step(k, j, u, h=h, A_te=A_te, Wn=Wn, N=N, bn=bn, last=last):
            nonlocal S_te
            counts[j] += 1
            S_te = S_te + N * A_te[:, j:j + 1] * Wn[:, j].unsqueeze(0)
            z = S_te / k if bn is None else S_te / k + bn
            if not last:
                z = _forward_from(layers, h + 2, z)
            acc = float((z.argmax(1) == yte).double().mean())
            kept = count_parameters(apply_selection(layers, h, counts))
            return {"layer": h, "k": k, "distinct": int((counts > 0).sum()), "test_accuracy": acc,
                    "kept_parameters": kept}

        k_max = config.k_max or N
        path = greedy_average_selection(N, points, loss, k_max, stop_loss=full_loss + config.gap,
                                        chunk=config.chunk, on_step=on_step, candidate_losses=fast)
        for rec, lval in zip(path.extra, path.losses):
            rec["train_loss"] = lval
            rec["loss_gap"] = lval - full_loss
            curve.append(rec)
        paths.append(path)
        layers = apply_selection(layers, h, path.counts(N))
        log.info("hidden layer %d: %d steps, %d distinct of %d neurons, loss gap %.4f (%s)", h,
                 len(path.chosen), int((path.counts(N) > 0).sum()), N, path.losses[-1] - full_loss,
                 path.stopped)
    return GreedyResult(layers, paths, curve, full_loss, full_acc, full_params, time.perf_counter() - t0)
