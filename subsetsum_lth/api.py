"""Public Python API for run folders: load, mask with torch.nn.utils.prune, export."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from subsetsum_lth import runfolder as rf
from subsetsum_lth.errors import RunFolderError


@dataclass
class Run:
    path: Path
    random_state: dict      #: numpy float32 arrays
    masks: dict             #: numpy uint8 arrays
    report: dict

    @property
    def depth(self) -> int:
        return rf.depth_of(self.random_state)


def load_run(path: str | Path) -> Run:
    """Read a run folder (random network, masks, report) and check that they fit together."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"run folder {path} does not exist")
    state, _ = rf.load_safetensors(path / rf.RANDOM_NET)
    masks, _ = rf.load_safetensors(path / rf.MASKS)
    report = rf.read_report(path)
    if set(state) != set(masks):
        raise RunFolderError(f"{path}: masks and random network have different keys")
    for k in state:
        if state[k].shape != masks[k].shape:
            raise RunFolderError(f"{path}: mask {k} has shape {masks[k].shape}, weight {state[k].shape}")
        if not np.isin(masks[k], (0, 1)).all():
            raise RunFolderError(f"{path}: mask {k} holds values other than 0 and 1")
    return Run(path, state, masks, report)


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
    model = random_module(run.random_state, dtype, run.report.get("relu_after"))
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
