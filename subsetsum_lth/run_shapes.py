"""What a run folder's tensors and report.json must agree on, checked by :mod:`subsetsum_lth.runcheck`:
the key set and shapes of Sequential(Linear, ReLU, ..., Linear), the construction's block plans
from report.json's per-layer entries, the stored shapes those plans give, and ``relu_after``.
Each refusal is a :class:`RunFolderError` naming the file and the fix."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from subsetsum_lth import runfolder as rf
from subsetsum_lth.construction import LayerPlan
from subsetsum_lth.errors import RunFolderError
from subsetsum_lth.report_fields import Fields, short
from subsetsum_lth.runfolder import RECREATE


def linear_count(state: dict, fname: str, where: Path) -> int:
    """n such that the keys are exactly {2k}.weight, {2k}.bias for k < n."""
    weights = [k for k in state if k.endswith(".weight")]
    n = len(weights)
    want = {f"{2 * k}.{t}" for k in range(n) for t in ("weight", "bias")}
    if n == 0 or set(state) != want:
        extra = sorted(set(state) - want)[:4]
        missing = sorted(want - set(state), key=lambda s: (int(s.split(".")[0]), s))[:4]
        detail = (f"unexpected {', '.join(extra)}" if extra else "") + \
                 ("; " if extra and missing else "") + (f"missing {', '.join(missing)}" if missing else "")
        raise RunFolderError(f"{where / fname}: keys are not those of Sequential(Linear, ReLU, ..., Linear) "
                             f"({detail or 'no Linear layers'}); {RECREATE}")
    return n


def check_mlp_shapes(state: dict, n: int, where: Path) -> list[int]:
    sizes = []
    for k in range(n):
        w, b = state[f"{2 * k}.weight"], state[f"{2 * k}.bias"]
        if w.ndim != 2 or b.ndim != 1 or b.shape[0] != w.shape[0] or 0 in w.shape:
            raise RunFolderError(f"{where / rf.RANDOM_NET}: layer {2 * k} has weight {tuple(w.shape)} and bias "
                                 f"{tuple(b.shape)}; not a Linear layer; {RECREATE}")
        if not np.issubdtype(w.dtype, np.floating) or not np.issubdtype(b.dtype, np.floating):
            raise RunFolderError(f"{where / rf.RANDOM_NET}: layer {2 * k} is not floating point ({w.dtype}); {RECREATE}")
        if k == 0:
            sizes.append(int(w.shape[1]))
        elif w.shape[1] != sizes[-1]:
            raise RunFolderError(f"{where / rf.RANDOM_NET}: layer {2 * k} takes {w.shape[1]} inputs but layer "
                                 f"{2 * k - 2} gives {sizes[-1]}; {RECREATE}")
        sizes.append(int(w.shape[0]))
    return sizes


def block_plans(entries, sizes: list[int], domain: str, where: str, shapes=None, signed=None):
    """LayerPlans from report.json's per-layer block widths (validated). ``shapes``: the
    (q, p) of each layer's matrix view where they do not chain (conv layers); ``signed``: per
    layer, whether its input can be negative (default: only layer 0, under the signed domain)."""

    depth = len(sizes) - 1
    shapes = shapes or [(sizes[i + 1], sizes[i]) for i in range(depth)]
    if not isinstance(entries, list) or len(entries) != depth:
        raise RunFolderError(f"{where} must list {depth} layers (one per target layer), got "
                             f"{short(entries) if not isinstance(entries, list) else f'{len(entries)} entries'}; {RECREATE}")
    plans = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise RunFolderError(f"{where}[{i}] must be an object, got {short(e)}; {RECREATE}")
        f = Fields(e, f"{where}[{i}]")
        q, p = shapes[i]
        shape = f.int_list("target_shape", length=2, minimum=1)
        if shape != [q, p]:
            raise RunFolderError(f"{where}[{i}]: target_shape {shape} but the target's layer {i} is {[q, p]}; {RECREATE}")
        m = f.integer("block_width", minimum=1)
        has_bias = f.boolean("has_bias")
        fm = f.integer("formula_block_width", minimum=1, optional=True) or m
        grow = f.integer("growth_units", minimum=0, optional=True) or 0
        ext = f.int_list("block_extensions", length=p + (1 if has_bias else 0), minimum=0, optional=True)
        if ext is not None and any(ext) and grow == 0:
            raise RunFolderError(f"{where}[{i}]: block_extensions without growth_units; {RECREATE}")
        signed_i = (i == 0 and domain == "signed") if signed is None else bool(signed[i])
        lean = f.choice("first_layer", ("dense", "support"), optional=True) == "support"
        plan = LayerPlan(i, p, q, m, fm, has_bias, signed_input=signed_i, grow=grow,
                         extensions=None if ext is None else np.asarray(ext, dtype=np.int64), lean=lean)
        hidden = f.integer("hidden_units", minimum=1, optional=True)
        if hidden is not None and hidden != plan.hidden:
            raise RunFolderError(f"{where}[{i}]: hidden_units {hidden} but the block widths give {plan.hidden}; {RECREATE}")
        plans.append(plan)
    return plans


def check_construction_shapes(state: dict, plans, where: Path, fname: str) -> None:
    for i, pl in enumerate(plans):
        want = {f"{4 * i}.weight": (pl.hidden, pl.p), f"{4 * i}.bias": (pl.hidden,),
                f"{4 * i + 2}.weight": (pl.q, pl.hidden), f"{4 * i + 2}.bias": (pl.q,)}
        for k, shp in want.items():
            if tuple(state[k].shape) != shp:
                raise RunFolderError(
                    f"{where / fname}: {k} has shape {tuple(state[k].shape)}, but the construction recorded in "
                    f"report.json (target layer {i}: {pl.q}x{pl.p}, {pl.hidden} hidden units) needs {shp}; {RECREATE}")


def relu_after_of(report: dict, kind: str, n: int, where: Path) -> list[bool]:
    if kind == "subset-sum":
        if "relu_after" in report:
            raise RunFolderError(f"{where / rf.REPORT}: a subset-sum run has no 'relu_after' entry (the "
                                 f"construction has a ReLU after every hidden layer); {RECREATE}")
        return [True] * (n - 1)
    r = report.get("relu_after")
    if r is None:
        return [True] * (n - 1)
    if not isinstance(r, list) or len(r) != n - 1 or not all(isinstance(v, bool) for v in r):
        raise RunFolderError(f"{where / rf.REPORT}: 'relu_after' must list {n - 1} booleans (one per hidden "
                             f"Linear layer), got {short(r)}; {RECREATE}")
    return list(r)
