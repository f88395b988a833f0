"""Evaluation of a masked network on the device: accuracy, and agreement with the target."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from subsetsum_lth.edge_popup.network import EdgePopupNet


@torch.no_grad()
def evaluate_on_device(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> float:
    """Accuracy of ``argmax model(x)``; one host synchronisation at the end."""
    was = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    masks_model = isinstance(model, EdgePopupNet)
    if masks_model:
        batch = min(batch, model.eval_batch())
        # the masks do not change during evaluation: compute them once
        frozen = _frozen_forward(model)
        for i in range(0, len(x), batch):
            correct += (frozen(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()
    else:
        for i in range(0, len(x), batch):
            correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()
    model.train(was)
    return int(correct) / max(1, len(x))


def _frozen_forward(model: EdgePopupNet) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> g(x) with the current masks computed once."""
    values = model.effective_values()
    return lambda x: model.apply_values(x, values)


@torch.no_grad()
def agreement(target, model: EdgePopupNet, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> dict:
    """Target accuracy and prediction agreement with the target (on the test data)."""
    f = _frozen_forward(model)
    batch = min(batch, model.eval_batch())
    agree = torch.zeros((), dtype=torch.int64, device=x.device)
    t_ok = torch.zeros((), dtype=torch.int64, device=x.device)
    g_ok = torch.zeros((), dtype=torch.int64, device=x.device)
    was = model.training
    model.eval()
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        fp = target.forward(xb.double()).argmax(1)
        gp = f(xb).argmax(1)
        agree += (fp == gp).sum()
        t_ok += (fp == yb).sum()
        g_ok += (gp == yb).sum()
    model.train(was)
    n = max(1, len(x))
    return {"target_accuracy": int(t_ok) / n, "prediction_agreement": int(agree) / n,
            "test_accuracy": int(g_ok) / n}


def final_test_accuracy(model: EdgePopupNet, target, final: dict, x: torch.Tensor,
                        y: torch.Tensor) -> tuple[float, dict]:
    """(test accuracy, agreement with ``target``) at the end of training. With a target, one
    forward pass over the test set gives both; without a test accuracy from the last epoch the
    curve's last point ``final`` gets the one computed here."""
    evaluation = {}
    if target is not None:
        evaluation = agreement(target, model, x, y)
    test_acc = final.get("test_accuracy")
    if test_acc is None:
        test_acc = evaluation.pop("test_accuracy", None)
        if test_acc is None:
            test_acc = evaluate_on_device(model, x, y)
        final["test_accuracy"] = test_acc          # the curve's last point
    evaluation.pop("test_accuracy", None)
    return test_acc, evaluation
