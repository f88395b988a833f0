"""Public Python API for run folders: load, mask with torch.nn.utils.prune, export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from subsetsum_lth import runcheck
from subsetsum_lth.errors import RunFolderError
from subsetsum_lth.gstore import SupportFirst, has_support_pairs, support_module
from subsetsum_lth.ops import Residual, count_relus, module_from_ops
from subsetsum_lth.preprocess import RawInputSequential
from subsetsum_lth.runwriter import export_dense as _export


#: a validated run folder (see :mod:`subsetsum_lth.runcheck`)
Run = runcheck.Run


def load_run(path: str | Path) -> Run:
    """Read a run folder (random network, masks, report, target) through the one validated
    reader that ``certify``, ``compare`` and ``edge-popup --from-run`` use: a folder whose
    tensors or layer layout are not those of the construction recorded in report.json, or
    whose report fields are malformed, raises RunFolderError."""
    return runcheck.read_run(path)


def random_module(state: dict, dtype=torch.float32, relu_after=None, layout=None) -> nn.Sequential:
    """The random network g (no masks) as an nn.Sequential — Linear, ReLU, ..., Linear for an
    MLP; with a ``layout`` (``run.layout``) the construction's Conv2d pairs and the target's
    pooling/flatten too, taking N×C×H×W images.

    ``relu_after`` (one bool per ReLU; default all True, as every construction run): False
    puts ``nn.Identity`` in that ReLU's place (edge-popup's ``--no-inner-relu`` runs), so the
    state_dict keys stay ``0.weight``, ``2.weight``, ..."""
    if layout is None:
        depth2 = len([k for k in state if k.endswith(".weight")])
        ops = []
        for k in range(depth2):
            w = np.asarray(state[f"{2 * k}.weight"])
            ops.append({"op": "linear", "in_features": int(w.shape[1]), "out_features": int(w.shape[0])})
            if k < depth2 - 1:
                ops.append({"op": "relu"})
    else:
        ops = layout.ops()
    n_relu = count_relus(ops)
    if relu_after is not None and len(relu_after) != n_relu:
        raise RunFolderError(f"relu_after has {len(relu_after)} entries for {n_relu + 1} Linear layers")
    return module_from_ops(ops, state, None, dtype, relu_after)


def masked_model(run: Run | str | Path, dtype=torch.float32) -> nn.Sequential:
    """g with its masks attached through ``torch.nn.utils.prune.custom_from_mask``
    (weights stay in ``weight_orig``; ``weight = weight_orig * weight_mask``). An image
    network's model takes N×C×H×W tensors. A residual run's g is an nn.Sequential whose skip
    connections are :class:`subsetsum_lth.ops.Residual` modules (``body(x) + shortcut(x)``);
    its layers are keyed by their module path (``3.body.0.weight``). A run made with an input op
    (``--input-normalize``, report.json ``preprocessing``) gives a :class:`RawInputSequential`: it
    takes pixels/255 and applies the recorded map first; its modules and state_dict keys are the
    plain Sequential's.

    A run whose g has support-drawn pairs (``--support-draw-above``: a first layer too large to
    draw dense) has a :class:`subsetsum_lth.gstore.SupportFirst` module in each such first
    layer's place: its ``weight`` and ``bias`` are (H,) vectors (each hidden unit's one input
    edge and its bias), masked through ``torch.nn.utils.prune`` like the others."""
    run = run if isinstance(run, Run) else load_run(run)
    layout = run.layout_ if run.layout_ is not None else None
    if run.compact is not None and has_support_pairs(run.plans):
        model = support_module(run.compact.pairs, run.plans, run.layout, None, dtype, run.relu_after)
    else:
        model = random_module(run.random_state, dtype, run.relu_after, layout)
    # named_modules: a residual g's layers sit inside Residual modules ('3.body.0'), keyed so
    for path, mod in model.named_modules():
        if isinstance(mod, SupportFirst):
            mk = run.compact.cmasks[mod.pair_index]
            prune.custom_from_mask(mod, "weight", torch.as_tensor(np.asarray(mk["u"]).astype(bool)))
            prune.custom_from_mask(mod, "bias", torch.as_tensor(np.asarray(mk["b1"]).astype(bool)))
        elif isinstance(mod, (nn.Linear, nn.Conv2d)):
            for name in ("weight", "bias"):
                mask = torch.as_tensor(np.asarray(run.masks[f"{path}.{name}"]).astype(bool))
                prune.custom_from_mask(mod, name, mask)
    return _raw_input(model, run)


def _raw_input(model: nn.Sequential, run: Run) -> nn.Sequential:
    """``model`` taking pixels/255 where the run records an input op (a declared preprocessing,
    report.json 'preprocessing'): a RawInputSequential with the same modules and state_dict keys."""
    if run.preprocessing is None:
        return model
    return RawInputSequential(*model, input_op=run.preprocessing.affine(run.input_dim))


_PARAMETER_FREE = (nn.ReLU, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten)


def export_pruned(run_or_model: Run | str | Path | nn.Module, dtype=torch.float32) -> nn.Module:
    """A plain nn.Sequential with the masks baked in (no pruning hooks, zeros where pruned).
    Accepts a run (folder) or a model masked with ``torch.nn.utils.prune``; never modifies it.
    A residual run's network (an nn.Sequential holding :class:`subsetsum_lth.ops.Residual`
    modules, or any other nested model) comes back as a copy of that model with the masks made
    permanent, under the same keys."""
    import copy
    model = run_or_model if isinstance(run_or_model, nn.Module) else masked_model(run_or_model, dtype)
    if not isinstance(model, nn.Sequential) or any(isinstance(m, Residual) for m in model.modules()):
        return _export_nested(model)
    mods: list[nn.Module] = []
    for mod in model:
        if isinstance(mod, SupportFirst):
            mods.append(mod.baked())
            continue
        if isinstance(mod, nn.Linear):
            new = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
        elif isinstance(mod, nn.Conv2d):
            new = nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                            bias=mod.bias is not None)
        elif isinstance(mod, _PARAMETER_FREE):
            mods.append(copy.deepcopy(mod))
            continue
        else:
            raise TypeError(f"unsupported module {type(mod).__name__} in export")
        with torch.no_grad():
            new.weight.copy_(mod.weight.detach())       # weight_orig * weight_mask when pruned
            if mod.bias is not None:
                new.bias.copy_(mod.bias.detach())
        mods.append(new.to(mod.weight.dtype))
    a = getattr(model, "input_a", None)
    if a is not None:        # the run's input op (RawInputSequential): the export takes pixels/255 too
        return RawInputSequential(*mods, input_op=(a.detach().cpu().numpy(), model.input_c.detach().cpu().numpy()))
    return nn.Sequential(*mods)


def _export_nested(model: nn.Module) -> nn.Module:
    """A rebuilt copy of a model with nested modules (a residual g: :class:`subsetsum_lth.ops.Residual`
    inside Sequentials) whose weights are the masked ones (``weight_orig * weight_mask``; no
    pruning hooks); the same keys as the random network."""
    import copy
    if isinstance(model, nn.Sequential):
        return nn.Sequential(*[_export_nested(m) for m in model])
    if isinstance(model, Residual):
        return Residual(_export_nested(model.body), _export_nested(model.shortcut))
    if isinstance(model, SupportFirst):
        return model.baked()
    if isinstance(model, (nn.Linear, nn.Conv2d)):
        if isinstance(model, nn.Linear):
            new = nn.Linear(model.in_features, model.out_features, bias=model.bias is not None)
        else:
            new = nn.Conv2d(model.in_channels, model.out_channels, model.kernel_size, model.stride,
                            model.padding, bias=model.bias is not None)
        with torch.no_grad():
            new.weight.copy_(model.weight.detach())
            if model.bias is not None:
                new.bias.copy_(model.bias.detach())
        return new.to(model.weight.dtype)
    if isinstance(model, _PARAMETER_FREE):
        return copy.deepcopy(model)
    raise TypeError(f"unsupported module {type(model).__name__} in export")


def export_dense(run: str | Path) -> list[Path]:
    """Write ``random_net.safetensors`` and ``masks.safetensors`` of a run stored with
    ``--store compact`` (checked first: every stored support value must be what its generator
    specification regenerates), byte-identical to what a dense run of the same seed writes.
    Returns the two paths. :func:`load_run`, :func:`masked_model` and :func:`export_pruned` read
    compact runs directly (the dense tensors are generated when needed)."""
    return _export(run)
