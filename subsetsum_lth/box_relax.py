"""The relaxations of one ReLU of the pair (f, ĝ), shared by every bound in the box domain: the
bounds of a layer's pre-activations (:class:`Bounds`: g's z', the difference d, f's z), the planes
of σ on an interval (:func:`relu_planes`), of min(d, 0) and max(d, 0) (:func:`clip_planes`) and of
D = σ(z' + d) − σ(z') (:func:`d_planes`), and their default parameters (α, θ).

The bottom of the box rooms: :mod:`subsetsum_lth.box_ops` builds its op classes on these, and a
mutant of a relaxation is patched here, where every caller looks it up.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

DT = torch.float64


# ----------------------------------------------------------------------------- relaxations

@dataclass
class Bounds:
    """Bounds of one hidden layer's pre-activations, each (B, n): g's z', the difference d, f's z."""

    l: torch.Tensor
    u: torch.Tensor
    dl: torch.Tensor
    du: torch.Tensor
    lf: torch.Tensor
    uf: torch.Tensor

    def map(self, fn) -> "Bounds":
        """The same six bounds with ``fn`` applied to each (a view, a copy, a batch index)."""
        return Bounds(*(fn(t) for t in (self.l, self.u, self.dl, self.du, self.lf, self.uf)))


def relu_planes(l, u, alpha):
    """σ on [l, u]: lower slope (α for unstable units), upper slope s and bias (chord)."""
    act, ina = l >= 0, u <= 0
    uns = ~act & ~ina
    width = (u - l).clamp_min(1e-300)
    s = torch.where(uns, u / width, act.to(DT))
    sb = torch.where(uns, -s * l, torch.zeros_like(l))
    ls = torch.where(uns, alpha, act.to(DT))
    return ls, s, sb


def default_alpha(l, u):
    return (u >= -l).to(DT)


def clip_planes(dl, du):
    """Planes of min(d, 0) (lower) and max(d, 0) (upper) over [dl, du], in d only:
    (lower slope, lower bias, upper slope, upper bias)."""
    pos, neg = dl >= 0, du <= 0
    uns = ~pos & ~neg
    width = (du - dl).clamp_min(1e-300)
    us = torch.where(uns, du / width, pos.to(DT))
    ub = torch.where(uns, -us * dl, torch.zeros_like(dl))
    ls = torch.where(uns, -dl / width, neg.to(DT))
    lb = torch.where(uns, dl - ls * dl, torch.zeros_like(dl))
    return ls, lb, us, ub


def d_planes(b: Bounds, af, ag, th_u, th_l):
    """Lower and upper planes of D = σ(z' + d) − σ(z') in (z', d): each (slope z', slope d, bias)."""
    lfs, ufs, ufb = relu_planes(b.lf, b.uf, af)
    lgs, ugs, ugb = relu_planes(b.l, b.u, ag)
    cls_, clb, cus, cub = clip_planes(b.dl, b.du)
    # separate: U_f(z) − L_g(z') and L_f(z) − U_g(z'), with z = z' + d
    up = (th_u * (ufs - lgs), th_u * ufs + (1 - th_u) * cus, th_u * ufb + (1 - th_u) * cub)
    lo = (th_l * (lfs - ugs), th_l * lfs + (1 - th_l) * cls_, -th_l * ugb + (1 - th_l) * clb)
    return lo, up


def plane_range(p, b: Bounds):
    z, d, c = p
    return (c + torch.minimum(z * b.l, z * b.u) + torch.minimum(d * b.dl, d * b.du),
            c + torch.maximum(z * b.l, z * b.u) + torch.maximum(d * b.dl, d * b.du))


def default_theta(b: Bounds):
    """θ = 1 (separate planes) where their range over the box is tighter than the clip planes'."""
    one, zero = torch.ones_like(b.l), torch.zeros_like(b.l)
    af, ag = default_alpha(b.lf, b.uf), default_alpha(b.l, b.u)
    lo_s, up_s = d_planes(b, af, ag, one, one)
    lo_c, up_c = d_planes(b, af, ag, zero, zero)
    th_u = (plane_range(up_s, b)[1] <= plane_range(up_c, b)[1]).to(DT)
    th_l = (plane_range(lo_s, b)[0] >= plane_range(lo_c, b)[0]).to(DT)
    return th_u, th_l
