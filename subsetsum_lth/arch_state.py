"""A user's state_dict for a given architecture: :func:`state_for_arch` maps it onto the keys of
``module_from_arch(arch).state_dict()`` (``0.weight``, ``0.bias``, ``3.weight``, ...).

The stages, in order: the entries grouped by module (:func:`_group_entries`), each module a layer
or a BatchNorm (:func:`_module_kinds`), the order of the modules (:func:`_module_order`), each
BatchNorm attached to the layer right before it (:func:`_attach_batchnorms`), and the weights
checked against the architecture, BatchNorms folded (:func:`_layer_weights`).
"""
from __future__ import annotations

import logging
import re

import torch

from subsetsum_lth.arch import expected_shapes, parametric_keys
from subsetsum_lth.checkpoint import _index_order, _natural, _strip_prefix, _unwrap, fold_bn_tensors
from subsetsum_lth.errors import TargetError

log = logging.getLogger("subsetsum_lth.arch")     # the logger of the module it came from (arch)

_ENTRY = re.compile(r"^(?:(?P<module>.+)\.)?(?P<kind>weight|bias|weight_orig|weight_mask|bias_orig|"
                    r"bias_mask|running_mean|running_var|num_batches_tracked)$")


def state_for_arch(state_dict: dict, arch, source: str = "", order_known: bool = True,
                   bn_eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """The weights of ``state_dict`` (a plain state_dict or a checkpoint dict holding one, keys
    possibly prefixed with ``module.``/``model.``/``_orig_mod.``) for ``arch``, keyed as
    ``module_from_arch(arch).state_dict()`` (``0.weight``, ``0.bias``, ``3.weight``, ...).

    The conv/linear modules of the state_dict (``nn.Sequential`` indices, or named modules such
    as ``conv1``, ``fc1``, ``features.0``) are taken in order (Sequential indices when they order
    every pair, else the file's order; ``order_known=False``, as for safetensors whose keys come
    back sorted: the order in which the weight shapes fit the architecture, layers of equal
    shapes in natural name order)
    and matched one to one with the architecture's conv2d/linear layers; each shape is checked.
    A BatchNorm's entries (``bn1.running_mean``, ...) right after a conv/linear are folded into
    it (a state_dict does not record a BatchNorm's eps: ``bn_eps``, torch's default 1e-5).
    ``torch.nn.utils.prune``'s ``weight_orig``/``weight_mask`` pairs are multiplied out.
    Raises :class:`TargetError` naming the key and the expected shape."""
    where = f" in {source}" if source else ""
    ops = parametric_keys(arch)
    state, _ = _unwrap(state_dict, source or "the state_dict", {})
    groups, keys = _group_entries(state, where)
    prefix = _strip_prefix([g for g in groups if g])
    names = list(groups)

    def short(module: str) -> str:
        return module[len(prefix):] if module.startswith(prefix) else module

    kinds = _module_kinds(groups, keys, where, short)
    order, how, by_index = _module_order(names, kinds, groups, ops, where, short, order_known)
    layers = _attach_batchnorms(order, kinds, by_index, where, short, how)
    return _layer_weights(layers, ops, groups, keys, where, short, how, bn_eps)


def _group_entries(state: dict, where: str) -> tuple[dict, dict]:
    """The entries by module: ({module: {kind: tensor}}, {module: {kind: the entry's key}})."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    keys: dict[str, dict[str, str]] = {}
    for key, value in state.items():
        m = _ENTRY.match(str(key))
        if not m:
            raise TargetError(f"unsupported entry {key!r}{where}: only the weights and biases of conv2d/"
                              "linear layers and the statistics of BatchNorm layers after them are read")
        module = m.group("module") or ""
        groups.setdefault(module, {})[m.group("kind")] = value
        keys.setdefault(module, {})[m.group("kind")] = str(key)
    return groups, keys


def _module_kinds(groups: dict, keys: dict, where: str, short) -> dict[str, str]:
    """Each module 'layer' (weight-bearing, not BatchNorm) or 'bn' (a BatchNorm)."""
    kinds: dict[str, str] = {}
    for module, parts in groups.items():
        label = short(module) or "(root)"
        if "running_mean" in parts or "running_var" in parts or "num_batches_tracked" in parts:
            for need in ("running_mean", "running_var"):
                if need not in parts:
                    raise TargetError(f"BatchNorm {label!r}{where} has no {need!r} entry")
            kinds[module] = "bn"
            continue
        if "weight" not in parts and "weight_orig" not in parts:
            raise TargetError(f"layer {label!r}{where} has {', '.join(sorted(keys[module].values()))} "
                              "but no weight")
        w = parts.get("weight", parts.get("weight_orig"))
        if w.dim() == 1:
            raise TargetError(f"layer {label!r}{where} has a 1-D weight {tuple(w.shape)} and no running "
                              "statistics: a normalisation layer that cannot be folded (only BatchNorm "
                              "with track_running_stats=True after a conv/linear can)")
        if w.dim() not in (2, 4):
            raise TargetError(f"layer {label!r}{where} has a {w.dim()}-D weight {tuple(w.shape)}; only "
                              "conv2d (4-D) and linear (2-D) weights are read")
        kinds[module] = "layer"

    return kinds


def _module_order(names: list[str], kinds: dict, groups: dict, ops: list, where: str, short,
                  order_known: bool) -> tuple[list[str], str, bool]:
    """The modules in network order, how that order was found, and whether by Sequential indices."""
    n = len(names)
    by_index = n > 1 and all(_index_order(names[i], names[j]) != 0
                             for i in range(n) for j in range(i + 1, n))
    has_bn = any(k == "bn" for k in kinds.values())
    if by_index:
        order, how = sorted(names, key=_natural), "nn.Sequential indices"
    elif order_known or n == 1:
        order, how = names, "the file's order"
    else:
        if has_bn:
            raise TargetError(f"the state_dict{where} holds BatchNorm layers but keeps no module order "
                              "(safetensors sorts its keys) and its names carry no nn.Sequential indices, "
                              "so which layer each BatchNorm follows is unknown; save it with "
                              "torch.save(model.state_dict(), 'model.pt') instead")
        order, how = _shape_order([m for m in names if kinds[m] == "layer"], groups, ops, where, short), \
            "the only order the shapes fit"
    return order, how, by_index


def _attach_batchnorms(order: list[str], kinds: dict, by_index: bool, where: str, short,
                       how: str) -> list[tuple[str, list[str]]]:
    """(layer module, [its BatchNorm modules]) in order: each BatchNorm attached to the layer right
    before it."""
    layers: list[tuple[str, list[str]]] = []    # (module, [bn modules])
    for module in order:
        if kinds[module] == "bn":
            if not layers or layers[-1][1]:
                prev = "comes first" if not layers else f"follows BatchNorm {short(layers[-1][1][-1])!r}"
                raise TargetError(f"BatchNorm {short(module)!r}{where} {prev} ({how}); only a BatchNorm "
                                  "right after a conv/linear layer can be folded")
            if by_index:
                a, b = layers[-1][0].rsplit(".", 1)[-1], module.rsplit(".", 1)[-1]
                if a.isdigit() and b.isdigit() and int(b) != int(a) + 1:
                    raise TargetError(
                        f"BatchNorm {short(module)!r}{where} is not right after layer {short(layers[-1][0])!r} "
                        f"(nn.Sequential indices {a} and {b}): the module between them is not recorded, and "
                        "a BatchNorm after a ReLU cannot be folded into the layer before it; if the module "
                        f"between is a Dropout or Identity, renumber the BatchNorm's entries to index "
                        f"{int(a) + 1}, else fold the BatchNorm yourself")
            layers[-1][1].append(module)
        else:
            layers.append((module, []))
    return layers


def _layer_weights(layers, ops, groups: dict, keys: dict, where: str, short, how: str,
                   bn_eps: float) -> dict[str, torch.Tensor]:
    """The layers' weights matched one to one with the architecture's, shapes checked, BatchNorms
    folded, keyed as ``module_from_arch(arch).state_dict()``."""
    listing = ", ".join(short(m) or "(root)" for m, _ in layers)
    if len(layers) != len(ops):
        raise TargetError(f"the state_dict{where} has {len(layers)} conv/linear layer(s) ({listing}, in "
                          f"{how}) but the architecture has {len(ops)}; pass the matching --arch")
    out: dict[str, torch.Tensor] = {}
    for (module, bns), (idx, op) in zip(layers, ops):
        parts, label = groups[module], short(module) or "(root)"
        wkey = keys[module].get("weight", keys[module].get("weight_orig"))
        w = _weight(parts, "weight", label, where)
        b = _weight(parts, "bias", label, where) if ("bias" in parts or "bias_orig" in parts) else None
        want = expected_shapes(op)
        what = f"layer {idx} ({op['op']}) of the architecture"
        if tuple(w.shape) != want["weight"]:
            raise TargetError(f"entry {wkey!r}{where} has shape {tuple(w.shape)} but {what} expects a weight "
                              f"of shape {want['weight']} (layers matched in {how}: {listing})")
        if not w.is_floating_point():
            raise TargetError(f"entry {wkey!r}{where} has the non-floating dtype {w.dtype}")
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise TargetError(f"entry {keys[module].get('bias', keys[module].get('bias_orig'))!r}{where} "
                              f"has shape {tuple(b.shape)}, expected ({w.shape[0]},)")
        for bn in bns:
            p = groups[bn]
            for k in ("running_mean", "running_var", "weight", "bias"):
                if k in p and tuple(p[k].shape) != (w.shape[0],):
                    raise TargetError(f"entry {keys[bn][k]!r}{where} has shape {tuple(p[k].shape)}, expected "
                                      f"({w.shape[0]},) (the outputs of {label!r})")
            eps = float(bn_eps)
            w, b = fold_bn_tensors(w, b, p["running_mean"], p["running_var"], p.get("weight"),
                                   p.get("bias"), eps)
            log.info("folded BatchNorm %s into %s (eps %g)", short(bn), label, eps)
        if op["bias"] and b is None:
            raise TargetError(f"layer {label!r}{where} has no bias but {what} expects one of shape "
                              f"{want['bias']} (a missing '{label}.bias'); use an architecture without "
                              "biases there (the SPEC suffix nb, e.g. fc10nb)")
        if not op["bias"] and b is not None:
            raise TargetError(f"layer {label!r}{where} has a bias ({'from its BatchNorm' if bns else 'entry ' + repr(keys[module].get('bias'))}) "
                              f"but {what} has none; drop the nb suffix from the SPEC")
        out[f"{idx}.weight"] = w.detach().clone()
        if b is not None:
            out[f"{idx}.bias"] = b.detach().clone()
    return out




def _weight(parts: dict, kind: str, label: str, where: str) -> torch.Tensor:
    if kind in parts:
        return parts[kind]
    orig, mask = parts.get(f"{kind}_orig"), parts.get(f"{kind}_mask")
    if orig is None:
        raise TargetError(f"layer {label!r}{where} has no {kind}")
    if mask is None:
        raise TargetError(f"layer {label!r}{where} has '{kind}_orig' but no '{kind}_mask'")
    return orig * mask


def _shape_order(modules: list[str], groups: dict, ops: list, where: str, short) -> list[str]:
    """The modules in the one order in which their weight shapes are the architecture's
    (modules of equal shapes keep their natural name order); TargetError when none or when the
    count differs."""
    def shape(m):
        p = groups[m]
        return tuple(p.get("weight", p.get("weight_orig")).shape)
    if len(modules) != len(ops):
        raise TargetError(f"the state_dict{where} has {len(modules)} conv/linear layer(s) "
                          f"({', '.join(short(m) for m in modules)}) but the architecture has {len(ops)}; "
                          "pass the matching --arch")
    pool = sorted(modules, key=_natural)
    order = []
    for idx, op in ops:
        want = expected_shapes(op)["weight"]
        hit = next((m for m in pool if shape(m) == want), None)
        if hit is None:
            have = ", ".join(f"{short(m)} {shape(m)}" for m in pool)
            raise TargetError(f"no layer of the state_dict{where} has the weight shape {want} that layer "
                              f"{idx} ({op['op']}) of the architecture expects (left: {have})")
        pool.remove(hit)
        order.append(hit)
    return order
