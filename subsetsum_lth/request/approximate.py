"""The request of `subsetsum-lth approximate`."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from subsetsum_lth.approximate import ApproximateConfig
from subsetsum_lth.box_net import check_box_graph
from subsetsum_lth.certify_box import BoxConfig, DEFAULT_LOCAL_RADII, parse_box
from subsetsum_lth.commands._target_args import add_arch_argument, add_layers_argument, add_preprocessing_arguments
from subsetsum_lth.construction import ConstructionConfig
from subsetsum_lth.data.mnist import DATASETS
from subsetsum_lth.errors import UserError
from subsetsum_lth.executors import check_executor
from subsetsum_lth.options import option
from subsetsum_lth.request.generate import add_option, add_options, add_remaining, read_fields
from subsetsum_lth.request.target_file import TargetFile, check_expected_accuracy
from subsetsum_lth.solve import SolveConfig

@dataclass(frozen=True, kw_only=True)
class ApproximateRequest(TargetFile):
    """`subsetsum-lth approximate`: the target, the data, the run folder, the ApproximateConfig and
    the box options. ``config`` has every number checked; its input domain and radius are the
    flags' (or the defaults) until :meth:`config_for` fills in the ones the target and data give."""

    target: Path | None = option(
        None, flag="--target",
        help="target network: a graph (torch.export archive .pt2, or TorchScript .ts/.pt), read "
             "exactly; a state_dict in .pt/.pth/.ckpt/.bin/.tar or .safetensors, bare or in "
             "a checkpoint dict, read with stated assumptions (ReLU between layers; see "
             "'subsetsum-lth inspect FILE'); or a train-target folder; "
             "default: a 784-500-10 MNIST target trained once and cached when MNIST is "
             "found or can be downloaded (then evaluated on MNIST), else a seeded "
             "synthetic 784-300-10 target inside Theorem 1's class")
    expected_accuracy: float | None = None
    synthetic: bool = option(False, flag="--synthetic",
                             help="without --target: use the seeded synthetic 784-300-10 target even when "
                                  "MNIST is available")
    out: Path = option(flag="--out", help="run folder to write")
    input_radius: float | None = option(None, flag="--input-radius",
                                        help="radius r of the input ball for the certificate (default: 1, or "
                                             "from --data)")
    input_domain: str | None = option(
        None, flag="--input-domain", choices=("nonnegative", "signed", "box"),
        help="sign of the first layer's inputs (default: from the target's metadata or --data, "
             "else signed); box: every input coordinate lies in --input-box, and a box "
             "certificate (differential alpha-CROWN) is added; --eps is then checked on it")
    input_box: str | None = option(
        None, flag="--input-box", metavar="LO,HI",
        help="bounds of every input coordinate for --input-domain box (default with --data mnist: 0,1); "
             "a negative LO is written --input-box=-1,1")
    local_radius: tuple[float, ...] | None = option(
        None, flag="--local-radius", metavar="RHO", repeat=True,
        help="with --input-domain box and --data: certified agreement of f and the pruned network "
             "on l-inf balls of radius RHO around the test images (repeatable; default 0.01 and 0.05)")
    local_images: int | None = option(
        None, flag="--local-images", metavar="N",
        help="certified agreement on the first N test images only, with CROWN on each ball's unstable "
             "units for conv targets (far tighter, seconds per image); default: every test image, with "
             "interval bounds through the conv layers")
    data: str | None = option(None, flag="--data", choices=DATASETS,
                              help="evaluate target and pruned network on this data set's test images")
    data_dir: Path | None = option(None, flag="--data-dir", help="folder with the data set files")
    no_progress: bool = option(False, flag="--no-progress",
                               help="no progress output (bars on a terminal, else a line every ~10 s)")
    json: bool = option(False, flag="--json", help="print report.json to stdout")
    #: every setting of the run; its input domain and radius: see :meth:`config_for`
    config: Any = None
    bab_seconds: float = 0.0

    @classmethod
    def add_arguments(cls, p) -> None:
        """The options of `approximate`, in the order --help lists them."""
        add_option(p, cls, "target")
        add_layers_argument(p)
        add_arch_argument(p)
        add_preprocessing_arguments(p)
        add_options(p, cls, "synthetic", "out")
        add_options(p.add_mutually_exclusive_group(), ApproximateConfig, "eps", "weight_eps")
        # the input set of the certificate: the ball or the box
        add_options(p, cls, "input_radius", "input_domain", "input_box", "local_radius", "local_images")
        add_option(p, BoxConfig, "bab_seconds")
        add_options(p, cls, "data", "data_dir")
        add_option(p, ConstructionConfig, "seed")
        # the solver, its workers and limits, and where its batches run
        add_options(p, SolveConfig, "solver", "objective", "workers", "batch_size", "time_limit")
        add_option(p, ApproximateConfig, "max_hours")
        add_options(p, SolveConfig, "executor", "scheduler", "batch_timeout", "retries", "fallback")
        # the width of g's blocks and how they grow; g's weight distribution
        add_options(p, ConstructionConfig, "block_width", "width", "grow", "max_growth", "C", "delta",
                    "distribution")
        add_options(p, ApproximateConfig, "allow_infeasible", "resume", "overwrite", "empirical_samples",
                    "ascent_steps", "store", "plots")
        add_options(p, cls, "no_progress", "json")
        add_remaining(p, ConstructionConfig, SolveConfig, ApproximateConfig, cls)

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> ApproximateRequest:
        """The request the flags describe; every number and every check between flags, before any
        work (training the default target takes minutes). Checks that need the data set, which
        --resume and the default target may fill in, are :meth:`box_for` and :meth:`check_data`."""

        own = read_fields(ns, cls)
        req = cls(**own, **cls.read_target_flags(ns), expected_accuracy=getattr(ns, "expected_accuracy", None),
                  bab_seconds=ns.bab_seconds)
        req.check_target_flags()
        # every number, checked by the config dataclasses; the input domain and radius are
        # provisional (the target and --data decide them, see config_for)
        cc = read_fields(ns, ConstructionConfig)
        early_domain = req.input_domain if req.input_domain in ("nonnegative", "signed") else None
        cc.update(input_domain=early_domain or ConstructionConfig.input_domain,
                  eps=ns.eps or ns.weight_eps or ConstructionConfig.eps)
        config = ApproximateConfig(construction=ConstructionConfig(**cc), solve=SolveConfig(**read_fields(ns, SolveConfig)),
                                   input_radius=(ApproximateConfig.input_radius if req.input_radius is None
                                                 else req.input_radius),
                                   **read_fields(ns, ApproximateConfig))
        BoxConfig(local_radii=req.local_radius or (), bab_seconds=req.bab_seconds, local_images=req.local_images)
        check_executor(config.solve.executor, config.solve.scheduler)
        if req.input_domain != "box" and (req.input_box is not None or req.local_radius or req.bab_seconds
                                          or req.local_images is not None):
            raise UserError("--input-box, --local-radius, --local-images and --bab-seconds need --input-domain box")
        if req.target is not None and req.synthetic:
            raise UserError("--synthetic and --target exclude each other: drop one of them")
        check_expected_accuracy(req.expected_accuracy)
        return replace(req, config=config)

    def check_data(self) -> None:
        """--expected-accuracy is compared with an accuracy measured on the data set (``data``:
        the flag's, the run's under --resume, or MNIST for the default target)."""
        if self.expected_accuracy is not None and self.data is None:
            raise UserError("--expected-accuracy is compared with the accuracy measured on --data; "
                            "add --data mnist or drop it")

    def box_for(self, target):
        """--input-domain box / --input-box / --local-radius -> the BoxConfig (or None), one clear
        error each; ``target``: whether a box certificate applies (fully connected)."""
        if self.input_domain != "box":
            return None
        check_box_graph(target)        # a residual target: every hidden layer's input after a ReLU
        if self.input_box is None and self.data is None:
            raise UserError("--input-domain box needs --input-box LO,HI (e.g. --input-box 0,1), or --data mnist "
                            "whose pixels lie in [0, 1]")
        lo, hi = parse_box(self.input_box) if self.input_box is not None else (0.0, 1.0)
        radii = self.local_radius or (DEFAULT_LOCAL_RADII if self.data else ())
        if radii and self.data is None:
            raise UserError("--local-radius needs test images: add --data mnist")
        if self.local_images is not None and not radii:
            raise UserError("--local-images needs test images: add --data mnist")
        return BoxConfig(lo, hi, local_radii=tuple(radii), bab_seconds=self.bab_seconds,
                         local_images=self.local_images)

    def config_for(self, domain: str, radius: float, report_extra: dict, box):
        """The run's ApproximateConfig: ``config`` with the input domain and radius the target and
        data gave, the report's extra facts and the box (checked again by the dataclasses)."""
        c = self.config
        return replace(c, construction=replace(c.construction, input_domain=domain), input_radius=radius,
                       report_extra=report_extra, box=box)
