"""Public Python API for run folders: load, mask with torch.nn.utils.prune, export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from subsetsum_lth import runcheck
from subsetsum_lth.errors import RunFolderError


#: a validated run folder (see :mod:`subsetsum_lth.runcheck`)
Run = runcheck.Run


def load_run(path: str | Path) -> Run:
    """Read a run folder (random network, masks, report, target) through the one validated
    reader that ``certify``, ``compare`` and ``edge-popup --from-run`` use: a folder whose
    tensors or layer layout are not those of the construction recorded in report.json, or
    whose report fields are malformed, raises RunFolderError."""
    return runcheck.read_run(path)


def random_module(state: dict, dtype=torch.float32, relu_after=None) -> nn.Sequential:
    """The random network g (no masks) as nn.Sequential(Linear, ReLU, ..., Linear).

    ``relu_after`` (one bool per hidden Linear layer; default all True, as every construction
    run): False puts ``nn.Identity`` in that ReLU's place (edge-popup's ``--no-inner-relu``
    runs), so the state_dict keys stay ``0.weight``, ``2.weight``, ..."""
    depth2 = len([k for k in state if k.endswith(".weight")])
    relu_after = [True] * (depth2 - 1) if relu_after is None else [bool(r) for r in relu_after]
    if len(relu_after) != depth2 - 1:
        raise RunFolderError(f"relu_after has {len(relu_after)} entries for {depth2} Linear layers")
    mods: list[nn.Module] = []
    for k in range(depth2):
        w = torch.as_tensor(np.asarray(state[f"{2 * k}.weight"]))
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(torch.as_tensor(np.asarray(state[f"{2 * k}.bias"])))
        mods.append(lin)
        if k < depth2 - 1:
            mods.append(nn.ReLU() if relu_after[k] else nn.Identity())
    return nn.Sequential(*mods).to(dtype)


def masked_model(run: Run | str | Path, dtype=torch.float32) -> nn.Sequential:
    """g with its masks attached through ``torch.nn.utils.prune.custom_from_mask``
    (weights stay in ``weight_orig``; ``weight = weight_orig * weight_mask``)."""
    run = run if isinstance(run, Run) else load_run(run)
    model = random_module(run.random_state, dtype, run.relu_after)
    for idx, mod in enumerate(model):
        if isinstance(mod, nn.Linear):
            for name in ("weight", "bias"):
                mask = torch.as_tensor(np.asarray(run.masks[f"{idx}.{name}"]).astype(bool))
                prune.custom_from_mask(mod, name, mask)
    return model


def export_pruned(run_or_model: Run | str | Path | nn.Sequential, dtype=torch.float32) -> nn.Sequential:
    """A plain nn.Sequential with the masks baked in (no pruning hooks, zeros where pruned).
    Accepts a run (folder) or a model masked with ``torch.nn.utils.prune``; never modifies it."""
    model = run_or_model if isinstance(run_or_model, nn.Module) else masked_model(run_or_model, dtype)
    mods: list[nn.Module] = []
    for mod in model:
        if isinstance(mod, nn.Linear):
            lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(mod.weight.detach())       # weight_orig * weight_mask when pruned
                if mod.bias is not None:
                    lin.bias.copy_(mod.bias.detach())
            mods.append(lin.to(mod.weight.dtype))
        elif isinstance(mod, (nn.ReLU, nn.Identity)):
            mods.append(type(mod)())
        else:
            raise TypeError(f"unsupported module {type(mod).__name__} in export")
    return nn.Sequential(*mods)
