"""Shared test helpers: rebuild ĝ from the run folder's files only, probe points."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

#: tests/faults: its sitecustomize.py injects the faults below into every Python process started
#: with it on PYTHONPATH (the package itself holds no fault injection)
FAULTS = Path(__file__).resolve().parent / "faults"
#: the process dies (137) after N stored batches, or sends itself a signal: "N" or "N:SIGNAME"
FAULT_ENV = "SUBSETSUM_LTH_FAULT_AFTER_BATCHES"
#: a worker dies or hangs at its N-th batch, once over all workers: "kill|hang:N:MARKER"
WORKER_FAULT_ENV = "SUBSETSUM_LTH_WORKER_FAULT"
SLOW_START_ENV = "SUBSETSUM_LTH_WORKER_SLOW_START"


def fault_env(env: dict | None = None, **faults) -> dict:
    """``env`` (default: os.environ) with ``faults`` set and tests/faults first on PYTHONPATH, for
    a subprocess (and the workers it starts) that should run with fault injection."""
    env = dict(os.environ if env is None else env, **faults)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(FAULTS), env.get("PYTHONPATH", "")) if p)
    return env


def install_faults(monkeypatch, **faults) -> None:
    """Fault injection for the worker processes this test process starts (spawned ones read
    PYTHONPATH): ``faults`` set in the environment and tests/faults on PYTHONPATH."""
    for k, v in fault_env(dict(os.environ), **faults).items():
        if os.environ.get(k) != v:
            monkeypatch.setenv(k, v)


def rebuild_g(run: Path) -> torch.nn.Sequential:
    """ĝ = Sequential(Linear, ReLU, ..., Linear) with every tensor times its mask, from the two
    safetensors files alone (no subsetsum_lth code), in float64."""
    state = load_file(str(Path(run) / "random_net.safetensors"))
    masks = load_file(str(Path(run) / "masks.safetensors"))
    return masked_sequential(state, masks)


def masked_sequential(state: dict, masks: dict) -> torch.nn.Sequential:
    """Sequential(Linear, ReLU, ..., Linear) in float64 with every tensor of ``state`` times its
    mask (numpy arrays keyed '0.weight', '0.bias', '2.weight', ...; no subsetsum_lth code)."""
    n = len([k for k in state if k.endswith(".weight")])
    mods = []
    for k in range(n):
        w = np.asarray(state[f"{2 * k}.weight"], np.float64) * masks[f"{2 * k}.weight"]
        b = np.asarray(state[f"{2 * k}.bias"], np.float64) * masks[f"{2 * k}.bias"]
        lin = torch.nn.Linear(w.shape[1], w.shape[0]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        mods.append(lin)
        if k < n - 1:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods)


def probe_points(p: int, radius: float, nonneg: bool, rng: np.random.Generator, n: int = 256) -> np.ndarray:
    """Sphere points, orthant vertices (all ±1 patterns when p is small), interior points."""
    g = rng.standard_normal((n, p))
    if nonneg:
        g = np.abs(g)
    pts = [radius * g / np.linalg.norm(g, axis=1, keepdims=True)]
    if p <= 10:
        pats = ((np.arange(2 ** p)[:, None] >> np.arange(p)) & 1).astype(float)
        if nonneg:
            pats = pats[pats.sum(1) > 0]
        else:
            pats = 2 * pats - 1
        pts.append(radius * pats / np.linalg.norm(pats, axis=1, keepdims=True))
    pts.append(pts[0] * rng.random((n, 1)))
    return np.vstack(pts)


def ascend(f, g, x0: np.ndarray, radius: float, nonneg: bool, steps: int = 60) -> np.ndarray:
    """Projected gradient ascent on ||f(x) - g(x)|| (an independent implementation)."""
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    for t in range(steps):
        loss = (f(x) - g(x)).norm(dim=1).sum()
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x += 0.1 * radius * (0.95 ** t) * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-30)
            if nonneg:
                x.clamp_(min=0)
            nrm = x.norm(dim=1, keepdim=True).clamp_min(1e-30)
            x *= torch.clamp(radius / nrm, max=1.0)
    return x.detach().numpy()


def shared_mnist_dir() -> Path | None:
    """The folder holding the four official MNIST files: $SUBSETSUM_LTH_DATA, else the user
    cache (``~/.cache/subsetsum-lth/mnist``, where the library downloads them); None when
    neither has them. Never downloads."""
    import os

    from subsetsum_lth.data.mnist import MNIST_FILES, default_cache_dir
    env = os.environ.get("SUBSETSUM_LTH_DATA")
    candidates = ([Path(env)] if env else []) + [default_cache_dir()]
    for d in candidates:
        if all((d / spec.filename).is_file() or (d / spec.raw_name).is_file()
               for spec in MNIST_FILES.values()):
            return d
    return None


NO_MNIST_REASON = (
    "MNIST IDX files not found in $SUBSETSUM_LTH_DATA or ~/.cache/subsetsum-lth/mnist: set "
    "SUBSETSUM_LTH_DATA to a folder holding the four official files, or download them once "
    "with: python -c 'from subsetsum_lth.data.mnist import resolve_data_dir; resolve_data_dir()'")


def subprocess_env(**extra) -> dict:
    """The environment of a CLI run in a subprocess: this checkout first on the path, no display."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="Agg")
    env.update(extra)
    return fault_env(env) if FAULT_ENV in extra or WORKER_FAULT_ENV in extra else env


