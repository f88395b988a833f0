"""Training the scores: devices, the SGD loop over the scores (``train_scores``, one
``train_step``) and the logit temperature of the loss."""
from __future__ import annotations

import logging
import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from subsetsum_lth.data.mnist import load_mnist
from subsetsum_lth.edge_popup.config import CPU_TRAIN_SUBSET, EdgePopupConfig
from subsetsum_lth.edge_popup.evaluate import _frozen_forward, evaluate_on_device
from subsetsum_lth.edge_popup.network import EdgePopupNet
from subsetsum_lth.errors import UserError
from subsetsum_lth.progress import Progress, advance, annotate, close

log = logging.getLogger(__name__)

def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA device "
                        f"(torch {torch.__version__}); use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def resolve_train_subset(spec: int | str | None, device: torch.device) -> int | None:
    """``'auto'`` → ``CPU_TRAIN_SUBSET`` images on CPU, all (None) on CUDA; else as given."""
    if spec == "auto":
        return CPU_TRAIN_SUBSET if device.type == "cpu" else None
    return None if spec is None else int(spec)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def load_data(config: EdgePopupConfig, state: dict, device: torch.device,
              data: dict | None = None, layout=None,
              dataset: str = "mnist") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """([x_train, x_test], [y_train, y_test]) on ``device``: ``data`` or ``dataset`` (MNIST or
    Fashion-MNIST) from ``config.data_dir``, cut to the configured subsets and checked against the network's
    input and output sizes. With the ``layout`` of an image network (``GLayout`` with an
    ``input_shape`` (C, H, W)) the flat images are reshaped to N×C×H×W."""
    if data is None:
        x_tr, y_tr = load_mnist("train", config.data_dir, dataset=dataset)
        x_te, y_te = load_mnist("test", config.data_dir, dataset=dataset)
    else:
        x_tr, y_tr, x_te, y_te = (data[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    train_subset = resolve_train_subset(config.train_subset, device)
    if train_subset is not None:
        x_tr, y_tr = x_tr[:train_subset], y_tr[:train_subset]
    if config.test_subset is not None:
        x_te, y_te = x_te[:config.test_subset], y_te[:config.test_subset]
    if layout is not None and layout.input_shape is not None:
        shape = tuple(int(v) for v in layout.input_shape)
        in_f, out_f = int(np.prod(shape)), int(layout.kinds[-1].q)
        for name, a in (("training", x_tr), ("test", x_te)):
            n_pix = int(np.prod(np.asarray(a).shape[1:]))
            if n_pix != in_f:
                raise UserError(f"the random network takes {'x'.join(map(str, shape))} images ({in_f} values) "
                                f"but the {name} images have {n_pix} values each")
        x_tr, x_te = (np.asarray(a).reshape(len(a), *shape) for a in (x_tr, x_te))
    else:
        in_f = int(state["0.weight"].shape[1])
        n_linear = len([k for k in state if k.endswith(".weight")])
        out_f = int(state[f"{2 * (n_linear - 1)}.weight"].shape[0])
        if x_tr.shape[1] != in_f:
            raise UserError(f"the random network takes {in_f} inputs but the images have {x_tr.shape[1]}")
    n_classes = int(max(np.max(y_tr), np.max(y_te))) + 1
    if out_f < n_classes:
        raise UserError(f"the random network has {out_f} outputs but the data has {n_classes} classes")
    xs = [torch.as_tensor(np.asarray(a), dtype=torch.float32).to(device) for a in (x_tr, x_te)]
    ys = [torch.as_tensor(np.asarray(a), dtype=torch.int64).to(device) for a in (y_tr, y_te)]
    return xs, ys


def train_step(model: EdgePopupNet, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor,
               temperature: float | None = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on the scores. Returns (summed loss as a float64 0-d tensor, number of
    correct predictions as a 0-d tensor), both left on the device: no host synchronisation.
    ``temperature=None``: the batch's own logit standard deviation (detached, on the device)."""
    out = model(xb)
    if temperature is None:
        t = out.detach().std().clamp_min(1e-12) if out.numel() > 1 else out.new_ones(())
        loss = F.cross_entropy(out / t, yb)
    else:
        loss = F.cross_entropy(out / temperature, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        return loss.detach().double() * yb.shape[0], (out.argmax(1) == yb).sum()


def train_scores(model: EdgePopupNet, x_train: torch.Tensor, y_train: torch.Tensor,
                 config: EdgePopupConfig, x_test: torch.Tensor | None = None,
                 y_test: torch.Tensor | None = None, progress: Progress | None = None,
                 on_epoch: Callable[[dict], None] | None = None) -> dict:
    """SGD on the scores; returns {'curve': [...], 'epoch_seconds': [...], ...}.

    Inside an epoch nothing is read back to the host except every ``sync_every`` steps
    (running loss and accuracy for the progress bar and the curve)."""
    device = x_train.device
    n = int(x_train.shape[0])
    bs = int(config.batch_size)
    steps_per_epoch = math.ceil(n / bs)
    total = steps_per_epoch * int(config.epochs)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    temperature = logit_temperature(model, x_train, config.temperature)
    sync_every = int(config.sync_every) if config.sync_every is not None else (50 if device.type == "cuda" else 10)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    gen = torch.Generator().manual_seed(int(config.seed))
    curve: list[dict] = []
    epoch_seconds: list[float] = []
    model.train()
    global_step = 0
    last = {}
    for epoch in range(int(config.epochs)):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        win_loss = torch.zeros((), dtype=torch.float64, device=device)
        win_correct = torch.zeros((), dtype=torch.int64, device=device)
        win_seen = 0
        bar = progress(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}") if progress else None
        since = 0
        for step in range(steps_per_epoch):
            idx = perm[step * bs:(step + 1) * bs]
            xb, yb = x_train[idx], y_train[idx]
            l_b, c_b = train_step(model, opt, xb, yb, temperature)
            sched.step()
            global_step += 1
            with torch.no_grad():
                b = int(yb.shape[0])
                loss_sum += l_b
                correct += c_b
                win_loss += l_b
                win_correct += c_b
                seen += b
                win_seen += b
            since += 1
            advance(bar, 1)          # the bar's step count needs nothing from the device
            if since == sync_every or step == steps_per_epoch - 1:
                # the only host synchronisation inside an epoch
                wl, wc = float(win_loss), int(win_correct)
                point = {"epoch": epoch + 1, "step": global_step, "lr": float(sched.get_last_lr()[0]),
                         "train_loss": wl / win_seen, "train_accuracy": wc / win_seen}
                curve.append(point)
                # window means, read back every sync_every steps: say which steps
                annotate(bar, **{"loss": f"{point['train_loss']:.4f}",
                                 "train acc": f"{point['train_accuracy']:.4f}",
                                 "over steps": f"{step + 2 - since}-{step + 1}" if since > 1 else f"{step + 1}"})
                win_loss.zero_()
                win_correct.zero_()
                win_seen = 0
                since = 0
        close(bar)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_seconds.append(time.perf_counter() - t0)
        epoch_loss = float(loss_sum) / max(seen, 1)
        if not math.isfinite(epoch_loss):
            raise UserError(f"edge-popup diverged (loss {epoch_loss}) in epoch {epoch + 1}; "
                            f"try a smaller --lr than {config.lr}")
        last = {"epoch": epoch + 1, "step": global_step, "epoch_train_loss": epoch_loss,
                "epoch_train_accuracy": int(correct) / max(seen, 1), "epoch_seconds": epoch_seconds[-1]}
        if x_test is not None and (config.eval_every_epoch or epoch == int(config.epochs) - 1):
            last["test_accuracy"] = evaluate_on_device(model, x_test, y_test)
        curve.append(last)
        if on_epoch is not None:
            on_epoch({**last, "epochs": int(config.epochs)})
        log.info("epoch %d/%d: loss %.4f, train acc %.4f%s, %.1f s", epoch + 1, config.epochs, epoch_loss,
                 last["epoch_train_accuracy"],
                 f", test acc {last['test_accuracy']:.4f}" if "test_accuracy" in last else "",
                 epoch_seconds[-1])
    return {"curve": curve, "epoch_seconds": epoch_seconds, "steps_per_epoch": steps_per_epoch,
            "final": last, "temperature": temperature}


@torch.no_grad()
def logit_temperature(model: EdgePopupNet, x: torch.Tensor, spec: float | str = "auto",
                      sample: int = 1024) -> float | None:
    """T of the training loss CE(logits / T): a number, or 'auto' = the standard deviation of
    the initial masked network's logits on the first ``sample`` training images (1 if that is
    0 or not finite). Dividing by T > 0 changes no prediction (argmax) and no mask semantics;
    it only keeps the loss of an unnormalised random network (U[-1, 1] weights, logits in the
    hundreds) from saturating, where the scores otherwise learn to switch the network off."""
    if spec == "batch":
        return None
    if spec != "auto":
        return float(spec)
    out = _frozen_forward(model)(x[:sample])
    t = float(out.double().std()) if out.numel() > 1 else 1.0
    return t if math.isfinite(t) and t > 0 else 1.0
