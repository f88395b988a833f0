"""The requests of the commands that read run folders and targets: certify, compare, inspect,
export-dense, and of `solvers`."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from subsetsum_lth.certify_box import BoxConfig, parse_box
from subsetsum_lth.commands._common import int_range, positive_float, seconds
from subsetsum_lth.commands._target_args import add_arch_argument, add_layers_argument, add_preprocessing_arguments
from subsetsum_lth.data.mnist import DATASETS
from subsetsum_lth.errors import UserError
from subsetsum_lth.limits import MAX_SAMPLES, MAX_STEPS
from subsetsum_lth.options import option
from subsetsum_lth.request.generate import add_option, add_options, read_fields
from subsetsum_lth.request.target_file import TargetFile, check_expected_accuracy

@dataclass(frozen=True, kw_only=True)
class CertifyRequest:
    """`subsetsum-lth certify RUN`: the run folder, the input set to certify and the bounds' effort."""

    run: Path = option(flag="RUN", help="run folder written by 'approximate'")
    input_radius: float | None = option(None, flag="--input-radius",
                                        help="radius r of the input ball (default: the run's)")
    input_domain: str | None = option(
        None, flag="--input-domain", choices=("nonnegative", "signed", "box"),
        help="input domain of the first layer (default: the run's); box: certify the box "
             "--input-box too (a run made with --input-domain box is always certified on its box)")
    input_box: str | None = option(
        None, flag="--input-box", metavar="LO,HI",
        help="bounds of every input coordinate for --input-domain box (default: the run's box, else 0,1)")
    bab_seconds: float = option(0.0, flag="--bab-seconds", metavar="S",
                                help="box certificate: branch and bound on unstable units for S seconds "
                                     "(default 0: none)")
    samples: int = option(512, flag="--samples", help="random points for the empirical bound")
    steps: int = option(100, flag="--steps", help="gradient-ascent steps for the empirical bound")
    data_dir: Path | None = option(
        None, flag="--data-dir",
        help="folder with the files of the data set the run records (to recompute its accuracies "
             "and input radius; default: the usual data locations, never a download)")
    json: bool = option(False, flag="--json", help="print the result as JSON")
    #: certify_run's ``box``: None, True (the run's box), a BoxConfig, or (either, bab seconds)
    box: Any = None

    @classmethod
    def add_arguments(cls, p) -> None:
        add_options(p, cls, "run", "input_radius", "input_domain", "input_box", "bab_seconds", "samples", "steps",
                    "data_dir", "json",
                    input_radius={"type": positive_float}, bab_seconds={"type": seconds(zero_ok=True)},
                    samples={"type": int_range(1, MAX_SAMPLES, "each point is an input vector in float64")},
                    steps={"type": int_range(0, MAX_STEPS)})

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> CertifyRequest:
        req = cls(**read_fields(ns, cls))
        box = None
        if req.input_domain == "box" or req.input_box is not None:
            if req.input_domain != "box":
                raise UserError("--input-box needs --input-domain box")
            box = BoxConfig(*parse_box(req.input_box)) if req.input_box is not None else True
        if req.bab_seconds:          # the run's box (or the asked one), refined by branch and bound
            box = (box, req.bab_seconds)
        return replace(req, box=box)


@dataclass(frozen=True, kw_only=True)
class CompareRequest(TargetFile):
    """`subsetsum-lth compare RUN...`: the runs, the target and data to compare them on, the output."""

    runs: tuple[Path, ...] = option(flag="RUN", metavar="RUN", repeat=True, help="run folders to compare")
    out: Path = option(flag="--out", help="folder for comparison.json/.csv/.png")
    target: Path | None = option(None, flag="--target",
                                 help="target file or folder (default: the first run's target.safetensors)")
    label: tuple[str, ...] | None = option(None, flag="--label", metavar="NAME", repeat=True,
                                           help="a name per run, in order (repeat the option; default: folder "
                                                "names)")
    data: str | None = option(None, flag="--data", choices=DATASETS,
                              help="the test set to use (default: the one the runs record, else mnist); one that "
                                   "contradicts the runs' record is refused")
    data_dir: Path | None = option(None, flag="--data-dir",
                                   help="folder with the MNIST (or Fashion-MNIST) IDX files")
    test_subset: int | None = option(None, flag="--test-subset", metavar="N",
                                     help="use the first N test images only")
    device: str = option("auto", flag="--device", choices=("auto", "cpu", "cuda"),
                         help="where ĝ and f are evaluated")
    plots: bool = option(True, flag="--no-plots", help="do not write the PNG")
    json: bool = option(False, flag="--json", help="print comparison.json to stdout")

    @classmethod
    def add_arguments(cls, p) -> None:
        add_options(p, cls, "runs", "out", "target")
        add_layers_argument(p)
        add_arch_argument(p)
        add_preprocessing_arguments(p, expected=False)
        add_options(p, cls, "label", "data", "data_dir", "test_subset", "device", "plots", "json",
                    test_subset={"type": int_range(1, 10_000_000)})

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> CompareRequest:
        req = cls(**read_fields(ns, cls), **cls.read_target_flags(ns))
        req.check_target_flags()
        return req


@dataclass(frozen=True, kw_only=True)
class InspectRequest(TargetFile):
    """`subsetsum-lth inspect FILE`: the file and how to read it, and the data to measure it on."""

    target: Path = option(flag="FILE", metavar="FILE",
                          help="graph (.pt2, TorchScript .ts/.pt), checkpoint (.pt/.pth/.ckpt/.bin/.tar/.safetensors) "
                               "or a train-target folder")
    expected_accuracy: float | None = None
    data: str | None = option(None, flag="--data", choices=DATASETS,
                              help="also measure the test accuracy on this data set (inputs pixels/255)")
    data_dir: Path | None = option(None, flag="--data-dir", help="folder with the data set files")
    json: bool = option(False, flag="--json", help="print what the loader sees as JSON")

    @classmethod
    def add_arguments(cls, p) -> None:
        add_option(p, cls, "target")
        add_layers_argument(p)
        add_arch_argument(p)
        add_preprocessing_arguments(p)
        add_options(p, cls, "data", "data_dir", "json")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> InspectRequest:
        req = cls(**read_fields(ns, cls), **cls.read_target_flags(ns), expected_accuracy=ns.expected_accuracy)
        if req.expected_accuracy is not None and req.data is None:
            raise UserError("--expected-accuracy is compared with the accuracy measured on --data; "
                            "add --data mnist or drop it")
        check_expected_accuracy(req.expected_accuracy)
        return req


@dataclass(frozen=True, kw_only=True)
class ExportDenseRequest:
    """`subsetsum-lth export-dense RUN`."""

    run: Path = option(flag="RUN", help="run folder written by 'approximate --store compact'")
    json: bool = option(False, flag="--json", help="print the written files as JSON")

    @classmethod
    def add_arguments(cls, p) -> None:
        add_options(p, cls, "run", "json")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> ExportDenseRequest:
        return cls(**read_fields(ns, cls))


@dataclass(frozen=True, kw_only=True)
class SolversRequest:
    """`subsetsum-lth solvers`."""

    json: bool = option(False, flag="--json", help="print a JSON list; auto's entry holds its routing table ('routing')")

    @classmethod
    def add_arguments(cls, p) -> None:
        add_option(p, cls, "json")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> SolversRequest:
        return cls(**read_fields(ns, cls))