def pair_difference(t, maps):
    """x ↦ f(x) − ĝ(x) of a target and layer maps (certify.LayerMap), both on the same inputs."""
    from subsetsum_lth.certify import CollapsedNet
    g = CollapsedNet(maps, target=t)
    return lambda x: t.forward(x) - g(x)


def sign_ascent(fn, x, lo, hi, steps=30, step=0.1):
    """Sign-gradient ascent on fn (N,) from x, projected to the box [lo, hi] (the attack the
    box-certificate tests use, written outside the package). Returns (fn at the end, the points)."""
    x = x.clone()
    for i in range(steps):
        x.requires_grad_(True)
        v = fn(x)
        (gr,) = torch.autograd.grad(v.sum(), x)
        with torch.no_grad():
            x = torch.clamp(x + step * (1 - i / steps) * torch.sign(gr) * (hi - lo), lo, hi)
    with torch.no_grad():
        return fn(x), x


def assert_no_ball_point_changes_the_class(t, maps, x, rho, mask, rng, ascent: int = 0):
    """For every point x[i] where ``mask`` says f and ĝ are certified to keep f's class on the ℓ∞
    ball of radius ρ (within [0, 1]): random points and random corners of the ball keep it; with
    ``ascent`` steps, so do the ends of a sign-gradient descent on each margin out_c − out_k of f
    and of ĝ from the centre and from 3 random points of the ball."""
    from subsetsum_lth.certify import CollapsedNet
    g = CollapsedNet(maps, target=t)
    for i in np.nonzero(mask)[0]:
        pts = np.clip(x[i] + rho * (2 * rng.random((200, t.input_dim)) - 1), 0, 1)
        pts = np.vstack([pts, np.clip(x[i] + rho * np.sign(rng.standard_normal((50, t.input_dim))), 0, 1)])
        X = torch.as_tensor(pts, dtype=torch.float64)
        c = int(t.forward(torch.as_tensor(x[i:i + 1], dtype=torch.float64)).argmax())
        with torch.no_grad():
            assert (t.forward(X).argmax(1) == c).all() and (g(X).argmax(1) == c).all(), i
        if not ascent:
            continue
        lo = torch.as_tensor(np.clip(x[i] - rho, 0, 1), dtype=torch.float64)
        hi = torch.as_tensor(np.clip(x[i] + rho, 0, 1), dtype=torch.float64)
        starts = torch.cat([torch.as_tensor(x[i:i + 1], dtype=torch.float64), X[:3]])
        for net in (t.forward, g):
            for k in range(t.sizes[-1]):
                if k != c:
                    _, end = sign_ascent(lambda z: net(z)[:, k] - net(z)[:, c], starts, lo, hi, steps=ascent)
                    with torch.no_grad():
                        assert (net(end).argmax(1) == c).all(), (i, k)
