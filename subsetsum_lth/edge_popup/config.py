"""Configuration of an edge-popup run: ``EdgePopupConfig`` (every knob, with its validation)
and the allowed values of its choice fields."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from subsetsum_lth import limits
from subsetsum_lth.errors import UserError

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


@dataclass
class EdgePopupConfig:
    """Everything ``run_edge_popup`` needs.

    Exactly one source of the random network: ``from_run`` (a run folder; its
    ``random_net.safetensors`` is used as is), ``from_target`` (a target file/folder; g is
    allocated as in ``approximate`` with ``block_width``/``C``/``eps``/``net_seed``) or
    ``wide`` (layer sizes of a plain MLP such as ``"784,H,10"``; each ``H`` is the largest
    width with at most ``param_budget`` parameters).
    """

    from_run: str | None = None
    from_target: str | None = None
    wide: str | Sequence | None = None
    param_budget: int | None = None
    wide_init: str = "uniform"
    wide_bias: bool = True
    block_width: int | None = None
    C: float = 1.5
    eps: float = 0.01
    input_domain: str | None = None
    net_seed: int | None = None        #: seed of a freshly allocated g (default: ``seed``)

    keep: float = 0.5
    scope: str = "layer"
    structure: str = "free"
    epochs: int = 1
    lr: float = 0.02
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    data_dir: str | None = None
    #: the data set to train and test on; None: the one the run (or target) records, else MNIST
    data: str | None = None
    train_subset: int | str | None = "auto"   #: first N training images; "auto": CPU_TRAIN_SUBSET on CPU, all on CUDA
    test_subset: int | None = None
    sync_every: int | None = None      #: steps between reads of loss/accuracy (None: 50 on CUDA, 10 on CPU)
    eval_every_epoch: bool = True
    selection: str = "auto"            #: top-k method: auto (partition on CPU, topk elsewhere)
    temperature: float | str = "auto"  #: loss on logits / T; "auto": T = std of the initial logits
    inner_relu: bool = True            #: False: Linear layers 1, 3, 5, ... (g's layers 2i-1) used linearly
    plots: bool = True
    overwrite: bool = False

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
