"""Differential bound propagation, one class per op (auto_LiRPA's habit): each op owns its
relaxation of the pair (g's value x', the difference d = x_f − x') and implements

* ``interval(b)``: bounds of its output from bounds of its input (:class:`Bounds`: g's value
  ``l, u``, the difference ``dl, du``, f's value ``lf, uf``), for the parameter-free ops;
* ``backward(lam_z, lam_d, b, params)``: given a linear objective Λz·x'_out + Λd·d_out (Λ: (B, m,
  n_out), flat), the coefficients (Λz', Λd') on its input and a constant (B, m) such that
  Λz·x'_out + Λd·d_out >= Λz'·x'_in + Λd'·d_in + const everywhere on the input bounds ``b``.

Registry :data:`OPS`: op name -> class (``linear``, ``conv2d``, ``relu``, ``maxpool2d``,
``avgpool2d``, ``flatten``, ``add``). Every tensor is flat per example, float64 (``DT``).

The relaxations (derivations in docs/certificate.md, "CNNs in the box domain"):

* affine (``linear``/``conv2d``): exact, x'_out = W̃ x' + b̃, d_out = W d + (W − W̃) x' + (b − b̃);
* ``relu``: :mod:`subsetsum_lth.box_relax`'s (``relu_planes``, ``d_planes``: α for σ(z'), σ(z)
  and θ mixing the "separate" and "clip" planes of D = σ(z) − σ(z')); the MLP certificate's
  backward bounds (:func:`subsetsum_lth.box_crown._backward`) are this op and ``linear`` in turn;
* ``maxpool2d``: y' = max_j a'_j is >= a'_{j*} (j* the largest lower bound) and <= max_j u_j (or
  = a'_{j*} when j* dominates its window); Y = max_j (a'_j + D_j) − max_j a'_j lies between
  min_j D_j and max_j D_j ("clip", bounded the same way) and between L_f − U_g and U_f − L_g
  ("separate", the max relaxations of f's and g's windows); θ ∈ [0, 1] mixes them;
* ``avgpool2d``, ``flatten``: linear, the same map on x' and d;
* ``add``: y' = x'_1 + x'_2, Y = d_1 + d_2 (the two branches get the same coefficients).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from subsetsum_lth import box_relax as rx
from subsetsum_lth.box_relax import DT, Bounds
from subsetsum_lth.errors import UserError

__all__ = ["OPS", "BoxOp", "LinearOp", "Conv2dOp", "ReluOp", "MaxPool2dOp", "AvgPool2dOp", "FlattenOp", "AddOp",
           "relu_interval", "op_class"]


class BoxOp:
    """The interface (see the module docstring). ``in_shape``/``out_shape``: per example."""

    name = "?"
    affine = False
    in_shape: tuple = ()
    out_shape: tuple = ()

    @property
    def n_in(self) -> int:
        return int(torch.tensor(self.in_shape).prod())

    @property
    def n_out(self) -> int:
        return int(torch.tensor(self.out_shape).prod())

    def interval(self, b: Bounds) -> Bounds:          # pragma: no cover - the interface
        raise NotImplementedError

    def backward(self, lam_z, lam_d, b: Bounds | None, params=None):   # pragma: no cover
        raise NotImplementedError

    def _lin(self, x, which: str):           # pragma: no cover - affine ops define it
        raise NotImplementedError

    def affine_interval(self, b: Bounds) -> Bounds:
        """Interval bounds of an affine op's output (exact on the first layer, where d_in = 0 and
        f and ĝ share the input): z' ∈ W̃m' + b̃ ± |W̃|r', z ∈ Wm + b ± |W|r, d ∈ W m_d + E m' + e ±
        (|W| r_d + |E| r'), with z and d intersected with z' + d and z − z'."""
        mid = lambda lo, hi: ((lo + hi) / 2, (hi - lo) / 2)
        mg, rg = mid(b.l, b.u)
        mf, rf = mid(b.lf, b.uf)
        md, rd = mid(b.dl, b.du)
        cg, wg = self._lin(mg, "g") + self.bg, self._lin(rg, "|g|")
        cf, wf = self._lin(mf, "f") + self.bf, self._lin(rf, "|f|")
        cd = self._lin(md, "f") + self._lin(mg, "e") + self.e
        wd = self._lin(rd, "|f|") + self._lin(rg, "|e|")
        l, u, lf, uf = cg - wg, cg + wg, cf - wf, cf + wf
        dl, du = torch.maximum(cd - wd, lf - u), torch.minimum(cd + wd, uf - l)
        return Bounds(l, u, dl, du, torch.maximum(lf, l + dl), torch.minimum(uf, u + du))

    def default_params(self, bb: Bounds) -> dict | None:
        """The optimisable parameters' defaults on the (B, m, n_in)-broadcast input bounds (None: none)."""
        return None


# ----------------------------------------------------------------------------- affine ops

class LinearOp(BoxOp):
    """x'_out = W̃ x' + b̃, d_out = W d + E x' + e (W: f's, W̃: ĝ's matrix, E = W − W̃, e = b − b̃)."""

    name = "linear"
    affine = True

    def __init__(self, wf: torch.Tensor, bf: torch.Tensor, wg: torch.Tensor, bg: torch.Tensor):
        self.wf, self.bf, self.wg, self.bg = wf, bf, wg, bg
        self.E, self.e = wf - wg, bf - bg
        self.in_shape, self.out_shape = (wf.shape[1],), (wf.shape[0],)

    def _lin(self, x, which: str):
        M = {"g": self.wg, "f": self.wf, "e": self.E}[which.strip("|")]
        return x @ (M.abs() if which.startswith("|") else M).T

    def interval(self, b: Bounds) -> Bounds:
        return self.affine_interval(b)

    def backward(self, lam_z, lam_d, b=None, params=None, acc=None, d_in=True):
        """``acc``: a constant (B, m) the op's own is added to (term by term, in the order the MLP
        certificate always summed them); ``d_in=False``: the input's difference is 0 (the network
        input), so its coefficient is not computed (None)."""
        const = (lam_z @ self.bg if acc is None else acc + lam_z @ self.bg) + lam_d @ self.e
        return lam_z @ self.wg + lam_d @ self.E, (lam_d @ self.wf if d_in else None), const

    def forward(self, x_g, x_f):
        """(ĝ's, f's) outputs on flat inputs (N, n_in): for tests and the twin evaluation."""
        return x_g @ self.wg.T + self.bg, x_f @ self.wf.T + self.bf


class Conv2dOp(BoxOp):
    """A convolution of the pair: kernels ``kf`` (f), ``kg`` (ĝ), both (c_out, c_in, k_h, k_w) on
    (c_in, H, W) inputs; its transpose is ``conv2d_input`` (a transposed convolution), so no dense
    matrix is ever formed. Biases are per channel."""

    name = "conv2d"
    affine = True

    def __init__(self, kf, bf, kg, bg, in_shape, stride, padding):
        self.kf, self.kg, self.ke = kf, kg, kf - kg
        self.stride, self.padding = tuple(stride), tuple(padding)
        self.in_shape = tuple(int(s) for s in in_shape)
        c_out, _, kh, kw = kf.shape
        H, W = self.in_shape[1:]
        ho = (H + 2 * self.padding[0] - kh) // self.stride[0] + 1
        wo = (W + 2 * self.padding[1] - kw) // self.stride[1] + 1
        self.out_shape = (int(c_out), ho, wo)
        rep = ho * wo
        self.bf, self.bg = bf.repeat_interleave(rep), bg.repeat_interleave(rep)
        self.e = self.bf - self.bg

    def _t(self, lam, K):
        B, m = lam.shape[:2]
        g = lam.reshape(B * m, *self.out_shape)
        x = torch.nn.grad.conv2d_input((B * m, *self.in_shape), K, g, stride=self.stride, padding=self.padding)
        return x.reshape(B, m, -1)

    def _f(self, x, K):
        y = F.conv2d(x.reshape(x.shape[0], *self.in_shape), K, None, self.stride, self.padding)
        return y.reshape(x.shape[0], -1)

    def _lin(self, x, which: str):
        K = {"g": self.kg, "f": self.kf, "e": self.ke}[which.strip("|")]
        return self._f(x.reshape(-1, x.shape[-1]), K.abs() if which.startswith("|") else K).reshape(
            *x.shape[:-1], -1)

    def interval(self, b: Bounds) -> Bounds:
        return self.affine_interval(b)

    def backward(self, lam_z, lam_d, b=None, params=None):
        const = lam_z @ self.bg + lam_d @ self.e
        return self._t(lam_z, self.kg) + self._t(lam_d, self.ke), self._t(lam_d, self.kf), const

    def forward(self, x_g, x_f):
        return self._f(x_g, self.kg) + self.bg, self._f(x_f, self.kf) + self.bf


# ----------------------------------------------------------------------------- relu

def relu_interval(b: Bounds) -> Bounds:
    """Bounds of (σ(z'), D = σ(z) − σ(z'), σ(z)) from those of (z', d, z). D lies between L(d) and
    U(d) (:func:`subsetsum_lth.box_zonotope._d_tube`: min(d, 0) <= D <= max(d, 0), D >= d where g's
    unit is active, D >= 0 where it is inactive, D <= d / <= 0 where f's is active / inactive),
    both non-decreasing in d, and D = σ(z) − σ(z') in [σ(lf) − σ(u), σ(uf) − σ(l)]."""
    zero = torch.zeros_like(b.l)
    lo = torch.minimum(b.dl, zero)
    lo = torch.where(b.l >= 0, torch.maximum(lo, b.dl), lo)
    lo = torch.where(b.u <= 0, torch.maximum(lo, zero), lo)
    hi = torch.maximum(b.du, zero)
    hi = torch.where(b.lf >= 0, torch.minimum(hi, b.du), hi)
    hi = torch.where(b.uf <= 0, torch.minimum(hi, zero), hi)
    l, u, lf, uf = b.l.clamp_min(0), b.u.clamp_min(0), b.lf.clamp_min(0), b.uf.clamp_min(0)
    return Bounds(l, u, torch.maximum(lo, lf - u), torch.minimum(hi, uf - l), lf, uf)


class ReluOp(BoxOp):
    """a' = σ(z'), D = σ(z' + d) − σ(z'): the MLP certificate's relaxations, parameters α (``a``:
    σ(z') in the a' term, ``f``, ``g``: in D's separate planes) and θ (``u``, ``l``)."""

    name = "relu"

    def __init__(self, shape):
        self.in_shape = self.out_shape = tuple(shape)

    def interval(self, b: Bounds) -> Bounds:
        return relu_interval(b)

    def default_params(self, bb: Bounds) -> dict:
        th_u, th_l = rx.default_theta(bb)
        return {"a": rx.default_alpha(bb.l, bb.u), "f": rx.default_alpha(bb.lf, bb.uf),
                "g": rx.default_alpha(bb.l, bb.u), "u": th_u, "l": th_l}

    def backward(self, Ca, CD, b: Bounds, params=None, acc=None, scores=None):
        """``acc``: a constant to add this op's terms to, in order; ``scores``: called with the
        per-unit branching scores (|coefficient| × relaxation gap, (B, m, n)), for branch and bound."""
        bb = b.map(lambda t: t[:, None, :])
        if params is None:
            ag = rx.default_alpha(bb.l, bb.u)
            af = rx.default_alpha(bb.lf, bb.uf)
            th_u, th_l = rx.default_theta(bb)
            aa = ag
        else:
            aa, af, ag, th_u, th_l = params["a"], params["f"], params["g"], params["u"], params["l"]
        ls, us, ub = rx.relu_planes(bb.l, bb.u, aa)
        pos = Ca >= 0
        lam_z = Ca * torch.where(pos, ls, us)
        const = (Ca * torch.where(pos, torch.zeros_like(ub), ub)).sum(-1)
        const = const if acc is None else acc + const
        if params is None and scores is None and not bool(CD.any()):   # a twin chain: D's planes add 0
            return lam_z, CD, const
        dlo, dup = rx.d_planes(bb, af, ag, th_u, th_l)
        posD = CD >= 0
        pz = torch.where(posD, dlo[0], dup[0])
        pd = torch.where(posD, dlo[1], dup[1])
        pc = torch.where(posD, dlo[2], dup[2])
        if scores is not None:
            gap_a = torch.where((bb.l < 0) & (bb.u > 0), -bb.l * bb.u / (bb.u - bb.l).clamp_min(1e-300), 0 * bb.l)
            gap_d = ((dup[2] - dlo[2]).abs() + (dup[0] - dlo[0]).abs() * (bb.u - bb.l)
                     + (dup[1] - dlo[1]).abs() * (bb.du - bb.dl))
            scores((Ca.abs() * gap_a + CD.abs() * gap_d).detach())
        return lam_z + CD * pz, CD * pd, const + (CD * pc).sum(-1)


# ----------------------------------------------------------------------------- pooling, flatten, add

def _windows(shape, kernel, stride) -> torch.Tensor:
    """(n_out, k_h·k_w) flat input indices of every pooling window of a (C, H, W) map."""
    C, H, W = shape
    idx = torch.arange(C * H * W).reshape(1, C, H, W).to(DT)
    cols = F.unfold(idx, kernel, stride=stride)            # (1, C·kh·kw, L)
    kk = kernel[0] * kernel[1]
    cols = cols.reshape(C, kk, -1).permute(0, 2, 1)       # (C, L, kk)
    return cols.reshape(-1, kk).round().long()


def _pool_out(shape, kernel, stride):
    C, H, W = shape
    return (C, (H - kernel[0]) // stride[0] + 1, (W - kernel[1]) // stride[1] + 1)


def _max_planes(L, U):
    """Planes of max_j v_j over the window bounds L, U (..., n_out, K): (index j*, lower: v_{j*};
    upper: v_{j*} when j* dominates (L_{j*} >= max_{j≠j*} U_j), else the constant max_j U_j) as
    (j*, dominated, upper constant)."""
    j = L.argmax(-1, keepdim=True)
    Lj = L.gather(-1, j)
    others = U.scatter(-1, j, torch.full_like(Lj, -torch.inf))
    dom = (Lj >= others.max(-1, keepdim=True).values)[..., 0]
    return j[..., 0], dom, U.max(-1).values


class MaxPool2dOp(BoxOp):
    """y' = max over the window of a', Y = max(a' + D) − max a' (see the module docstring)."""

    name = "maxpool2d"

    def __init__(self, in_shape, kernel, stride):
        self.in_shape = tuple(in_shape)
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.out_shape = _pool_out(self.in_shape, self.kernel, self.stride)
        self.idx = _windows(self.in_shape, self.kernel, self.stride)

    def _gather(self, t):
        return t[..., self.idx]                                 # (..., n_out, K)

    def interval(self, b: Bounds) -> Bounds:
        g = lambda t: self._gather(t)
        l, u = g(b.l).max(-1).values, g(b.u).max(-1).values
        lf, uf = g(b.lf).max(-1).values, g(b.uf).max(-1).values
        dl = torch.maximum(g(b.dl).min(-1).values, lf - u)
        du = torch.minimum(g(b.du).max(-1).values, uf - l)
        return Bounds(l, u, dl, du, lf, uf)

    def planes(self, b: Bounds, th_u=None, th_l=None):
        """The relaxation on input bounds ``b`` ((..., n_in)): for y' (lower, upper) and Y (lower,
        upper), each (z coefficients (..., n_out, K), d coefficients, constant (..., n_out))."""
        L, U = self._gather(b.l), self._gather(b.u)
        Lf, Uf = self._gather(b.lf), self._gather(b.uf)
        Dl, Du = self._gather(b.dl), self._gather(b.du)
        K = L.shape[-1]
        oh = lambda j: F.one_hot(j, K).to(DT)
        zero_c = torch.zeros(L.shape[:-1], dtype=DT)
        zK = torch.zeros_like(L)
        jg, domg, ug = _max_planes(L, U)
        jf, domf, uf = _max_planes(Lf, Uf)
        jd, domd, ud = _max_planes(Dl, Du)                      # max_j D_j
        jm, domm, nm = _max_planes(-Du, -Dl)                    # min_j D_j = −max_j(−D_j)
        eg, ef, ed, em = oh(jg), oh(jf), oh(jd), oh(jm)
        dg, df, dd, dm = (x[..., None].to(DT) for x in (domg, domf, domd, domm))
        g_lo = (eg, zK, zero_c)
        g_up = (dg * eg, zK, (1 - dg[..., 0]) * ug)
        # f's window max of a = a' + D: lower a_{jf}, upper a_{jf} if dominated else max uf
        f_lo = (ef, ef, zero_c)
        f_up = (df * ef, df * ef, (1 - df[..., 0]) * uf)
        clip_up = (zK, dd * ed, (1 - dd[..., 0]) * ud)
        clip_lo = (zK, dm * em, -(1 - dm[..., 0]) * nm)
        sep_up = tuple(a - c for a, c in zip(f_up, g_lo))
        sep_lo = tuple(a - c for a, c in zip(f_lo, g_up))
        if th_u is None:
            th_u, th_l = self._default_theta(b, sep_up, sep_lo, clip_up, clip_lo)
        mix = lambda s, c, t: tuple(t[..., None] * x + (1 - t[..., None]) * y for x, y in zip(s[:2], c[:2])) + (
            t * s[2] + (1 - t) * c[2],)
        return g_lo, g_up, mix(sep_lo, clip_lo, th_l), mix(sep_up, clip_up, th_u)

    def _range(self, plane, b: Bounds, upper: bool):
        z, d, c = plane
        L, U, Dl, Du = (self._gather(t) for t in (b.l, b.u, b.dl, b.du))
        pick = torch.maximum if upper else torch.minimum
        return c + (pick(z * L, z * U) + pick(d * Dl, d * Du)).sum(-1)

    def _default_theta(self, b, sep_up, sep_lo, clip_up, clip_lo):
        th_u = (self._range(sep_up, b, True) <= self._range(clip_up, b, True)).to(DT)
        th_l = (self._range(sep_lo, b, False) >= self._range(clip_lo, b, False)).to(DT)
        return th_u, th_l

    def backward(self, Cy, CY, b: Bounds, params=None):
        bb = b.map(lambda t: t[:, None, :])
        if not bool(CY.any()):      # no d term (a twin chain): y' only, Y's planes add 0
            return self._backward_g(Cy, bb)
        (gz_lo, _, gc_lo), (gz_up, _, gc_up), Y_lo, Y_up = self.planes(bb)
        pos, posY = (Cy >= 0)[..., None], (CY >= 0)[..., None]
        zc = torch.where(pos, gz_lo, gz_up) * Cy[..., None] + torch.where(posY, Y_lo[0], Y_up[0]) * CY[..., None]
        dc = torch.where(posY, Y_lo[1], Y_up[1]) * CY[..., None]
        const = (Cy * torch.where(pos[..., 0], gc_lo, gc_up)).sum(-1) + (CY * torch.where(posY[..., 0], Y_lo[2],
                                                                                           Y_up[2])).sum(-1)
        B, m = Cy.shape[:2]
        flat = self.idx.flatten()
        lam_z = torch.zeros(B, m, self.n_in, dtype=DT).index_add(2, flat, zc.reshape(B, m, -1))
        lam_d = torch.zeros(B, m, self.n_in, dtype=DT).index_add(2, flat, dc.reshape(B, m, -1))
        return lam_z, lam_d, const

    def _backward_g(self, Cy, bb: Bounds):
        """:meth:`backward` when CY = 0: the planes of y' = max_j a'_j alone."""
        L, U = self._gather(bb.l), self._gather(bb.u)
        jg, domg, ug = _max_planes(L, U)
        eg = F.one_hot(jg, L.shape[-1]).to(DT)
        dg = domg[..., None].to(DT)
        pos = (Cy >= 0)[..., None]
        zc = torch.where(pos, eg, dg * eg) * Cy[..., None]
        const = (Cy * torch.where(pos[..., 0], torch.zeros_like(ug), (1 - dg[..., 0]) * ug)).sum(-1)
        B, m = Cy.shape[:2]
        lam_z = torch.zeros(B, m, self.n_in, dtype=DT).index_add(2, self.idx.flatten(), zc.reshape(B, m, -1))
        return lam_z, torch.zeros_like(lam_z), const


class AvgPool2dOp(BoxOp):
    """The window mean of x' and of d (linear, positive weights: intervals are exact per bound)."""

    name = "avgpool2d"

    def __init__(self, in_shape, kernel, stride):
        self.in_shape = tuple(in_shape)
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.out_shape = _pool_out(self.in_shape, self.kernel, self.stride)
        C = self.in_shape[0]
        self.K = torch.full((C, 1, *self.kernel), 1.0 / (self.kernel[0] * self.kernel[1]), dtype=DT)

    def apply(self, x):
        y = F.conv2d(x.reshape(-1, *self.in_shape), self.K, None, self.stride, groups=self.in_shape[0])
        return y.reshape(*x.shape[:-1], -1)

    def _t(self, lam):
        B, m = lam.shape[:2]
        g = lam.reshape(B * m, *self.out_shape)
        x = torch.nn.grad.conv2d_input((B * m, *self.in_shape), self.K, g, stride=self.stride,
                                       groups=self.in_shape[0])
        return x.reshape(B, m, -1)

    def interval(self, b: Bounds) -> Bounds:
        return b.map(self.apply)

    def backward(self, lam_z, lam_d, b=None, params=None):
        return self._t(lam_z), self._t(lam_d), torch.zeros(lam_z.shape[:2], dtype=DT)


class FlattenOp(BoxOp):
    """The identity on flat vectors."""

    name = "flatten"

    def __init__(self, in_shape):
        self.in_shape = tuple(in_shape)
        self.out_shape = (int(torch.tensor(self.in_shape).prod()),)

    def interval(self, b: Bounds) -> Bounds:
        return b

    def backward(self, lam_z, lam_d, b=None, params=None):
        return lam_z, lam_d, torch.zeros(lam_z.shape[:2], dtype=DT)


class AddOp(BoxOp):
    """A skip connection's sum y = x_1 + x_2 of two branches of the same shape: y' = x'_1 + x'_2,
    Y = d_1 + d_2. It takes both branches' bounds / gives both branches the objective's
    coefficients; a graph walker (a residual block) sums what the branches return."""

    name = "add"

    def __init__(self, shape):
        self.in_shape = self.out_shape = tuple(shape)

    def interval2(self, b1: Bounds, b2: Bounds) -> Bounds:
        return Bounds(b1.l + b2.l, b1.u + b2.u, b1.dl + b2.dl, b1.du + b2.du, b1.lf + b2.lf, b1.uf + b2.uf)

    def backward(self, lam_z, lam_d, b=None, params=None):
        """The coefficients for each branch ((Λz, Λd) twice) and a zero constant."""
        zero = torch.zeros(lam_z.shape[:2], dtype=DT)
        return (lam_z, lam_d), (lam_z, lam_d), zero


OPS = {c.name: c for c in (LinearOp, Conv2dOp, ReluOp, MaxPool2dOp, AvgPool2dOp, FlattenOp, AddOp)}


def op_class(name: str) -> type:
    """The bound class of an op name (one clear error for an op without one)."""
    if name not in OPS:
        raise UserError(f"the box certificate has no bounds for op {name!r}; it handles {', '.join(OPS)}")
    return OPS[name]
