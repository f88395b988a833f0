"""The built-in default target of ``approximate`` when no ``--target`` is given.

MNIST when its files are found (``--data-dir``, ``$SUBSETSUM_LTH_DATA``, the user cache) or can
be downloaded: a 784-500-10 ReLU MLP trained by ``train-target``'s defaults, cached in the user
cache so that it is trained once per seed. Otherwise (offline, nothing found) a seeded synthetic
784-300-10 target with biases and spectral norms ≤ 1, inside Theorem 1's class. The caller is
told which one it got and why.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from subsetsum_lth.data.mnist import default_cache_dir, resolve_data_dir
from subsetsum_lth.errors import DataError
from subsetsum_lth.manifest import verify_file
from subsetsum_lth.target import Target, load_target, random_target
from subsetsum_lth.train import TrainConfig, train_target

log = logging.getLogger(__name__)

SYNTHETIC_SIZES = (784, 300, 10)
MNIST_HIDDEN = (500,)


@dataclass
class DefaultTarget:
    target: Target
    kind: str            #: "mnist" or "synthetic"
    description: str     #: one line for the user: what this target is and why it was chosen
    data_dir: Path | None = None
    training_seconds: float | None = None   #: wall time spent training it now (None: cached or synthetic)


def targets_cache_dir() -> Path:
    return default_cache_dir().parent / "targets"


def synthetic_target(seed: int = 0, reason: str = "", asked: bool = False) -> DefaultTarget:
    target = random_target(SYNTHETIC_SIZES, bias=True, seed=seed, max_spectral_norm=1.0)
    why = f" ({reason})" if reason else ""
    head = "no --target given, --synthetic" if asked else f"no --target given and no MNIST{why}"
    return DefaultTarget(target, "synthetic",
                         f"{head}: using a seeded synthetic "
                         f"{'-'.join(map(str, SYNTHETIC_SIZES))} target with biases and spectral "
                         f"norms <= 1 (seed {seed}), inside Theorem 1's class")


def default_target(seed: int = 0, data_dir=None, synthetic: bool = False,
                   progress: bool = False, cache_dir: Path | None = None,
                   announce: Callable[[str], None] | None = None,
                   heartbeat: Callable[[str], None] | None = None) -> DefaultTarget:
    """The built-in default target (see the module docstring).

    ``announce`` is called with one line before a training starts (what, why, an estimate of
    the time, where it is cached); ``heartbeat`` gets the training's plain progress lines (see
    ``train.train_target``)."""
    if synthetic:
        return synthetic_target(seed, asked=True)
    try:
        found = resolve_data_dir(data_dir, download=True, progress=progress)
    except DataError as exc:
        log.info("MNIST not available: %s", exc)
        return synthetic_target(seed, "its files were not found and could not be downloaded; "
                                      "see --data-dir")
    folder = Path(cache_dir or targets_cache_dir()) / f"mnist-784-500-10-seed{seed}"
    training_seconds = None
    if (folder / "target.safetensors").exists():
        verify_file(folder, "target.safetensors")     # the cache is checked, not believed
        target = load_target(folder)
        how = f"cached in {folder}"
    else:
        config = TrainConfig(hidden=MNIST_HIDDEN, seed=seed, data_dir=str(found))
        log.info("training the default MNIST target into %s", folder)
        if announce is not None:
            announce(f"no --target given: training the default {'-'.join(map(str, config.sizes))} MNIST "
                     f"target first ({config.epochs} epochs; the time it takes on this machine follows from the "
                     f"first timed steps; cached in {folder}, so later runs with seed {seed} skip this; give "
                     "--target to use your own)")
        t0 = time.perf_counter()
        summary = train_target(config, folder, progress=progress, heartbeat=heartbeat, on_estimate=announce)
        training_seconds = time.perf_counter() - t0
        target = load_target(folder)
        how = f"trained now ({summary['seconds']:.0f} s, test accuracy " \
              f"{100 * summary['test_accuracy']:.2f}%), cached in {folder}"
    return DefaultTarget(target, "mnist",
                         f"no --target given: using the default MNIST 784-500-10 target "
                         f"(seed {seed}; {how}); MNIST from {found}", found, training_seconds)
