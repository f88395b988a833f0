"""Accuracy of f and ĝ on labelled data, and a spot check of ĝ itself against its collapsed maps."""
from __future__ import annotations

import numpy as np
import torch

from subsetsum_lth.target import Target


@torch.no_grad()
def spot_check(collapsed: torch.nn.Module, g: torch.nn.Module, x: np.ndarray) -> dict:
    """ĝ itself (float32, dense, as deployed) against its collapsed layer maps on a few inputs."""
    xb = torch.as_tensor(x, dtype=torch.float32)
    a = collapsed(xb.double())
    b = g(xb).double()
    return {"spot_check_examples": int(len(x)),
            "spot_check_max_diff": float((a - b).abs().max()) if len(x) else 0.0,
            "spot_check_agreement": float((a.argmax(1) == b.argmax(1)).double().mean()) if len(x) else 1.0}


@torch.no_grad()
def evaluate_pair(target: Target, g: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 4096) -> dict:
    """Accuracy of f and ĝ, prediction agreement, output deviation (float32, as deployed)."""
    f_pred, g_pred, dev = [], [], []
    for i in range(0, len(x), batch):
        xb = torch.as_tensor(x[i:i + batch], dtype=torch.float32)
        fo = target.forward(xb.double())
        go = g(xb.double()).double()
        f_pred.append(fo.argmax(1))
        g_pred.append(go.argmax(1))
        dev.append((fo - go).norm(dim=1))
    f_pred, g_pred, dev = torch.cat(f_pred), torch.cat(g_pred), torch.cat(dev)
    yt = torch.as_tensor(y)
    return {
        "target_accuracy": float((f_pred == yt).double().mean()),
        "pruned_accuracy": float((g_pred == yt).double().mean()),
        "prediction_agreement": float((f_pred == g_pred).double().mean()),
        "max_output_deviation": float(dev.max()),
        "mean_output_deviation": float(dev.mean()),
        "eval_examples": int(len(x)),
    }
