"""Where the random network g comes from: a run folder (``from_run``), a target (``from_target``:
g allocated as by ``approximate``) or a plain wide MLP (``wide``), with the construction's block
plan when g is construction-shaped and the structured eligibility masks built from it."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from subsetsum_lth import runfolder as rf
from subsetsum_lth.construction import ConstructionConfig, LayerPlan, MAX_RANDOM_ENTRIES, build_construction
from subsetsum_lth.mask_rules import eligible_masks
from subsetsum_lth.edge_popup.config import EdgePopupConfig
from subsetsum_lth.errors import UserError
from subsetsum_lth.runcheck import choose_dataset, read_run
from subsetsum_lth.target import load_target


@dataclass
class RandomNet:
    """The random network g to search masks on, with what is known about it."""

    state: dict                         #: key -> float32 CPU tensor
    source: dict                        #: for the report
    plans: list | None = None           #: construction LayerPlans when construction-shaped
    input_domain: str = "nonnegative"
    copy_from: Path | None = None       #: random_net.safetensors to copy byte for byte
    target: object | None = None        #: subsetsum_lth.target.Target when known
    target_file: Path | None = None     #: target.safetensors to copy byte for byte
    layout: object | None = None        #: gnet.GLayout of an image network (conv/pooling); None: an MLP
    input_radius: float | None = None   #: the source run's certified input radius (image networks)
    data: str | None = None             #: the data set the run or target records (None: none)
    data_source: str = "unrecorded"     #: where: see subsetsum_lth.run_dataset.recorded_dataset

    @property
    def is_image(self) -> bool:
        """g has conv/pooling layers (its architecture is ``layout.ops()``, not Linear-ReLU-...)."""
        return self.layout is not None

    def ops(self) -> list[dict] | None:
        """g's architecture list for an image network, None for an MLP."""
        return None if self.layout is None else self.layout.ops()

    @property
    def input_shape(self) -> tuple | None:
        return None if self.layout is None else tuple(self.layout.input_shape)


def parse_sizes(spec: str | Sequence) -> list:
    """'784,H,10' → [784, 'H', 10]."""
    tokens = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for tok in tokens:
        tok = str(tok).strip()
        if tok.upper() == "H":
            out.append("H")
            continue
        try:
            v = int(tok)
        except ValueError:
            raise UserError(f"--wide: expected comma-separated layer sizes (integers or H), got {spec!r}") from None
        if v < 1:
            raise UserError(f"--wide: layer sizes must be positive, got {spec!r}")
        out.append(v)
    if len(out) < 2:
        raise UserError(f"--wide needs at least an input and an output size, got {spec!r}")
    if out[0] == "H" or out[-1] == "H":
        raise UserError(f"--wide: only hidden sizes may be H, got {spec!r}")
    return out


def mlp_parameters(sizes: Sequence[int], bias: bool = True) -> int:
    return int(sum(a * b + (b if bias else 0) for a, b in zip(sizes[:-1], sizes[1:])))


def wide_sizes(spec: str | Sequence, param_budget: int | None, bias: bool = True) -> list[int]:
    """Layer sizes of the wide MLP; every H is the largest width within ``param_budget``
    parameters (biases counted when ``bias``)."""
    sizes = parse_sizes(spec)
    if "H" not in sizes:
        if param_budget is not None:
            raise UserError("--param-budget picks the width H: write it into --wide, e.g. 784,H,10")
        return [int(s) for s in sizes]
    if param_budget is None:
        raise UserError("--wide with H needs --param-budget N (the largest H within N parameters is used)")

    def count(h: int) -> int:
        return mlp_parameters([h if s == "H" else s for s in sizes], bias)

    if count(1) > param_budget:
        raise UserError(f"--param-budget {param_budget:,} is smaller than the network with H=1 "
                        f"({count(1):,} parameters)")
    lo, hi = 1, 2
    while count(hi) <= param_budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= param_budget else (lo, mid)
    return [lo if s == "H" else int(s) for s in sizes]


