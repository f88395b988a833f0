"""The one reader of the command line: parsed flags -> a frozen, checked request per command.

Two halves:

* :func:`add_options` generates argparse options from dataclass fields made with
  :func:`subsetsum_lth.options.option` (flag, help, choices, metavar in the field's metadata; the
  value's type from its annotation; the default from the field) — the library's config classes
  (ConstructionConfig, SolveConfig, ApproximateConfig, BoxConfig, EdgePopupConfig, TrainConfig,
  SolverBenchConfig, ApproximateBenchConfig) and the request classes below declare their flags
  that way. A command lists its options in the order --help shows them; :func:`add_remaining`
  then adds any flagged field it did not list, so a new config field is a flag at once. (The
  target-file options --layers, --arch, --input-normalize/--input-scale, --expected-accuracy,
  whose help differs per command, are still written out in commands/_target_args.py.)
* ``XRequest.from_args(namespace)`` is the only place an ``argparse.Namespace`` is read: it builds
  the command's configs (whose ``__post_init__`` checks every number), runs every check that
  involves more than one flag, and returns a frozen request. The command's ``run(request)``
  never sees the namespace (tests/test_request.py holds every other module to that).

The library config classes are imported inside the functions, as the commands did: building the
parser of ``subsetsum-lth solvers`` must not import torch.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from subsetsum_lth.commands._common import float_range, int_range, integer, non_negative_float, positive_float
from subsetsum_lth.data.mnist import DATASETS
from subsetsum_lth.errors import UserError
from subsetsum_lth.limits import MAX_COUNT, MAX_EPOCHS, MAX_SEED
from subsetsum_lth.options import option, options

# ---------------------------------------------------------------------------- the generator

#: annotation (its first alternative, as written) -> argparse ``type=``
_TYPES = {"int": integer, "float": float, "str": None, "Path": Path}


def _value_type(annotation: str):
    base = str(annotation).split("|")[0].strip()
    if base.startswith("tuple[") or base.startswith("list["):
        base = base[base.index("[") + 1:].split(",")[0].rstrip("]").strip()
    if base not in _TYPES:
        raise TypeError(f"no command-line type for annotation {annotation!r}")
    return _TYPES[base]


def _container(parser, title: str | None):
    """The parser, or its argument group titled ``title`` (made on first use, in order)."""
    if not title or not isinstance(parser, argparse.ArgumentParser):
        return parser
    for group in parser._action_groups:
        if group.title == title:
            return group
    return parser.add_argument_group(title)


def add_option(parser, cls, name: str, **override: Any) -> argparse.Action:
    """Add field ``name`` of dataclass ``cls`` to ``parser`` (a parser, group or mutually
    exclusive group) as its metadata says; ``override``: argparse keywords that differ for this
    command (a range-checking ``type``, say)."""
    f = options(cls)[name]
    meta = f.metadata
    flag = meta["flag"]
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = dataclasses.MISSING
    positional = not flag.startswith("-")
    kw: dict[str, Any] = {"help": meta["help"]}
    if str(f.type).split("|")[0].strip() == "bool":
        # a flag switches the value from its default (--fast; --no-plots of a field that defaults to
        # True); a field that defaults to True or None under a positive flag is an on/off pair
        if default is False:
            action = "store_true"
        elif default is True and flag.startswith("--no-"):
            action = "store_false"
        else:
            action = argparse.BooleanOptionalAction
        kw.update(action=action, default=default)
    else:
        kw["type"] = _value_type(f.type)
        if meta.get("choices") is not None:
            kw["choices"] = meta["choices"]
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        elif not positional and "choices" not in kw:     # as argparse names it, not after the field
            kw["metavar"] = flag.lstrip("-").replace("-", "_").upper()
        if meta.get("repeat"):          # a flag given several times; a positional: one or more values
            kw.update(nargs="+") if positional else kw.update(action="append")
        if default is dataclasses.MISSING:
            if not positional:
                kw["required"] = True
        else:
            kw["default"] = default
    kw.update(override)
    if positional:
        return _container(parser, meta.get("group")).add_argument(name, **kw)
    return _container(parser, meta.get("group")).add_argument(flag, dest=name, **kw)


def add_options(parser, cls, *names: str, **overrides: dict) -> None:
    """:func:`add_option` for each of ``names`` in order (``overrides``: name -> argparse keywords)."""
    for name in names:
        add_option(parser, cls, name, **overrides.get(name, {}))


def add_remaining(parser, *classes) -> None:
    """Add every field with a flag of ``classes`` that ``parser`` does not have yet (after the
    ones a command lists in its own order): a field added to a config class is a flag at once."""
    for cls in classes:
        for name, f in options(cls).items():
            flag = f.metadata["flag"]
            if flag.startswith("-") and flag not in parser._option_string_actions:
                add_option(parser, cls, name)


def _read(ns: argparse.Namespace, cls) -> dict:
    """{field: value} of the fields of ``cls`` whose flags the namespace holds (lists as tuples)."""
    out = {}
    for name in options(cls):
        if hasattr(ns, name):
            v = getattr(ns, name)
            out[name] = tuple(v) if isinstance(v, list) else v
    return out


# ---------------------------------------------------------------------------- the target file

#: the flags that describe a --target file (their options: commands/_target_args.py)
TARGET_FLAGS = (("--layers", "layers"), ("--arch", "arch"), ("--input-normalize", "input_normalize"),
                ("--input-scale", "input_scale"))


@dataclass(frozen=True, kw_only=True)
class TargetFile:
    """A target file and how to read it: layer order, architecture, input preprocessing."""

    target: Path | None = None
    layers: str | None = None
    arch: str | None = None
    input_normalize: str | None = None
    input_scale: str | None = None

    @staticmethod
    def read_target_flags(ns: argparse.Namespace) -> dict:
        return {name: getattr(ns, name, None) for _, name in TARGET_FLAGS}

    def target_flags_given(self) -> list[str]:
        return [flag for flag, name in TARGET_FLAGS if getattr(self, name) is not None]

    def check_target_flags(self) -> None:
        """--layers, --arch and the preprocessing flags describe a --target file."""
        given = self.target_flags_given()
        if self.target is None and given:
            raise UserError(f"{', '.join(given)} describe a --target file; pass --target or drop them")

    def preprocessing(self):
        """The Preprocessing the flags declare, or None when none was given."""
        if self.input_normalize is None and self.input_scale is None:
            return None
        from subsetsum_lth.preprocess import Preprocessing
        return Preprocessing.parse(self.input_normalize, self.input_scale)

    def load(self):
        """The target the flags describe (``target`` must be set)."""
        from subsetsum_lth.target import load_target
        return load_target(self.target, layers=self.layers, preprocessing=self.preprocessing(), arch=self.arch)


def _check_expected_accuracy(acc: float | None) -> None:
    if acc is not None and acc > 100:
        raise UserError(f"--expected-accuracy is a fraction or a percentage, got {acc:g}")


# ---------------------------------------------------------------------------- approximate

@dataclass(frozen=True, kw_only=True)
class ApproximateRequest(TargetFile):
    """`subsetsum-lth approximate`: the target, the data, the run folder, the ApproximateConfig and
    the box options. ``config`` has every number checked; its input domain and radius are the
    flags' (or the defaults) until :meth:`config_for` fills in the ones the target and data give."""

    target: Path | None = option(
        None, flag="--target",
        help="target checkpoint (a state_dict in .pt/.pth/.ckpt/.bin/.tar or .safetensors, bare or in "
             "a checkpoint dict; see 'subsetsum-lth inspect FILE') or a train-target folder; "
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
        from subsetsum_lth.approximate import ApproximateConfig
        from subsetsum_lth.certify_box import BoxConfig
        from subsetsum_lth.commands._target_args import (add_arch_argument, add_layers_argument,
                                                         add_preprocessing_arguments)
        from subsetsum_lth.construction import ConstructionConfig
        from subsetsum_lth.solve import SolveConfig

        add_option(p, cls, "target")
        add_layers_argument(p)
        add_arch_argument(p)
        add_preprocessing_arguments(p)
        add_options(p, cls, "synthetic", "out")
        add_options(p.add_mutually_exclusive_group(), ApproximateConfig, "eps", "weight_eps")
        # the input set of the certificate: the ball or the box
        add_options(p, cls, "input_radius", "input_domain", "input_box", "local_radius")
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
        from subsetsum_lth.approximate import ApproximateConfig
        from subsetsum_lth.certify_box import BoxConfig
        from subsetsum_lth.construction import ConstructionConfig
        from subsetsum_lth.executors import check_executor
        from subsetsum_lth.solve import SolveConfig

        own = _read(ns, cls)
        req = cls(**own, **cls.read_target_flags(ns), expected_accuracy=getattr(ns, "expected_accuracy", None),
                  bab_seconds=ns.bab_seconds)
        req.check_target_flags()
        # every number, checked by the config dataclasses; the input domain and radius are
        # provisional (the target and --data decide them, see config_for)
        cc = _read(ns, ConstructionConfig)
        early_domain = req.input_domain if req.input_domain in ("nonnegative", "signed") else None
        cc.update(input_domain=early_domain or ConstructionConfig.input_domain,
                  eps=ns.eps or ns.weight_eps or ConstructionConfig.eps)
        config = ApproximateConfig(construction=ConstructionConfig(**cc), solve=SolveConfig(**_read(ns, SolveConfig)),
                                   input_radius=(ApproximateConfig.input_radius if req.input_radius is None
                                                 else req.input_radius),
                                   **_read(ns, ApproximateConfig))
        BoxConfig(local_radii=req.local_radius or (), bab_seconds=req.bab_seconds)
        check_executor(config.solve.executor, config.solve.scheduler)
        if req.input_domain != "box" and (req.input_box is not None or req.local_radius or req.bab_seconds):
            raise UserError("--input-box, --local-radius and --bab-seconds need --input-domain box")
        if req.target is not None and req.synthetic:
            raise UserError("--synthetic and --target exclude each other: drop one of them")
        _check_expected_accuracy(req.expected_accuracy)
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
        from subsetsum_lth.certify_box import DEFAULT_LOCAL_RADII, BoxConfig, parse_box
        if not target.is_mlp:
            raise UserError("--input-domain box is implemented for fully connected targets; for a network with "
                            "conv/pooling layers use --input-domain nonnegative (or signed) and its ball "
                            "certificate")
        if self.input_box is None and self.data is None:
            raise UserError("--input-domain box needs --input-box LO,HI (e.g. --input-box 0,1), or --data mnist "
                            "whose pixels lie in [0, 1]")
        lo, hi = parse_box(self.input_box) if self.input_box is not None else (0.0, 1.0)
        radii = self.local_radius or (DEFAULT_LOCAL_RADII if self.data else ())
        if radii and self.data is None:
            raise UserError("--local-radius needs test images: add --data mnist")
        return BoxConfig(lo, hi, local_radii=tuple(radii), bab_seconds=self.bab_seconds)

    def config_for(self, domain: str, radius: float, report_extra: dict, box):
        """The run's ApproximateConfig: ``config`` with the input domain and radius the target and
        data gave, the report's extra facts and the box (checked again by the dataclasses)."""
        c = self.config
        return replace(c, construction=replace(c.construction, input_domain=domain), input_radius=radius,
                       report_extra=report_extra, box=box)


# ---------------------------------------------------------------------------- edge-popup

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
        from subsetsum_lth.edge_popup import EdgePopupConfig as E

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
        from subsetsum_lth.edge_popup import EdgePopupConfig
        values = _read(ns, EdgePopupConfig)
        if values.get("data_dir") is not None:
            values["data_dir"] = str(values["data_dir"])
        return cls(**_read(ns, cls), config=EdgePopupConfig(**values))


# ---------------------------------------------------------------------------- certify

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
        from subsetsum_lth.commands._common import seconds
        from subsetsum_lth.limits import MAX_SAMPLES, MAX_STEPS
        add_options(p, cls, "run", "input_radius", "input_domain", "input_box", "bab_seconds", "samples", "steps",
                    "data_dir", "json",
                    input_radius={"type": positive_float}, bab_seconds={"type": seconds(zero_ok=True)},
                    samples={"type": int_range(1, MAX_SAMPLES, "each point is an input vector in float64")},
                    steps={"type": int_range(0, MAX_STEPS)})

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> CertifyRequest:
        req = cls(**_read(ns, cls))
        box = None
        if req.input_domain == "box" or req.input_box is not None:
            from subsetsum_lth.certify_box import BoxConfig, parse_box
            if req.input_domain != "box":
                raise UserError("--input-box needs --input-domain box")
            box = BoxConfig(*parse_box(req.input_box)) if req.input_box is not None else True
        if req.bab_seconds:          # the run's box (or the asked one), refined by branch and bound
            box = (box, req.bab_seconds)
        return replace(req, box=box)


# ---------------------------------------------------------------------------- compare

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
        from subsetsum_lth.commands._target_args import (add_arch_argument, add_layers_argument,
                                                         add_preprocessing_arguments)
        add_options(p, cls, "runs", "out", "target")
        add_layers_argument(p)
        add_arch_argument(p)
        add_preprocessing_arguments(p, expected=False)
        add_options(p, cls, "label", "data", "data_dir", "test_subset", "device", "plots", "json",
                    test_subset={"type": int_range(1, 10_000_000)})

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> CompareRequest:
        req = cls(**_read(ns, cls), **cls.read_target_flags(ns))
        req.check_target_flags()
        return req


# ---------------------------------------------------------------------------- inspect

@dataclass(frozen=True, kw_only=True)
class InspectRequest(TargetFile):
    """`subsetsum-lth inspect FILE`: the file and how to read it, and the data to measure it on."""

    target: Path = option(flag="FILE", metavar="FILE",
                          help="checkpoint (.pt/.pth/.ckpt/.bin/.tar/.safetensors) or a train-target folder")
    expected_accuracy: float | None = None
    data: str | None = option(None, flag="--data", choices=DATASETS,
                              help="also measure the test accuracy on this data set (inputs pixels/255)")
    data_dir: Path | None = option(None, flag="--data-dir", help="folder with the data set files")
    json: bool = option(False, flag="--json", help="print what the loader sees as JSON")

    @classmethod
    def add_arguments(cls, p) -> None:
        from subsetsum_lth.commands._target_args import (add_arch_argument, add_layers_argument,
                                                         add_preprocessing_arguments)
        add_option(p, cls, "target")
        add_layers_argument(p)
        add_arch_argument(p)
        add_preprocessing_arguments(p)
        add_options(p, cls, "data", "data_dir", "json")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> InspectRequest:
        req = cls(**_read(ns, cls), **cls.read_target_flags(ns), expected_accuracy=ns.expected_accuracy)
        if req.expected_accuracy is not None and req.data is None:
            raise UserError("--expected-accuracy is compared with the accuracy measured on --data; "
                            "add --data mnist or drop it")
        _check_expected_accuracy(req.expected_accuracy)
        return req


# ---------------------------------------------------------------------------- export-dense, solvers

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
        return cls(**_read(ns, cls))


@dataclass(frozen=True, kw_only=True)
class SolversRequest:
    """`subsetsum-lth solvers`."""

    json: bool = option(False, flag="--json", help="print a JSON list")

    @classmethod
    def add_arguments(cls, p) -> None:
        add_option(p, cls, "json")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> SolversRequest:
        return cls(**_read(ns, cls))


# ---------------------------------------------------------------------------- train-target

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
        from subsetsum_lth.commands._target_args import add_preprocessing_arguments
        from subsetsum_lth.train import TrainConfig as T
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
        from subsetsum_lth.train import TrainConfig
        values = _read(ns, TrainConfig)
        if values.get("arch") is not None:
            if "hidden" in set(getattr(ns, "_given", ())):
                raise UserError("--hidden and --arch both describe the network; give one of them "
                                "(an MLP as a SPEC: --arch fc300,fc100,fc10)")
            if not values["bias"]:
                raise UserError("--no-bias applies to the --hidden MLP; with --arch drop the biases in the "
                                "SPEC with the suffix nb (c6k5nb, fc10nb)")
        config = TrainConfig(**values, input_normalize=ns.input_normalize, input_scale=ns.input_scale)
        return cls(**_read(ns, cls), config=config)


# ---------------------------------------------------------------------------- bench

def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(integer(x) for x in text.split(",") if x.strip())     # '1e6' too, as every integer flag
    except argparse.ArgumentTypeError:
        sizes = ()
    if not sizes or min(sizes) < 0:
        raise argparse.ArgumentTypeError(f"expected N or N,N,... (non-negative integers), got {text!r}")
    return sizes


def _solver_specs(text: str) -> tuple[str, ...]:
    """Split --solvers at commas outside brackets; options inside brackets may be separated by
    ';' or ','."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ";" if (ch == "," and depth > 0) else ch
    out.append(cur)
    return tuple(s.strip().replace(";", ",") for s in out if s.strip())


@dataclass(frozen=True, kw_only=True)
class BenchRequest:
    """`subsetsum-lth bench solvers|approximate`: which, its config (SolverBenchConfig or
    ApproximateBenchConfig) and the printing options."""

    what: str = "solvers"
    #: bench solvers: the sizes n of one table (``config.n`` is the first)
    sizes: tuple[int, ...] = ()
    no_progress: bool = option(False, flag="--no-progress", help="no progress output (bars or lines)")
    json: bool = option(False, flag="--json", help="print a JSON list, one object per backend")
    config: Any = None

    @classmethod
    def add_arguments(cls, p) -> None:
        from subsetsum_lth.bench import ApproximateBenchConfig as A
        from subsetsum_lth.bench import SolverBenchConfig as B
        from subsetsum_lth.commands._help import HelpFormatter
        sub = p.add_subparsers(dest="bench_command", metavar="WHAT")
        sub.required = True

        s = sub.add_parser("solvers", help="throughput of every solver backend on one core",
                           formatter_class=HelpFormatter)
        add_options(s, B, "n", "eps", "count", "objective", "targets", "solvers", "baseline_count", "time_budget",
                    "batch_size", "seed", "clock", "time_limit", n={"type": _sizes, "default": (B.n,)})
        add_option(s, cls, "json")
        add_remaining(s, B)

        a = sub.add_parser("approximate", help="time one approximate run, stage by stage",
                           formatter_class=HelpFormatter)
        add_options(a, A, "target", "solver", "objective", "weight_eps", "width", "data", "data_dir", "workers",
                    "seed", "out", "plots")
        add_option(a, cls, "no_progress")
        add_option(a, cls, "json", help="print one JSON object")
        add_remaining(a, A)

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> BenchRequest:
        from subsetsum_lth.bench import ApproximateBenchConfig, SolverBenchConfig
        if ns.bench_command == "solvers":
            values = _read(ns, SolverBenchConfig)
            sizes = values.pop("n")
            values["solvers"] = _solver_specs(values["solvers"]) if values["solvers"] else None
            return cls(what="solvers", sizes=sizes, json=ns.json, config=SolverBenchConfig(n=sizes[0], **values))
        return cls(what="approximate", json=ns.json, no_progress=ns.no_progress,
                   config=ApproximateBenchConfig(**_read(ns, ApproximateBenchConfig)))
