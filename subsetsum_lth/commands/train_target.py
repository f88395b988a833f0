"""``subsetsum-lth train-target``: train a ReLU MLP or CNN on MNIST to serve as the target f."""
from __future__ import annotations

import argparse
import json
import sys

from subsetsum_lth.commands._common import integer
from subsetsum_lth.commands._target_args import add_preprocessing_arguments

NAME = "train-target"
HELP = "train a target ReLU MLP or CNN on MNIST (writes target.safetensors + target.json)"
DESCRIPTION = (
    "Train a ReLU MLP 784-H1-...-10 on MNIST (pixels / 255, a non-negative input domain) with "
    "SGD (momentum 0.9, weight decay 5e-4, cosine schedule) and write OUT/target.safetensors "
    "(an nn.Sequential state_dict: keys 0.weight, 0.bias, 2.weight, ...) and OUT/target.json. "
    "With --arch (e.g. lenet5, or resnet8 for a residual net) the target is that CNN instead, trained on 1x28x28 images with Adam "
    "(lr 1e-3, batch 128, 10 epochs, cosine schedule, no weight decay); its target.safetensors "
    "also records the architecture. "
    "MNIST is read from --data-dir, else $SUBSETSUM_LTH_DATA, else the user cache "
    "(downloaded there with MD5 checks when missing); Fashion-MNIST (--data fashion-mnist) from "
    "--data-dir, else $SUBSETSUM_LTH_FASHION_DATA, else the user cache."
)

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # every default is TrainConfig's (written once, in the dataclass; tests/test_cli_config.py);
    # epochs, lr and batch size default to None there: the MLP or the CNN recipe fills them
    from subsetsum_lth.train import ARCH_DEFAULTS, MLP_DEFAULTS
    from subsetsum_lth.train import TrainConfig as T
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (created if needed)")
    parser.add_argument("--hidden", type=_hidden, default=",".join(map(str, T.hidden)), metavar="H1,H2,...",
                        action=_Recorded,
                        help="hidden layer widths, comma-separated ('' for none)")
    parser.add_argument("--bias", action=argparse.BooleanOptionalAction, default=T.bias,
                        help="give every Linear layer a bias")
    from subsetsum_lth.arch import SPEC_HELP
    parser.add_argument("--arch", type=_arch_spec, default=None, metavar="ARCH",
                        help="train this CNN (or MLP) instead of the --hidden MLP. " + SPEC_HELP.replace("%", "%%"))
    parser.add_argument("--data", choices=("mnist", "fashion-mnist"), default=T.dataset,
                        help="the data set to train and test on")
    parser.add_argument("--epochs", type=integer, default=T.epochs,
                        help=f"passes over the training set (default {MLP_DEFAULTS['epochs']}; "
                             f"{ARCH_DEFAULTS['epochs']} with --arch)")
    parser.add_argument("--lr", type=float, default=T.lr,
                        help=f"initial learning rate, cosine-annealed to 0 over all steps (default "
                             f"{MLP_DEFAULTS['lr']:g} with SGD; {ARCH_DEFAULTS['lr']:g} with --arch, Adam)")
    parser.add_argument("--batch-size", type=integer, default=T.batch_size, metavar="N",
                        help=f"mini-batch size (default {MLP_DEFAULTS['batch_size']}; "
                             f"{ARCH_DEFAULTS['batch_size']} with --arch)")
    parser.add_argument("--seed", type=integer, default=T.seed,
                        help="seeds the initialisation and the shuffling (same seed, same weights)")
    parser.add_argument("--data-dir", default=T.data_dir, metavar="DIR",
                        help="folder holding the four MNIST (or Fashion-MNIST) IDX files (.gz or not) "
                             "(default: $SUBSETSUM_LTH_DATA, for Fashion-MNIST $SUBSETSUM_LTH_FASHION_DATA, "
                             "else the user cache)")
    parser.add_argument("--train-subset", type=integer, default=T.train_subset, metavar="N",
                        help="train on the first N training images only (default: all 60000)")
    parser.add_argument("--threads", type=integer, default=T.threads, metavar="N",
                        help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="--progress: tqdm bars on stderr; --no-progress: no progress output; neither: "
                             "bars when stderr is a terminal, else a plain line every ~10 s and per epoch")
    add_preprocessing_arguments(parser, expected=False, training=True)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _say_above_bars(bars: bool):
    """A line on stderr that does not tear a tqdm bar."""
    from subsetsum_lth.commands._progress import ProgressFactory
    return ProgressFactory(True, terminal=bars).note


def run(args: argparse.Namespace) -> int:
    from subsetsum_lth.commands._progress import say
    from subsetsum_lth.errors import UserError
    from subsetsum_lth.train import TrainConfig, train_target

    arch = getattr(args, "arch", None)
    given = set(getattr(args, "_given", ()))
    recipe = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size}
    if arch is not None:
        if "hidden" in given:
            raise UserError("--hidden and --arch both describe the network; give one of them "
                            "(an MLP as a SPEC: --arch fc300,fc100,fc10)")
        if not args.bias:
            raise UserError("--no-bias applies to the --hidden MLP; with --arch drop the biases in the "
                            "SPEC with the suffix nb (c6k5nb, fc10nb)")
    config = TrainConfig(
        hidden=tuple(args.hidden), bias=args.bias, seed=args.seed, data_dir=args.data_dir,
        train_subset=args.train_subset, threads=args.threads,
        input_normalize=args.input_normalize, input_scale=args.input_scale,
        arch=arch, dataset=getattr(args, "data", "mnist"), **recipe,
    )
    bars = args.progress if args.progress is not None else sys.stderr.isatty()
    lines = args.progress is None and not bars
    n_train = config.train_subset or 60000
    steps = -(-n_train // config.batch_size)
    fully_connected = config.arch is not None and isinstance(config.arch, str) and all(
        tok.strip().startswith("fc") for tok in config.arch.split(",") if tok.strip())
    what = (f"{config.arch} {'ReLU MLP' if fully_connected else 'CNN'}" if config.arch is not None
            else f"{'-'.join(map(str, config.sizes))} ReLU MLP")
    data = "Fashion-MNIST" if config.dataset == "fashion-mnist" else "MNIST"
    say(f"training a {what} on {n_train:,} {data} images: "
        f"{config.epochs} epoch(s) of {steps:,} steps; writing {args.out}; the time it takes on this machine "
        "follows from the first timed steps")
    # output not a terminal: plain lines (every ~10 s and per epoch) instead of invisible bars
    quiet = args.progress is False
    summary = train_target(config, args.out, progress=bars, heartbeat=say if lines else None,
                           on_estimate=None if quiet else _say_above_bars(bars))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        sizes = summary.get("arch_spec") or "-".join(str(s) for s in summary["sizes"])
        print(f"trained {sizes} ({'with' if summary['bias'] else 'no'} biases, "
              f"{summary['n_parameters']:,} parameters) in {summary['seconds']:.1f} s "
              f"({summary['seconds_training']:.1f} s training + the final train/test evaluation)")
        print(f"test accuracy  {100 * summary['test_accuracy']:.2f}%")
        print(f"train accuracy {100 * summary['train_accuracy']:.2f}%")
        print(f"wrote {summary['target_path']}")
    return 0