def wide_network(sizes: Sequence[int], seed: int, init: str = "uniform", bias: bool = True) -> dict:
    """A plain random MLP state_dict: per layer j a generator from SeedSequence(seed, (j,)).
    'uniform': U[-1, 1] (the construction's distribution); 'normal': N(0, 1);
    'kaiming-uniform': U[-sqrt(6/fan_in), sqrt(6/fan_in)]. Biases drawn the same way (zeros
    without ``bias``). Refuses, before allocating, a network larger than the construction's
    limit (weights, scores, their gradients and momenta: ~16 bytes per entry)."""
    entries = mlp_parameters(sizes, bias=True)
    if entries > MAX_RANDOM_ENTRIES:
        raise UserError(f"--wide {','.join(map(str, sizes))} has {entries:,} weights: about "
                        f"{16 * entries / 1e9:,.0f} GB for weights, scores, gradients and momenta, above "
                        f"this tool's limit of {MAX_RANDOM_ENTRIES:,} entries; use smaller hidden widths "
                        "or --param-budget")
    state = {}
    for j, (p, q) in enumerate(zip(sizes[:-1], sizes[1:])):
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(j,)))
        if init == "normal":
            w = rng.standard_normal((q, p))
            b = rng.standard_normal(q)
        else:
            a = 1.0 if init == "uniform" else math.sqrt(6.0 / p)
            w = rng.uniform(-a, a, size=(q, p))
            b = rng.uniform(-a, a, size=q)
        state[f"{2 * j}.weight"] = torch.from_numpy(w.astype(np.float32))
        state[f"{2 * j}.bias"] = torch.from_numpy(b.astype(np.float32) if bias else np.zeros(q, np.float32))
    return state


def plans_from_report(report: dict, state: dict, input_domain: str | None = None) -> list | None:
    """Rebuild the construction's LayerPlans of a run: from report.json ('layers' of an
    ``approximate`` run, or 'construction_plan' of an edge-popup run), else from the shapes
    (H = p*m (+ m with a bias block), a bias block iff the second layer's bias is non-zero).
    Returns None if the network is not construction-shaped."""

    n_linear = len([k for k in state if k.endswith(".weight")])
    if n_linear % 2:
        return None
    depth = n_linear // 2
    domain = report.get("input_domain") or input_domain or "nonnegative"
    entries = report.get("construction_plan")
    if not entries:
        layers = report.get("layers") or []
        if layers and all(isinstance(e, dict) and "block_width" in e for e in layers):
            entries = layers
    plans = []
    for i in range(depth):
        w1 = state[f"{4 * i}.weight"]
        w2 = state[f"{4 * i + 2}.weight"]
        H, p = int(w1.shape[0]), int(w1.shape[1])
        q = int(w2.shape[0])
        if int(w2.shape[1]) != H:
            return None
        grow, ext = 0, None
        if entries and len(entries) == depth:
            e = entries[i]
            m, has_bias = int(e["block_width"]), bool(e.get("has_bias", False))
            fm = int(e.get("formula_block_width", m))
            tq, tp = e.get("target_shape", [q, p])
            # blocks grown by approximate's adaptive widths: m + grow * extensions[j] units
            if e.get("block_extensions") is not None:
                grow = int(e.get("growth_units") or e.get("grow") or 0)
                ext = np.asarray(e["block_extensions"], dtype=np.int64)
                if ext.shape != (p + (1 if has_bias else 0),):
                    return None
        else:
            b2 = np.asarray(state[f"{4 * i + 2}.bias"])
            has_bias = bool(np.any(b2 != 0))
            m = H // (p + 1) if has_bias else H // p
            fm, (tq, tp) = m, (q, p)
        plan = LayerPlan(i, p, q, m, fm, has_bias, signed_input=(i == 0 and domain == "signed"), grow=grow,
                         extensions=ext)
        if m < 1 or plan.hidden != H or (int(tq), int(tp)) != (q, p):
            return None
        plans.append(plan)
    return plans


def _plan_entries(plans) -> list[dict]:
    return [{"layer": pl.index, "target_shape": [pl.q, pl.p], "block_width": pl.m,
             "formula_block_width": pl.formula_m, "has_bias": pl.has_bias,
             "signed_input": pl.signed_input, "growth_units": int(pl.grow),
             "block_extensions": [int(v) for v in np.asarray(pl.extensions)]} for pl in plans]


