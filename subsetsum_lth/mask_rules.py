"""The construction's mask rules: which entries of g a mask may keep.

:func:`prepruning_masks` (the block-diagonal pre-pruning of §1: what a subset-sum run's masks
may keep), :func:`eligible_masks` (what a *structured* edge-popup search may use) and
:func:`masks_state_dict` (per-layer masks as the stored, validated mask tensors).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from subsetsum_lth.construction import LayerPlan, layout_of
from subsetsum_lth.errors import UserError
from subsetsum_lth.layerkinds import Linear
from subsetsum_lth.gnet import GLayout, Masks


def masks_state_dict(layer_masks: list[dict[str, np.ndarray]], layout=None) -> dict[str, np.ndarray]:
    """The stored mask tensors of per-layer {w1, b1, w2, b2} masks (MLP keys without a layout)."""
    if layout is None:
        layout = GLayout(tuple(Linear(m["w1"].shape[1], m["w2"].shape[0]) for m in layer_masks),
                         tuple(m["w1"].shape[0] for m in layer_masks))
    return Masks.from_pairs(layout, layer_masks).state_dict()     # validated: keys, shapes, 0/1


def prepruning_masks(plans: list[LayerPlan], random_state: dict[str, np.ndarray], layout=None) -> dict[str, np.ndarray]:
    """The structural masks of §1 before solving (block-diagonal first layers, bias block with
    positive biases, live sign halves): what edge-popup's *structured* variant may use."""
    layout = layout or layout_of(plans)
    out = {}
    for i, pl in enumerate(plans):
        H, p, q = pl.hidden, pl.p, pl.q
        w1, b1, _, _ = layout.matrices(random_state, i)
        mw1 = np.zeros((H, p), dtype=np.uint8)
        for j in range(p):
            sl = pl.block_slice(j)
            u = w1[sl, j]
            live = (u != 0) if pl.signed_input else (u > 0)
            mw1[sl.start + np.flatnonzero(live), j] = 1
        mb1 = np.zeros(H, dtype=np.uint8)
        if pl.has_bias:
            sl = pl.block_slice(p)
            mb1[sl] = (b1[sl] > 0).astype(np.uint8)
        live_units = (mw1.any(axis=1) | mb1.astype(bool)).astype(np.uint8)
        out.update(layout.to_stored(i, mw1, mb1, np.repeat(live_units[None, :], q, axis=0),
                                    np.zeros(q, dtype=np.uint8)))
    return out


def eligible_masks(plans: list[LayerPlan] | None, numpy_state: dict[str, np.ndarray], layout=None,
                   inner_relu: bool = True) -> dict[str, np.ndarray]:
    """The entries of g a *structured* mask search may use: the pre-pruning masks of §1
    (:func:`prepruning_masks`), under the layout's keys.

    With ``inner_relu=False`` (layers 2i-1 used linearly) the sign pruning of §1 is dropped,
    since it only removes units that the ReLU switches off: every block-diagonal edge u_{jk} != 0
    of every layer 2i-1 and every non-zero bias of its bias block stay eligible (Pensia et al.'s
    Figure 1c structure), and layer 2i may use every one of those units."""
    if plans is None:
        raise UserError("--structure structured needs the construction's block plan, but this random "
                        "network is not construction-shaped (no block plan in report.json and the shapes "
                        "do not fit H = p*m (+ m)); use --structure free")
    plans = plans if inner_relu else [replace(pl, signed_input=True) for pl in plans]
    layout = layout if layout is not None else layout_of(plans)
    allowed = prepruning_masks(plans, numpy_state, layout)
    if not inner_relu:
        for i, pl in enumerate(plans):
            kw1, kb1, kw2, _ = layout.pair_keys(i)
            b1 = numpy_state[kb1]
            if pl.has_bias:
                sl = pl.block_slice(pl.p)
                allowed[kb1][sl] = (b1[sl] != 0).astype(np.uint8)
            live = allowed[kw1].reshape(pl.hidden, -1).any(axis=1) | allowed[kb1].astype(bool)
            allowed[kw2] = np.repeat(live[None, :].astype(np.uint8), pl.q, axis=0).reshape(allowed[kw2].shape)
    if set(allowed) != set(numpy_state):
        raise UserError("the construction's block plan does not cover every tensor of the random network")
    return allowed
