"""Options that describe a target file: layer order and the input preprocessing it was trained on
(read by subsetsum_lth.request.target_file.TargetFile)."""
from __future__ import annotations

import argparse
from subsetsum_lth.commands._common import positive_float


def add_layers_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", default=None, metavar="NAME,NAME,...",
                   help="forward order of the target's Linear layers as module names (e.g. fc1,fc2,fc3), "
                        "for a checkpoint whose order the loader cannot infer from its keys and shapes "
                        "(see 'subsetsum-lth inspect FILE')")


def add_arch_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default=None, metavar="SPEC",
                   help="architecture of a plain state_dict of a network with conv/pooling layers, whose keys "
                        "cannot say where pooling and flatten go: 'lenet5' or a SPEC (see 'train-target "
                        "--help'); a target written by train-target carries its architecture")


def add_preprocessing_arguments(p: argparse.ArgumentParser, expected: bool = True,
                                training: bool = False) -> None:
    what = "train the model on" if training else "the model was trained on"
    fate = ("stored in the target's metadata; when the target is loaded it is a fixed input op in front "
            "of the network and of the pruned network, which then take pixels/255 in [0, 1]") if training else (
            "a fixed input op in front of the target and of the pruned network, which then take pixels/255 "
            "in [0, 1]; the certificate covers the image of the input set (approximate records it in the "
            "run's target.safetensors and report.json)")
    p.add_argument("--input-normalize", default=None, metavar="MEAN,STD",
                   help=f"{what} (x - MEAN) / STD per channel (torchvision's Normalize; e.g. "
                        f"0.1307,0.3081 for MNIST; m1,m2,m3,s1,s2,s3 for 3 channels); {fate}")
    p.add_argument("--input-scale", default=None, metavar="S",
                   help=f"pixel scale to apply before --input-normalize ({what}): 1/255 "
                        "(pixels/255 in [0, 1], as train-target and torchvision's ToTensor) or 1 (raw "
                        "0..255 pixels); unset: 1/255")
    if not training:
        p.add_argument("--fold-preprocessing", action="store_true", default=None,
                       help="fold the declared preprocessing into the first layer instead (W·diag(a), b + W·c; "
                            "refused where not exact: a first conv layer with zero padding and a non-zero mean)")
    if expected:
        p.add_argument("--expected-accuracy", type=positive_float, default=None, metavar="ACC",
                       help="test accuracy the model reaches on its own preprocessing (fraction or "
                            "percent); with --data, a measured accuracy more than 1 point lower draws a warning "
                            "(unset: a figure stored in the checkpoint, e.g. 'test_accuracy')")
