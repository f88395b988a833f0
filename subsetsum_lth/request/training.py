"""The requests of the commands that train: edge-popup and train-target."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from subsetsum_lth.commands._common import float_range, int_range, integer, non_negative_float, positive_float
from subsetsum_lth.edge_popup import EdgePopupConfig
from subsetsum_lth.commands._target_args import add_preprocessing_arguments
from subsetsum_lth.errors import UserError
from subsetsum_lth.limits import MAX_COUNT, MAX_EPOCHS, MAX_SEED
from subsetsum_lth.options import option
from subsetsum_lth.request.generate import add_option, add_options, add_remaining, read_fields
from subsetsum_lth.train import TrainConfig

_count = int_range(1, MAX_COUNT * 100)   # 1e10: --param-budget's memory is checked by EdgePopupConfig


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"the kept fraction must lie in (0, 1], got {text}")
    return v


def _train_subset(text: str):
    if text in ("auto", "all"):
        return None if text == "all" else text
    return _count(text)


def _temperature(text: str):
    if text in ("auto", "batch"):
        return text
    return positive_float(text)


@dataclass(frozen=True, kw_only=True)
class EdgePopupRequest:
    """`subsetsum-lth edge-popup`: the EdgePopupConfig, the run folder and the printing options."""

    out: Path = option(flag="--out", help="run folder to write")
    no_progress: bool = option(False, flag="--no-progress",
                               help="no progress output (a bar on a terminal, else a line every ~10 s)")
    json: bool = option(False, flag="--json", help="print report.json to stdout")
    config: Any = None

    @classmethod
    def add_arguments(cls, p) -> None:
        E = EdgePopupConfig

        seed = {"type": int_range(0, MAX_SEED)}
        src = p.add_argument_group("random network (exactly one)")
        add_options(src.add_mutually_exclusive_group(required=True), E, "from_run", "from_target", "wide",
                    from_run={"type": Path}, from_target={"type": Path})
        add_options(src, E, "param_budget", "wide_init", "wide_bias", "block_width", "C", "eps", "input_domain",
                    "net_seed", param_budget={"type": _count}, block_width={"type": _count},
                    C={"type": positive_float}, eps={"type": positive_float}, net_seed=seed)
        e = p.add_argument_group("edge-popup")
        add_options(e, E, "keep", "scope", "structure", "epochs", "lr", "batch_size", "momentum", "weight_decay",
                    "seed", "device", "threads", "data", "data_dir", "train_subset", "test_subset", "sync_every",
                    "inner_relu", "temperature", "eval_every_epoch",
                    keep={"type": _fraction}, epochs={"type": int_range(1, MAX_EPOCHS)},
                    lr={"type": positive_float}, batch_size={"type": _count},
                    momentum={"type": float_range(0.0, 0.999999, lo_open=False)},
                    weight_decay={"type": non_negative_float}, seed=seed,
                    threads={"type": int_range(1, MAX_COUNT)}, data_dir={"type": Path},
                    train_subset={"type": _train_subset}, test_subset={"type": _count},
                    sync_every={"type": _count}, temperature={"type": _temperature})
        o = p.add_argument_group("output")
        add_option(o, cls, "out")
        add_options(o, E, "overwrite", "plots")
        add_options(o, cls, "no_progress", "json")
        add_remaining(p, E, cls)

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> EdgePopupRequest:
        values = read_fields(ns, EdgePopupConfig)
        if values.get("data_dir") is not None:
            values["data_dir"] = str(values["data_dir"])
        return cls(**read_fields(ns, cls), config=EdgePopupConfig(**values))


class _Recorded(argparse.Action):
    """Stores the value and remembers that the option was given (its default depends on --arch)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        given = set(getattr(namespace, "_given", ()))
        given.add(self.dest)
        setattr(namespace, "_given", given)


def _arch_spec(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a preset such as lenet5 or a SPEC such as "
                                         "c6k5p2,mp2,c16k5,mp2,fc120,fc84,fc10")
    return text.strip()


def _hidden(text: str) -> tuple[int, ...]:
    text = text.strip()
    if text in ("", "none"):
        return ()
    try:
        widths = tuple(integer(t) for t in text.split(","))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 500 or 300,100, got {text!r}")
    return widths     # TrainConfig checks that they are positive


@dataclass(frozen=True, kw_only=True)
class TrainTargetRequest:
    """`subsetsum-lth train-target`: the TrainConfig, the output folder and the printing options."""

    out: str = option(flag="--out", metavar="DIR", help="output folder (created if needed)")
    progress: bool | None = option(
        None, flag="--progress",
        help="--progress: tqdm bars on stderr; --no-progress: no progress output; neither: "
             "bars when stderr is a terminal, else a plain line every ~10 s and per epoch")
    json: bool = option(False, flag="--json", help="print the summary as JSON")
    config: Any = None

    @classmethod
    def add_arguments(cls, p) -> None:
        T = TrainConfig
        add_option(p, cls, "out")
        # --hidden's default depends on --arch: the action records whether it was given
        add_options(p, T, "hidden", "bias", "arch", "dataset", "epochs", "lr", "batch_size", "seed", "data_dir",
                    "train_subset", "threads",
                    hidden={"type": _hidden, "action": _Recorded, "default": ",".join(map(str, T.hidden))},
                    arch={"type": _arch_spec})
        add_option(p, cls, "progress")
        add_preprocessing_arguments(p, expected=False, training=True)
        add_option(p, cls, "json")
        add_remaining(p, T, cls)

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> TrainTargetRequest:
        values = read_fields(ns, TrainConfig)
        if values.get("arch") is not None:
            if "hidden" in set(getattr(ns, "_given", ())):
                raise UserError("--hidden and --arch both describe the network; give one of them "
                                "(an MLP as a SPEC: --arch fc300,fc100,fc10)")
            if not values["bias"]:
                raise UserError("--no-bias applies to the --hidden MLP; with --arch drop the biases in the "
                                "SPEC with the suffix nb (c6k5nb, fc10nb)")
        config = TrainConfig(**values, input_normalize=ns.input_normalize, input_scale=ns.input_scale)
        return cls(**read_fields(ns, cls), config=config)
