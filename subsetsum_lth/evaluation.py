"""Accuracy of f and ĝ on labelled data, and a spot check of ĝ itself against its collapsed maps."""
from __future__ import annotations

import math

import numpy as np
import torch

from subsetsum_lth.progress import advance
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


#: what the figures of :func:`bound_scale` mean (stored beside them in report.json)
BOUND_SCALE_MEANING = (
    "figures to judge a bound on ‖f(x) − ĝ(x)‖₂ by, from f on the test images: output_norm_* is "
    "‖f(x)‖₂ (median, max); class_margin_* is min over j ≠ top-1 of (f_top1(x) − f_j(x))/√2 (min, "
    "median): wherever ‖f(x) − ĝ(x)‖₂ is below it, ĝ predicts f's class at x; "
    "certified_same_class_fraction: the fraction of the test images that lie in the certified set "
    "and whose margin exceeds the certified bound (ĝ provably predicts f's class on them)")


def class_margins(logits: torch.Tensor) -> torch.Tensor:
    """Per row, min over j ≠ top-1 of (z_top1 − z_j)/√2: an ℓ2 perturbation of the logits smaller
    than this cannot change the argmax (|δ_i − δ_j| ≤ √2 ‖δ‖₂)."""
    if logits.shape[1] < 2:
        return torch.full((logits.shape[0],), float("inf"), dtype=logits.dtype)
    top = logits.topk(2, dim=1).values
    return (top[:, 0] - top[:, 1]) / math.sqrt(2)


def bound_scale(norms: torch.Tensor, margins: torch.Tensor, certified: dict | None = None) -> dict:
    """The scale a bound on ‖f − ĝ‖₂ is read against (see :data:`BOUND_SCALE_MEANING`):
    ‖f(x)‖₂ and the class margins on the data. ``certified``: {name: (bound, inside)} (``inside``:
    which points lie in that bound's set); per name the fraction where the bound guarantees f's
    class, under ``certified_same_class_fraction`` etc. for ``ball`` and ``box_...`` for ``box``."""
    norms, margins = norms.double(), margins.double()
    out = {"examples": int(len(norms)),
           "output_norm_median": float(norms.median()), "output_norm_max": float(norms.max()),
           "class_margin_min": float(margins.min()), "class_margin_median": float(margins.median())}
    for name, (bound, inside) in (certified or {}).items():
        pre = "" if name == "ball" else f"{name}_"
        ok = torch.as_tensor(np.asarray(inside, dtype=bool)) & (margins > float(bound))
        out.update({f"{pre}certified_bound": float(bound), f"{pre}examples_in_certified_set": int(np.sum(inside)),
                    f"{pre}certified_same_class_fraction": float(ok.double().mean())})
    out["meaning"] = BOUND_SCALE_MEANING
    return out


@torch.no_grad()
def evaluate_pair(target: Target, g: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch: int | None = None,
                  bar=None, certified: dict | None = None) -> dict:
    """Accuracy of f and ĝ, prediction agreement, output deviation (float32, as deployed), and
    the scale figures of :func:`bound_scale` (``certified``: {name: (bound, which rows of ``x``
    lie in its set)}). ``bar`` advances by one per batch (default: ``target.chunk_rows()`` rows)."""
    batch = batch or target.chunk_rows()
    f_pred, g_pred, dev, norms, margins = [], [], [], [], []
    for i in range(0, len(x), batch):
        xb = torch.as_tensor(x[i:i + batch], dtype=torch.float32)
        fo = target.forward(xb.double())
        go = g(xb.double()).double()
        f_pred.append(fo.argmax(1))
        g_pred.append(go.argmax(1))
        dev.append((fo - go).norm(dim=1))
        norms.append(fo.norm(dim=1))
        margins.append(class_margins(fo))
        advance(bar)
    f_pred, g_pred, dev = torch.cat(f_pred), torch.cat(g_pred), torch.cat(dev)
    yt = torch.as_tensor(y)
    return {
        "target_accuracy": float((f_pred == yt).double().mean()),
        "pruned_accuracy": float((g_pred == yt).double().mean()),
        "prediction_agreement": float((f_pred == g_pred).double().mean()),
        "max_output_deviation": float(dev.max()),
        "mean_output_deviation": float(dev.mean()),
        "eval_examples": int(len(x)),
        "bound_scale": bound_scale(torch.cat(norms), torch.cat(margins), certified),
    }
