"""Train a target ReLU network on MNIST (the network that the construction will approximate).

The result is a folder with ``target.safetensors`` (the ``state_dict`` of an
``nn.Sequential(Linear, ReLU, ..., Linear)``: keys ``0.weight``, ``0.bias``, ``2.weight``, ...,
float32, biases only when ``bias=True``) and ``target.json`` (a summary). Inputs are
MNIST pixels / 255, so the input domain is non-negative.

Settings follow Pensia et al. and the edge-popup paper: SGD with momentum 0.9, weight decay
5e-4, batch 64, a cosine learning-rate schedule over all steps. Runs are reproducible: the
initialisation and the shuffling come from ``seed`` only (the caller's global RNG state is
left untouched).

With ``arch`` (a preset such as ``lenet5`` or a SPEC, see :mod:`subsetsum_lth.arch`) the target is
a CNN: ``target.safetensors`` holds ``module_from_arch(arch).state_dict()`` (float32; keys
``0.weight``, ``0.bias``, ``3.weight``, ... for LeNet-5) and its metadata the architecture
(``arch``: JSON list of ops, ``input_shape``: JSON ``[C, H, W]``, ``arch_spec``: the spec given).
It is trained with Adam (lr 1e-3, no weight decay, batch 128, 10 epochs, the same cosine
schedule) unless told otherwise. ``dataset`` "fashion-mnist" trains on Fashion-MNIST instead.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from subsetsum_lth import __version__, limits, manifest
from subsetsum_lth.arch import PARAMETRIC, SPEC_HELP, canonical_arch, check_arch, expected_shapes, is_residual, module_from_arch, parametric_keys, parse_arch
from subsetsum_lth.data.mnist import DATASETS, load_mnist, resolve_data_dir
from subsetsum_lth.errors import UserError
from subsetsum_lth.layerkinds import graph_kinds
from subsetsum_lth.options import option
from subsetsum_lth.preprocess import Preprocessing
from subsetsum_lth.progress import Eta, duration
from subsetsum_lth.runfolder import _atomic_write_bytes

log = logging.getLogger(__name__)

INPUT_DIM = 784
N_CLASSES = 10
TARGET_FILE = "target.safetensors"
SUMMARY_FILE = "target.json"
TARGET_FORMAT = "subsetsum-lth-target"


#: the MLP recipe (SGD) and the CNN recipe (Adam, with ``arch``): fields left None take these
MLP_DEFAULTS = {"epochs": 10, "lr": 0.05, "batch_size": 64, "weight_decay": 5e-4, "optimizer": "sgd"}
ARCH_DEFAULTS = {"epochs": 10, "lr": 1e-3, "batch_size": 128, "weight_decay": 0.0, "optimizer": "adam"}
OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainConfig:
    """Hyper-parameters of ``train-target``. ``epochs``, ``lr``, ``batch_size``,
    ``weight_decay`` and ``optimizer`` left None take :data:`MLP_DEFAULTS`, or
    :data:`ARCH_DEFAULTS` when ``arch`` is given."""

    hidden: tuple[int, ...] = option((500,), flag="--hidden", metavar="H1,H2,...",
                                     help="hidden layer widths, comma-separated ('' for none)")
    bias: bool = option(True, flag="--bias", help="give every Linear layer a bias")
    epochs: int | None = option(None, flag="--epochs",
                                help=f"passes over the training set (default {MLP_DEFAULTS['epochs']}; "
                                     f"{ARCH_DEFAULTS['epochs']} with --arch)")
    lr: float | None = option(None, flag="--lr",
                              help=f"initial learning rate, cosine-annealed to 0 over all steps (default "
                                   f"{MLP_DEFAULTS['lr']:g} with SGD; {ARCH_DEFAULTS['lr']:g} with --arch, Adam)")
    batch_size: int | None = option(None, flag="--batch-size", metavar="N",
                                    help=f"mini-batch size (default {MLP_DEFAULTS['batch_size']}; "
                                         f"{ARCH_DEFAULTS['batch_size']} with --arch)")
    momentum: float = 0.9
    weight_decay: float | None = None
    seed: int = option(0, flag="--seed", help="seeds the initialisation and the shuffling (same seed, same weights)")
    data_dir: str | None = option(None, flag="--data-dir", metavar="DIR",
                                  help="folder holding the four MNIST (or Fashion-MNIST) IDX files (.gz or not) "
                                       "(default: $SUBSETSUM_LTH_DATA, for Fashion-MNIST "
                                       "$SUBSETSUM_LTH_FASHION_DATA, else the user cache)")
    #: use only the first N training images (tests, quick runs)
    train_subset: int | None = option(None, flag="--train-subset", metavar="N",
                                      help="train on the first N training images only (default: all 60000)")
    #: torch intra-op threads (None: torch's default)
    threads: int | None = option(None, flag="--threads", metavar="N",
                                 help="torch CPU threads (default: torch's own choice)")
    input_normalize: str | None = None  #: "MEAN,STD" the model is trained on (see subsetsum_lth.preprocess)
    input_scale: str | None = None      #: pixel scale before normalising ("1/255" when None)
    #: a CNN/MLP architecture (preset or SPEC; None: the --hidden MLP)
    arch: str | None = option(None, flag="--arch", metavar="ARCH",
                              help="train this CNN (or MLP) instead of the --hidden MLP. " + SPEC_HELP.replace("%", "%%"))
    #: "mnist" or "fashion-mnist"
    dataset: str = option("mnist", flag="--data", choices=("mnist", "fashion-mnist"),
                          help="the data set to train and test on")
    optimizer: str | None = None        #: "sgd" (momentum) or "adam"

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        for key, value in (ARCH_DEFAULTS if self.arch is not None else MLP_DEFAULTS).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.validate()      # the one check of the numbers (the CLI only parses them)

    @property
    def sizes(self) -> list[int]:
        if self.arch is not None:
            return arch_sizes(self.parsed_arch(), INPUT_SHAPE)
        return [INPUT_DIM, *self.hidden, N_CLASSES]

    def parsed_arch(self) -> list[dict]:
        """The architecture (list of ops) of ``arch`` for 1x28x28 inputs; UserError when bad."""
        arch = parse_arch(self.arch, INPUT_SHAPE)
        out = arch_sizes(arch, INPUT_SHAPE)[-1]
        if out != N_CLASSES:
            raise UserError(f"--arch {self.arch}: the network outputs {out} values but the data set has "
                            f"{N_CLASSES} classes; make the last layer fc{N_CLASSES}")
        return arch

    def validate(self) -> None:
        if any(h < 1 for h in self.hidden):
            raise UserError(f"--hidden: layer widths must be positive integers, got {self.hidden}")
        limits.check_int("--epochs", int(self.epochs), 1, limits.MAX_EPOCHS)
        limits.check_int("--batch-size", int(self.batch_size), 1, limits.MAX_COUNT)
        limits.check_int("--seed", int(self.seed), 0, limits.MAX_SEED)
        if self.threads is not None:   # more than the cores is capped (with a note) when training starts
            limits.check_int("--threads", int(self.threads), 1, limits.MAX_COUNT)
        if self.arch is None:
            sizes = [INPUT_DIM, *self.hidden, N_CLASSES]
            params = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
            # float32 weights, gradients and momentum, the float64 copy written out, and a batch's
            # activations (forward and backward)
            need = params * (4 * 3 + 8) + int(self.batch_size) * sum(sizes) * 4 * 4
            limits.check_memory(need, f"--hidden {','.join(map(str, self.hidden))} ({params:,} parameters)",
                                "choose smaller hidden widths")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if int(self.batch_size) < 1:
            raise UserError(f"--batch-size must be a positive integer, got {self.batch_size}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise UserError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.train_subset is not None and not 1 <= int(self.train_subset) <= 60000:
            raise UserError(f"--train-subset must be in 1..60000, got {self.train_subset}")
        if self.threads is not None and int(self.threads) < 1:
            raise UserError(f"--threads must be a positive integer, got {self.threads}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.dataset not in DATASETS:
            raise UserError(f"unknown data set {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.arch is not None:
            # checked here (a bad SPEC is one line before any data is read); a normalisation with
            # a zero-padded first conv is fine: it is an input op in front of the network (issue 23)
            self.parsed_arch()
            Preprocessing.parse(self.input_normalize, self.input_scale)


#: the image shape (C, H, W) of MNIST and Fashion-MNIST
INPUT_SHAPE = (1, 28, 28)


def arch_sizes(arch: list[dict], input_shape: Sequence[int]) -> list[int]:
    """The input size followed by the output size (all channels and positions) of every
    conv2d/linear of ``arch``: an MLP's layer sizes, the widths of a CNN."""
    if is_residual(arch):
        check_arch(arch, input_shape)
        return [math.prod(input_shape)] + [math.prod(k.out_shape) for k in graph_kinds(canonical_arch(arch), input_shape)]
    shapes = check_arch(arch, input_shape)
    return [math.prod(input_shape)] + [math.prod(sh) for op, sh in zip(arch, shapes)
                                       if op["op"] in PARAMETRIC]