def load_random_net(config: EdgePopupConfig) -> RandomNet:
    """The random network named by the config (run folder, target, or wide MLP)."""

    if config.from_run is not None:
        run = Path(config.from_run)
        checked = read_run(run)     # the one validated reader (layout, fields) that certify uses
        # a compact run has no dense file to copy: its tensors are generated (checked) and written
        path = run / rf.RANDOM_NET if checked.compact is None else None
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in checked.random_state.items()}
        report = checked.report
        domain = checked.input_domain or config.input_domain or "nonnegative"
        plans = checked.plans if checked.plans is not None else plans_from_report(report, state, domain)
        target = checked.target
        target_file = run / rf.TARGET if target is not None else None
        src = {"kind": "run", "path": str(run.resolve()),
               "run_method": report.get("method", "subset-sum" if "solver" in report else None)}
        return RandomNet(state, src, plans, domain, path, target, target_file, checked.layout_,
                         checked.input_radius if checked.layout_ is not None else None,
                         checked.data, checked.data_source)
    if config.from_target is not None:
        target = load_target(config.from_target)
        domain = config.input_domain or target.metadata.get("input_domain") or "nonnegative"
        net_seed = config.seed if config.net_seed is None else config.net_seed
        # the Theorem 1 formula's width (or --block-width), as recorded before 'adaptive' became
        # approximate's default; nothing is solved here, so blocks never grow
        cc = ConstructionConfig(input_domain=domain, seed=int(net_seed), eps=config.eps, C=config.C,
                                block_width=config.block_width, width="auto")
        construction = build_construction(target, cc)
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in construction.state_dict().items()}
        src = {"kind": "target", "path": str(Path(config.from_target).resolve()), "net_seed": int(net_seed),
               "construction": asdict(cc), "target_sizes": target.sizes}
        layout = None if target.is_mlp else construction.layout
        recorded = (target.metadata or {}).get("dataset")
        return RandomNet(state, src, construction.plans, domain, None, target, None, layout,
                         data=recorded if recorded in ("mnist", "fashion-mnist") else None,
                         data_source="the target's metadata")
    sizes = wide_sizes(config.wide, config.param_budget, config.wide_bias)
    net_seed = config.seed if config.net_seed is None else config.net_seed
    state = wide_network(sizes, int(net_seed), config.wide_init, config.wide_bias)
    src = {"kind": "wide", "sizes": sizes, "param_budget": config.param_budget, "init": config.wide_init,
           "bias": config.wide_bias, "net_seed": int(net_seed), "parameters": mlp_parameters(sizes, True)}
    return RandomNet(state, src, None, config.input_domain or "nonnegative", None, None, None)


def input_op_of(net: RandomNet) -> tuple | None:
    """The (a, c) of the target's input op (a declared normalisation: x ↦ a·x + c per flat input),
    which ĝ applies before g as approximate's does; None when there is no target or no op."""
    prep = None if net.target is None else getattr(net.target, "preprocessing", None)
    return None if prep is None else prep.affine(net.target.input_dim)


def dataset_of(net: RandomNet, config: EdgePopupConfig) -> str:
    """The data set to train and test on: ``--data``, else the one the run (or target) records,
    else MNIST; a ``--data`` that contradicts the record is refused (UserError, exit 2)."""
    if net.source.get("kind") == "run":
        return choose_dataset(config.data, net.data, net.data_source, f"run {config.from_run}")
    if net.data is not None:
        return choose_dataset(config.data, net.data, net.data_source, f"target {config.from_target}")
    return config.data or "mnist"


def eligibility(net: RandomNet, structure: str, inner_relu: bool = True) -> dict | None:
    """None (free) or the construction's pre-pruning masks (structured):
    :func:`subsetsum_lth.mask_rules.eligible_masks` of g's block plan."""
    if structure == "free":
        return None
    return eligible_masks(net.plans, {k: v.numpy() for k, v in net.state.items()}, net.layout, inner_relu)
