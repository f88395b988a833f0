"""``subsetsum-lth train-target``: train a ReLU MLP or CNN on MNIST to serve as the target f."""
from __future__ import annotations

import json
import sys

from subsetsum_lth.commands._progress import ProgressFactory, say
from subsetsum_lth.request import TrainTargetRequest
from subsetsum_lth.train import train_target

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

#: the request `run` takes (subsetsum_lth.request)
REQUEST = TrainTargetRequest


def add_arguments(parser) -> None:
    # every default is TrainConfig's (the options are generated from its fields; tests/test_cli_config.py);
    # epochs, lr and batch size default to None there: the MLP or the CNN recipe fills them
    TrainTargetRequest.add_arguments(parser)


def _say_above_bars(bars: bool):
    """A line on stderr that does not tear a tqdm bar."""
    return ProgressFactory(True, terminal=bars).note


def run(req: TrainTargetRequest) -> int:

    config = req.config
    bars = req.progress if req.progress is not None else sys.stderr.isatty()
    lines = req.progress is None and not bars
    n_train = config.train_subset or 60000
    steps = -(-n_train // config.batch_size)
    fully_connected = config.arch is not None and isinstance(config.arch, str) and all(
        tok.strip().startswith("fc") for tok in config.arch.split(",") if tok.strip())
    what = (f"{config.arch} {'ReLU MLP' if fully_connected else 'CNN'}" if config.arch is not None
            else f"{'-'.join(map(str, config.sizes))} ReLU MLP")
    data = "Fashion-MNIST" if config.dataset == "fashion-mnist" else "MNIST"
    say(f"training a {what} on {n_train:,} {data} images: "
        f"{config.epochs} epoch(s) of {steps:,} steps; writing {req.out}; the time it takes on this machine "
        "follows from the first timed steps")
    # output not a terminal: plain lines (every ~10 s and per epoch) instead of invisible bars
    quiet = req.progress is False
    summary = train_target(config, req.out, progress=bars, heartbeat=say if lines else None,
                           on_estimate=None if quiet else _say_above_bars(bars))
    if req.json:
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