def build_mlp(sizes: Sequence[int], bias: bool = True) -> nn.Sequential:
    """``nn.Sequential(Linear, ReLU, ..., Linear)`` for layer sizes ``[d0, d1, ..., dl]``."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise UserError(f"an MLP needs at least two positive layer sizes, got {sizes}")
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=bias))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _as_tensor(a, dtype) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to(dtype)
    return torch.as_tensor(np.asarray(a), dtype=dtype)


@torch.no_grad()
def evaluate(model_or_callable: nn.Module | Callable, x, y, batch: int = 2048) -> float:
    """Accuracy (fraction in [0, 1]) of ``argmax model(x)`` against labels ``y``.

    ``model_or_callable`` gets float32 tensors ``[B, 784]`` and returns logits ``[B, C]`` (a
    tensor or an array). ``x``, ``y``: numpy arrays or tensors. An ``nn.Module`` is put in eval
    mode for the call and its previous mode restored.
    """
    x = _as_tensor(x, torch.float32)
    y = _as_tensor(y, torch.int64)
    n = x.shape[0]
    if n == 0:
        raise ValueError("evaluate: empty data")
    if y.shape[0] != n:
        raise ValueError(f"evaluate: {n} inputs but {y.shape[0]} labels")
    module = model_or_callable if isinstance(model_or_callable, nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        correct = 0
        for start in range(0, n, batch):
            out = model_or_callable(x[start:start + batch])
            out = _as_tensor(out, torch.float32) if not isinstance(out, torch.Tensor) else out
            correct += int((out.argmax(dim=1).cpu() == y[start:start + batch]).sum())
    finally:
        if module is not None:
            module.train(was_training)
    return correct / n


def save_target(model: nn.Sequential, path, sizes: Sequence[int], extra: dict | None = None) -> None:
    """Write ``model``'s state_dict (float32) to ``path`` as safetensors, atomically; ``extra``
    adds metadata (the input preprocessing, the test accuracy)."""
    from safetensors.torch import save

    path = Path(path)
    tensors = {k: v.detach().to(torch.float32).contiguous().clone()
               for k, v in model.state_dict().items()}
    metadata = {
        "format": TARGET_FORMAT,
        "activation": "relu",
        "input_domain": "nonnegative",
        "input_scale": "1/255",
        "dataset": "mnist",
        "sizes": ",".join(str(int(s)) for s in sizes),
    }
    metadata.update({k: str(v) for k, v in (extra or {}).items()})
    _atomic_write_bytes(path, save(tensors, metadata=metadata))


def _write_json(path: Path, obj: dict) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def train_target(config: TrainConfig, out_dir, progress: bool = False,
                 heartbeat: Callable[[str], None] | None = None,
                 heartbeat_seconds: float = 10.0, on_estimate: Callable[[str], None] | None = None) -> dict:
    """Train an MLP on MNIST per ``config``; write ``target.safetensors`` and ``target.json``
    into ``out_dir`` (created if needed); return the summary written to ``target.json`` plus
    ``target_path`` (absolute path of the weights file).

    ``progress``: tqdm bars on stderr. ``heartbeat``: called with one plain line of progress at
    most every ``heartbeat_seconds`` inside an epoch and once at the end of every epoch (for
    output that is not a terminal, where bars stay invisible). ``on_estimate``: called once with
    one line, the time the training will take, estimated from the first timed steps of the
    training loop itself (the heartbeat lines then carry the estimate, corrected as it goes)."""
    config.validate()
    out_dir = Path(out_dir)
    # refuse a folder the tool did not write, or one it cannot write, before any training
    n_params = _n_params_arch(config.parsed_arch()) if config.arch is not None else \
        _n_params(config.sizes, config.bias)
    writer = manifest.open_folder(out_dir, "target", need_bytes=8 * n_params + (1 << 20))
    try:
        summary = _train_target(config, out_dir, progress, heartbeat, heartbeat_seconds, on_estimate)
        writer.finish()
        return summary
    finally:
        writer.close()


def _n_params(sizes: Sequence[int], bias: bool) -> int:
    return sum(p * q + (q if bias else 0) for p, q in zip(sizes[:-1], sizes[1:]))


def _n_params_arch(arch: list[dict]) -> int:
    return sum(math.prod(s) for _, op in parametric_keys(arch) for s in expected_shapes(op).values())


def _optimizer(model: nn.Module, config: TrainConfig, lr: float | None = None):
    lr = config.lr if lr is None else lr
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def save_arch_target(model: nn.Module, path, arch: list[dict], input_shape: Sequence[int],
                     extra: dict | None = None) -> None:
    """Write ``model``'s state_dict (float32; ``model`` built by ``module_from_arch(arch)``) to
    ``path`` as safetensors, atomically, with the metadata of :func:`save_target` plus ``arch``
    (the architecture as JSON), ``input_shape`` (JSON ``[C, H, W]``) and ``sizes`` (input size and
    the output size of every conv2d/linear); ``extra`` adds metadata (``dataset``, ...)."""
    import json as _json

    arch = canonical_arch(arch)
    want = {k: tuple(v.shape) for k, v in module_from_arch(arch).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if want != have:
        raise ValueError(f"the model's state_dict {have} is not that of the architecture {want}")
    meta = {"arch": _json.dumps(arch, separators=(",", ":")),
            "input_shape": _json.dumps([int(s) for s in input_shape])}
    save_target(model, path, arch_sizes(arch, input_shape), {**meta, **(extra or {})})


def _train_target(config: TrainConfig, out_dir: Path, progress: bool,
                  heartbeat: Callable[[str], None] | None, heartbeat_seconds: float,
                  on_estimate: Callable[[str], None] | None = None) -> dict:

    t_enter = time.perf_counter()
    data_dir = resolve_data_dir(config.data_dir, download=True, progress=progress, dataset=config.dataset)
    x_train, y_train = load_mnist("train", data_dir, dataset=config.dataset)
    x_test, y_test = load_mnist("test", data_dir, dataset=config.dataset)
    if config.train_subset is not None:
        x_train, y_train = x_train[:config.train_subset], y_train[:config.train_subset]
    prep = Preprocessing.parse(config.input_normalize, config.input_scale)
    if not prep.identity:   # train (and measure) on the declared preprocessing
        a, c = prep.affine(INPUT_DIM)
        x_train = (x_train * a.astype(np.float32) + c.astype(np.float32)).astype(np.float32)
        x_test = (x_test * a.astype(np.float32) + c.astype(np.float32)).astype(np.float32)
    arch = config.parsed_arch() if config.arch is not None else None
    if arch is not None:      # images N x 1 x 28 x 28 (pixel order unchanged)
        x_train = x_train.reshape(-1, *INPUT_SHAPE)
        x_test = x_test.reshape(-1, *INPUT_SHAPE)
    x_train_t, y_train_t = torch.from_numpy(x_train), torch.from_numpy(y_train)

    old_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(limits.cap_threads(int(config.threads)))
    t0 = time.perf_counter()
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            if arch is not None:
                torch.use_deterministic_algorithms(True)   # the same seed gives the same weights
                model = module_from_arch(arch)
            else:
                model = build_mlp(config.sizes, config.bias)
            final_loss = _fit(model, x_train_t, y_train_t, config, progress, heartbeat, heartbeat_seconds,
                              on_estimate, n_eval=len(x_train_t) + len(x_test), started=t_enter)
        seconds_train = time.perf_counter() - t0
        test_acc = evaluate(model, x_test, y_test)
        train_acc = evaluate(model, x_train_t, y_train_t)
    finally:
        torch.set_num_threads(old_threads)
        if arch is not None:
            torch.use_deterministic_algorithms(deterministic)
    seconds = time.perf_counter() - t0

    target_path = out_dir / TARGET_FILE
    extra = {**prep.to_metadata(), "test_accuracy": repr(float(test_acc))}
    if config.dataset != "mnist":
        extra["dataset"] = config.dataset
    if arch is not None:
        save_arch_target(model, target_path, arch, INPUT_SHAPE, {**extra, "arch_spec": config.arch})
    else:
        save_target(model, target_path, config.sizes, extra)
    n_params = int(sum(p.numel() for p in model.parameters()))
    summary = {
        "format": TARGET_FORMAT,
        "target_file": TARGET_FILE,
        "sizes": config.sizes,
        "bias": bool(config.bias) if arch is None else all(
            op.get("bias", False) for op in arch if op["op"] in ("conv2d", "linear")),
        "epochs": int(config.epochs),
        "lr": float(config.lr),
        "batch_size": int(config.batch_size),
        "momentum": float(config.momentum),
        "weight_decay": float(config.weight_decay),
        "schedule": "cosine",
        "seed": int(config.seed),
        "train_subset": config.train_subset,
        "n_train": int(x_train_t.shape[0]),
        "test_accuracy": test_acc,
        "train_accuracy": train_acc,
        "final_loss": final_loss,
        "seconds": round(seconds, 3),
        "seconds_training": round(seconds_train, 3),
        "threads": int(config.threads) if config.threads is not None else old_threads,
        "n_parameters": n_params,
        "input_domain": "nonnegative",
        "input_scale": prep.scale,
        "input_normalize": prep.to_metadata().get("input_normalize"),
        "data_dir": str(data_dir),
        **({"dataset": config.dataset} if config.dataset != "mnist" else {}),
        **({"arch_spec": config.arch, "arch": arch, "input_shape": list(INPUT_SHAPE),
            "optimizer": config.optimizer} if arch is not None else {}),
        "versions": {"torch": torch.__version__, "numpy": np.__version__,
                     "subsetsum_lth": _version()},
    }
    _write_json(out_dir / SUMMARY_FILE, summary)
    log.info("target %s: test accuracy %.4f, train accuracy %.4f, %.1f s; wrote %s",
             config.arch or "-".join(map(str, config.sizes)), test_acc, train_acc, seconds, target_path)
    return {**summary, "target_path": str(target_path.resolve())}


def _version() -> str:
    return __version__


def _fit(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
         progress: bool, heartbeat: Callable[[str], None] | None = None,
         heartbeat_seconds: float = 10.0, on_estimate: Callable[[str], None] | None = None,
         n_eval: int = 0, clock: Callable[[], float] = time.perf_counter, started: float | None = None) -> float:
    """The training loop; returns the mean loss of the last epoch. The time left is estimated
    from the loop's own timed steps (:class:`subsetsum_lth.progress.Eta`): ``on_estimate`` gets
    the first estimate once a few steps are timed, the heartbeat lines the corrected one."""
    from tqdm.auto import tqdm

    n = x.shape[0]
    bs = int(config.batch_size)
    steps_per_epoch = math.ceil(n / bs)
    total_steps = steps_per_epoch * int(config.epochs)
    opt = _optimizer(model, config)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(int(config.seed))
    model.train()
    epoch_loss = float("nan")
    # the final train/test evaluations: forward passes only, about a third of a step per batch
    eta = Eta(total_steps, tail_steps=n_eval / bs / 3)
    announced = on_estimate is None
    t_fit = last_beat = clock()
    for epoch in range(int(config.epochs)):
        perm = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = 0
        seen = 0
        t_epoch = time.perf_counter()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not progress, leave=False, unit="batch")
        for step in bar:
            idx = perm[step * bs:(step + 1) * bs]
            xb, yb = x[idx], y[idx]
            out = model(xb)
            loss = loss_fn(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                loss_sum += loss.detach().double() * yb.shape[0]
                correct += int((out.argmax(1) == yb).sum())
                seen += yb.shape[0]
            eta.step(clock())
            if not announced and (eta.ready or eta.done == total_steps):
                announced = True
                on_estimate(estimate_line(eta, clock() - t_fit, None if started is None else t_fit - started))
            if progress and (step % 50 == 0 or step == steps_per_epoch - 1):
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", acc=f"{correct / seen:.4f}",
                                lr=f"{sched.get_last_lr()[0]:.4g}")
            if heartbeat is not None and clock() - last_beat >= heartbeat_seconds:
                last_beat = clock()
                heartbeat(f"training: epoch {epoch + 1}/{config.epochs}, step {step + 1}/{steps_per_epoch}, "
                          f"loss {float(loss_sum) / seen:.4f}, train acc {correct / seen:.4f}, "
                          f"{duration(last_beat - t_fit)} elapsed{_left(eta)}")
        bar.close()
        epoch_loss = float(loss_sum) / max(seen, 1)
        if not math.isfinite(epoch_loss):
            raise UserError(f"training diverged (loss {epoch_loss}) in epoch {epoch + 1}; "
                            f"try a smaller learning rate than {config.lr}")
        if heartbeat is not None:
            last_beat = clock()
            heartbeat(f"training: epoch {epoch + 1}/{config.epochs} done: loss {epoch_loss:.4f}, "
                      f"train acc (running) {correct / max(seen, 1):.4f}, "
                      f"{last_beat - t_epoch:.1f} s this epoch, {duration(last_beat - t_fit)} elapsed{_left(eta)}")
        log.info("epoch %d/%d: loss %.4f, train acc (running) %.4f, %.1f s",
                 epoch + 1, config.epochs, epoch_loss, correct / max(seen, 1),
                 time.perf_counter() - t_epoch)
    return epoch_loss


def estimate_line(eta: Eta, elapsed: float, setup: float | None = None) -> str:
    """The first estimate, said once a few steps of the real loop are timed (``setup``: the seconds
    spent before the loop, loading the images and building the model and optimizer)."""
    per = eta.seconds_per_step()
    before = "" if setup is None else f"loading the images and setting up took {setup:.1f} s; "
    return (f"training: {before}the first {eta.done} steps took {elapsed:.1f} s ({1000 * per:.0f} ms per step after the "
            f"first): about {duration(elapsed + eta.remaining())} for all {eta.total:,} steps and the final "
            f"evaluation, {duration(eta.remaining())} left (corrected as training goes)")


def _left(eta: Eta) -> str:
    left = eta.remaining()
    return "" if left is None else f", about {duration(left)} left"


__all__ = ["TrainConfig", "build_mlp", "evaluate", "save_target", "save_arch_target", "train_target",
           "arch_sizes", "INPUT_SHAPE",
           "TARGET_FILE", "SUMMARY_FILE", "TARGET_FORMAT"]
