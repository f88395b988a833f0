"""Configuration of an edge-popup run: ``EdgePopupConfig`` (every knob, with its validation)
and the allowed values of its choice fields."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from subsetsum_lth import limits
from subsetsum_lth.errors import UserError
from subsetsum_lth.options import option

SCOPES = ("layer", "global")
STRUCTURES = ("free", "structured")
DEVICES = ("auto", "cpu", "cuda")
WIDE_INITS = ("uniform", "normal", "kaiming-uniform")
SELECTIONS = ("auto", "partition", "topk")
TEMPERATURES = ("batch", "auto")

#: training images of the default budget on CPU (``train_subset='auto'``): 60 steps of 128, a few
#: minutes for the 48M-entry random network of the 784-500-10 ticket on 2 cores
CPU_TRAIN_SUBSET = 7680

METHOD = "edge-popup"

EPOCHS = 1      #: the default --epochs


@dataclass
class EdgePopupConfig:
    """Everything ``run_edge_popup`` needs.

    Exactly one source of the random network: ``from_run`` (a run folder; its
    ``random_net.safetensors`` is used as is), ``from_target`` (a target file/folder; g is
    allocated as in ``approximate`` with ``block_width``/``C``/``eps``/``net_seed``) or
    ``wide`` (layer sizes of a plain MLP such as ``"784,H,10"``; each ``H`` is the largest
    width with at most ``param_budget`` parameters).
    """

    from_run: str | None = option(None, flag="--from-run", metavar="RUN",
                                  help="a run folder: its random_net.safetensors (copied byte for byte)")
    from_target: str | None = option(
        None, flag="--from-target", metavar="TARGET",
        help="allocate the construction's random network for this target (as 'approximate')")
    wide: str | Sequence | None = option(
        None, flag="--wide", metavar="SIZES",
        help="a plain random MLP, e.g. 784,1000,10, or 784,H,10 with --param-budget")
    param_budget: int | None = option(
        None, flag="--param-budget", metavar="N",
        help="--wide: H = the largest width with at most N parameters (biases counted)")
    wide_init: str = option("uniform", flag="--wide-init", choices=WIDE_INITS,
                            help="--wide: weight distribution (uniform = U[-1, 1], g's distribution; "
                                 "kaiming-uniform = U[±sqrt(6/fan_in)])")
    wide_bias: bool = option(True, flag="--no-bias", help="--wide: zero biases (not scored)")
    block_width: int | None = option(None, flag="--block-width",
                                     help="--from-target: units per block m (default: Theorem 1's formula)")
    C: float = option(1.5, flag="--C", help="--from-target: constant C of the width formula")
    eps: float = option(0.01, flag="--eps", help="--from-target: ε in the width formula")
    input_domain: str | None = option(
        None, flag="--input-domain", choices=("nonnegative", "signed"),
        help="first layer's input domain for the structured pre-pruning (default: the run's "
             "or the target's, else nonnegative as MNIST pixels are)")
    #: seed of a freshly allocated g (default: ``seed``)
    net_seed: int | None = option(None, flag="--net-seed",
                                  help="seed of a freshly allocated random network (default: --seed)")

    keep: float = option(0.5, flag="--keep", metavar="K",
                         help="fraction of weights KEPT (exactly ceil(K*n) per tensor, or over all with "
                              "--scope global)")
    scope: str = option("layer", flag="--scope", choices=SCOPES, help="where the top-k is taken")
    structure: str = option("free", flag="--structure", choices=STRUCTURES,
                            help="structured: only edges of the construction's block-diagonal pre-pruning may "
                                 "be kept")
    epochs: int = option(EPOCHS, flag="--epochs",
                         help=f"passes over the (--train-subset) training images (default: {EPOCHS}; with the CPU "
                              "subset, a budget of a few minutes)")
    lr: float = option(0.02, flag="--lr",
                       help="initial learning rate of the scores (cosine to 0). hidden-networks uses 0.1 on "
                            "kaiming-scaled networks of moderate width; on g (U[-1, 1] weights, hidden widths "
                            "in the tens of thousands, loss on logits / T) 0.1 moves the scores of the wide "
                            "layers by about their own size per step, the top-k reshuffles and the network "
                            "ends switched off (loss ln 10); 0.02 learns")
    batch_size: int = option(128, flag="--batch-size", help="mini-batch size")
    momentum: float = option(0.9, flag="--momentum", help="SGD momentum")
    weight_decay: float = option(5e-4, flag="--weight-decay", help="weight decay on the scores")
    seed: int = option(0, flag="--seed", help="seeds score initialisation and shuffling")
    device: str = option("auto", flag="--device", choices=DEVICES, help="auto: CUDA when available, else CPU")
    threads: int | None = option(None, flag="--threads",
                                 help="torch CPU threads (default: torch's; more than the CPU cores are capped "
                                      "to them, with a note)")
    data_dir: str | None = option(None, flag="--data-dir",
                                  help="folder with the MNIST (or Fashion-MNIST) IDX files")
    #: the data set to train and test on; None: the one the run (or target) records, else MNIST
    data: str | None = option(None, flag="--data", choices=("mnist", "fashion-mnist"),
                              help="the data set to train and test on (default: the one the run or target "
                                   "records, else mnist); one that contradicts the run's record is refused")
    #: first N training images; "auto": CPU_TRAIN_SUBSET on CPU, all on CUDA
    train_subset: int | str | None = option(
        "auto", flag="--train-subset", metavar="N",
        help="train on the first N training images only; auto: 7680 (60 steps of 128) on CPU, "
             "all 60000 on CUDA; all: every image")
    test_subset: int | None = option(None, flag="--test-subset", metavar="N",
                                     help="evaluate on the first N test images only")
    #: steps between reads of loss/accuracy (None: 50 on CUDA, 10 on CPU)
    sync_every: int | None = option(None, flag="--sync-every", metavar="STEPS",
                                    help="read loss/accuracy back from the device every STEPS steps (progress "
                                         "bar; default 50 on CUDA, 10 on CPU)")
    eval_every_epoch: bool = option(True, flag="--no-epoch-eval",
                                    help="evaluate the test accuracy only after the last epoch")
    selection: str = "auto"            #: top-k method: auto (partition on CPU, topk elsewhere)
    #: loss on logits / T; "auto": T = std of the initial logits
    temperature: float | str = option(
        "auto", flag="--temperature", metavar="T",
        help="train on CE(logits / T); auto: T = standard deviation of the initial masked "
             "network's logits (U[-1, 1] networks have logits in the hundreds); batch: each "
             "batch's own logit standard deviation; 1 = plain edge-popup")
    #: False: Linear layers 1, 3, 5, ... (g's layers 2i-1) used linearly
    inner_relu: bool = option(
        True, flag="--no-inner-relu",
        help="use the construction's layers 2i-1 linearly (no ReLU after Linear layers 0, 2, 4, "
             "...; Pensia et al.'s Fig. 1c structure without ReLU); needs an even number of "
             "Linear layers; for a CNN run the first (k×k) Conv2d of each pair is used linearly; "
             "recorded in report.json ('inner_relu', 'modules')")
    plots: bool = option(True, flag="--no-plots", help="do not write the training-curve PNG")
    overwrite: bool = option(False, flag="--overwrite", help="replace a run already in --out")

    def validate(self) -> None:
        sources = [s for s in ("from_run", "from_target", "wide") if getattr(self, s) is not None]
        if len(sources) != 1:
            raise UserError("give exactly one random network: --from-run RUN, --from-target TARGET "
                            f"or --wide SIZES (got {', '.join(sources) or 'none'})")
        if not (isinstance(self.keep, (int, float)) and 0 < float(self.keep) <= 1):
            raise UserError(f"--keep is the fraction of weights KEPT and must lie in (0, 1], got {self.keep}")
        if self.scope not in SCOPES:
            raise UserError(f"--scope must be one of {SCOPES}, got {self.scope!r}")
        if self.structure not in STRUCTURES:
            raise UserError(f"--structure must be one of {STRUCTURES}, got {self.structure!r}")
        if self.structure == "structured" and self.wide is not None:
            raise UserError("--structure structured imposes the construction's block-diagonal "
                            "pre-pruning and needs a construction-shaped network: use --from-run "
                            "(a subset-sum run) or --from-target, not --wide")
        if self.device not in DEVICES:
            raise UserError(f"--device must be one of {DEVICES}, got {self.device!r}")
        if self.temperature not in TEMPERATURES and not (
                isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise UserError(f"the temperature must be one of {TEMPERATURES} or a positive number, "
                            f"got {self.temperature!r}")
        if self.selection not in SELECTIONS:
            raise UserError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.wide_init not in WIDE_INITS:
            raise UserError(f"--wide-init must be one of {WIDE_INITS}, got {self.wide_init!r}")
        if self.data not in (None, "mnist", "fashion-mnist"):
            raise UserError(f"--data must be mnist or fashion-mnist, got {self.data!r}")
        if self.input_domain not in (None, "nonnegative", "signed"):
            raise UserError(f"--input-domain must be nonnegative or signed, got {self.input_domain!r}")
        for name in ("epochs", "batch_size", "sync_every"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"--momentum must lie in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if int(self.seed) < 0 or (self.net_seed is not None and int(self.net_seed) < 0):
            raise UserError("seeds must be non-negative integers")
        if self.threads is not None and int(self.threads) < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")
        for name in ("train_subset", "test_subset"):
            v = getattr(self, name)
            if name == "train_subset" and v == "auto":
                continue
            if v is not None and (isinstance(v, str) or int(v) < 1):
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if not self.inner_relu and self.wide is not None:
            raise UserError("--no-inner-relu drops the ReLU after the construction's layers 2i-1 and needs "
                            "a construction-shaped network (--from-run or --from-target), not --wide")
        if self.param_budget is not None:
            # float32 weights, scores, their gradient and momentum, and the written masks/weights
            limits.check_memory(float(self.param_budget) * 24, f"--param-budget {int(self.param_budget):,}",
                                "give a smaller --param-budget")
        if self.param_budget is not None and self.wide is None:
            raise UserError("--param-budget sizes a --wide network; it needs --wide SIZES with an H")
