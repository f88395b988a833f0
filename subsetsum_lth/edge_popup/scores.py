"""Scores → masks: ``kept_count`` (how many entries a keep fraction keeps), ``topk_mask`` (exactly
k largest) and the straight-through autograd functions ``GetSubnet`` and ``MaskedValues``."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch


def kept_count(keep: float, n: int) -> int:
    """``ceil(keep * n)`` with ``keep`` read as the decimal it was written as (0.1 * 10 = 1),
    clipped to [0, n]."""
    if n <= 0:
        return 0
    k = math.ceil(Fraction(repr(float(keep))) * n)
    return max(0, min(int(n), int(k)))


def topk_mask(values: torch.Tensor, k: int, method: str = "topk") -> torch.Tensor:
    """Boolean mask of exactly ``k`` largest entries of a 1-D tensor (ties: lower index first
    for 'partition'; 'topk' keeps whichever k ``torch.topk`` returns).

    'partition' (CPU): threshold from numpy's introselect, then at most a few passes; it
    synchronises with the host. 'topk': ``torch.topk`` + scatter, no host synchronisation."""
    n = values.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    if method == "partition":
        arr = values.detach().cpu().numpy()
        thr = float(np.partition(arr, n - k)[n - k])
        ge = values >= thr
        n_ge = int(torch.count_nonzero(ge))
        if n_ge == k:
            return ge
        above = values > thr
        need = k - int(torch.count_nonzero(above))
        tied = torch.nonzero(values == thr).flatten()[:need]
        above[tied] = True
        return above
    idx = torch.topk(values, k, sorted=False).indices
    return torch.zeros(n, dtype=torch.bool, device=values.device).scatter_(0, idx, True)


class GetSubnet(torch.autograd.Function):
    """Straight-through top-k: forward = 0/1 mask of the k largest ``scores``, backward =
    identity (hidden-networks' ``GetSubnet``; callers pass ``|score|``)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int, method: str = "topk"):  # noqa: D401
        return topk_mask(scores.reshape(-1), int(k), method).reshape(scores.shape).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


class MaskedValues(torch.autograd.Function):
    """``values * GetSubnet(|scores|, k)`` in one step (the per-layer hot path): forward keeps
    the k entries of largest |score|; backward gives the scores exactly what
    ``abs → GetSubnet → mul`` gives, ``grad * values * sgn(scores)``, with fewer passes over
    memory. ``values`` are frozen and get no gradient."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, values: torch.Tensor, k: int, method: str = "topk"):  # noqa: D401
        keep = topk_mask(scores.detach().abs(), int(k), method)
        ctx.save_for_backward(scores, values)
        return values * keep

    @staticmethod
    def backward(ctx, grad):
        scores, values = ctx.saved_tensors
        g = grad * values
        g.mul_(torch.sgn(scores))
        return g, None, None, None
