"""Input preprocessing as part of the target, folded exactly into its first layer.

A model trained on ``x' = (s·255·x − μ) / σ`` (``x`` = pixels/255 in [0, 1], ``s`` the declared
pixel scale: ``1/255`` for pixels/255, ``1`` for raw 0..255 pixels; μ, σ per channel as in
torchvision's ``Normalize(mean, std)``) computes ``W x' + b = (W diag(a)) x + (b + W c)`` with
``a = 255·s/σ``, ``c = −μ/σ``. Folding replaces the first layer by ``W' = W diag(a)``,
``b' = b + W c`` (computed in float64, stored rounded to float32 like every target; a bias is
created when needed), so the network the engine approximates and
certifies takes raw [0, 1] pixels (a non-negative input domain). Channels are channel-major, as
``nn.Flatten`` lays out an ``N×C×H×W`` batch: channel k is the k-th of C equal slices of the input.

Metadata keys (strings, in the target's safetensors): ``input_normalize`` ("m1,..,mC,s1,..,sC"),
``input_scale`` ("1/255" or a number), ``preprocessing_folded`` ("true" once the weights carry it).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np

from subsetsum_lth.errors import TargetError, UserError

log = logging.getLogger(__name__)

DEFAULT_SCALE = "1/255"
#: metadata keys that checkpoints use for the accuracy the model reached (first found wins)
ACCURACY_KEYS = ("test_accuracy", "accuracy", "test_acc", "best_acc1", "best_acc", "acc",
                 "val_accuracy", "val_acc")
#: a measured accuracy more than this (absolute, in [0, 1]) below the declared one draws a warning;
#: a model fed the wrong preprocessing typically loses 2-5 points on MNIST (96.13% -> 93.88% for
#: Normalize(0.1307, 0.3081) read as pixels/255), while its own inputs reproduce its figure to ~0.01
ACCURACY_GAP = 0.01


def _scale_value(text: str) -> float:
    text = str(text).strip()
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            v = float(num) / float(den)
        else:
            v = float(text)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--input-scale expects a positive number such as 1/255 or 1, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise UserError(f"--input-scale must be positive and finite, got {text!r}")
    return v


@dataclass(frozen=True)
class Preprocessing:
    """What the model was trained on: pixels × ``scale`` × 255 (i.e. pixels/255 × 255·scale),
    then per-channel ``(x − mean) / std`` when ``mean`` is set."""

    mean: tuple = ()
    std: tuple = ()
    scale: str = DEFAULT_SCALE

    @classmethod
    def parse(cls, normalize: str | None = None, scale: str | None = None) -> "Preprocessing":
        mean: tuple = ()
        std: tuple = ()
        if normalize is not None:
            text = str(normalize).strip()
            try:
                if ";" in text or "/" in text:
                    m, s = text.replace("/", ";").split(";", 1)
                    mean = tuple(float(t) for t in m.split(","))
                    std = tuple(float(t) for t in s.split(","))
                else:
                    vals = [float(t) for t in text.split(",")]
                    if len(vals) % 2:
                        raise ValueError
                    mean, std = tuple(vals[: len(vals) // 2]), tuple(vals[len(vals) // 2:])
            except ValueError:
                raise UserError(f"--input-normalize expects MEAN,STD per channel (e.g. 0.1307,0.3081 for "
                                f"MNIST, or m1,m2,m3,s1,s2,s3), got {text!r}") from None
            if not mean or len(mean) != len(std):
                raise UserError(f"--input-normalize needs as many means as stds, got {text!r}")
            if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(v) and v > 0 for v in std):
                raise UserError(f"--input-normalize needs finite means and positive stds, got {text!r}")
        scale_text = DEFAULT_SCALE if scale is None else str(scale).strip()
        _scale_value(scale_text)
        return cls(mean, std, scale_text)

    @classmethod
    def from_metadata(cls, meta: dict) -> "Preprocessing | None":
        """The preprocessing declared in a target's metadata, or None (none declared)."""
        if "input_normalize" not in meta and str(meta.get("input_scale", DEFAULT_SCALE)) == DEFAULT_SCALE:
            return None
        try:
            return cls.parse(meta.get("input_normalize"), meta.get("input_scale", DEFAULT_SCALE))
        except UserError as exc:
            raise TargetError(f"the target's metadata declares an unusable preprocessing: {exc}") from None

    @property
    def identity(self) -> bool:
        return not self.mean and _scale_value(self.scale) == 1 / 255

    def to_metadata(self) -> dict:
        meta = {"input_scale": self.scale}
        if self.mean:
            meta["input_normalize"] = ",".join(repr(float(v)) for v in (*self.mean, *self.std))
        return meta

    def describe(self) -> str:
        pix = "pixels/255" if _scale_value(self.scale) == 1 / 255 else f"pixels×{self.scale}"
        if not self.mean:
            return pix
        return f"({pix} − mean {list(self.mean)}) / std {list(self.std)}"

    def affine(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """(a, c) of length p with model input = a ⊙ x + c for x = pixels/255."""
        k = 255.0 * _scale_value(self.scale)
        if not self.mean:
            return np.full(p, k), np.zeros(p)
        C = len(self.mean)
        if p % C:
            raise TargetError(f"--input-normalize gives {C} channels but the target takes {p} inputs, "
                              f"not a multiple of {C}")
        reps = p // C
        std = np.repeat(np.asarray(self.std, dtype=np.float64), reps)
        mean = np.repeat(np.asarray(self.mean, dtype=np.float64), reps)
        return k / std, -mean / std

    def report(self, folded: bool) -> dict:
        return {"declared": self.describe(), "input_scale": self.scale,
                "mean": list(self.mean) or None, "std": list(self.std) or None,
                "folded": folded,
                "network_input": "pixels/255 in [0, 1]" if folded else self.describe()}


def fold(target, prep: Preprocessing):
    """A new Target whose first layer carries ``prep``: it takes pixels/255 in [0, 1]."""
    first = target.layers[0]
    kind = first.kind
    if kind.name == "conv2d" and any(kind.padding) and any(m != 0 for m in (prep.mean or ())):
        raise TargetError("--input-normalize with a non-zero mean cannot be folded exactly into a first conv "
                          f"layer with zero padding {list(kind.padding)} (the padded pixels are 0 after "
                          "normalisation, not before); retrain on pixels/255 or with mean 0")
    a, c = prep.affine(first.weight.shape[1])
    W = first.weight * a[None, :]
    shift = first.weight @ c
    if first.bias is not None:
        b = first.bias + shift
    else:
        b = shift if np.any(shift != 0) else None
    # rounded to float32, the precision targets are stored in (run folders, certify): the target
    # approximated and the one written are the same numbers
    W = W.astype(np.float32).astype(np.float64)
    b = None if b is None else b.astype(np.float32).astype(np.float64)
    if not np.all(np.isfinite(W)) or (b is not None and not np.all(np.isfinite(b))):
        raise TargetError("folding the declared input preprocessing into the first layer overflows; "
                          "check --input-normalize/--input-scale")
    meta = dict(target.metadata)
    meta.update(prep.to_metadata())
    meta["preprocessing_folded"] = "true"
    meta["input_domain"] = "nonnegative"
    out = replace(target, layers=[replace(first, weight=W, bias=b)] + list(target.layers[1:]), metadata=meta)
    log.info("folded the input preprocessing %s into the first layer: the target now takes "
             "pixels/255 in [0, 1]", prep.describe())
    return out


def apply(target, declared: Preprocessing | None):
    """Fold the declared preprocessing (flags) or the one stored in the metadata, once."""
    meta = target.metadata or {}
    already = str(meta.get("preprocessing_folded", "")).lower() == "true"
    stored = Preprocessing.from_metadata(meta)
    if declared is not None and not declared.identity:
        if already:
            raise TargetError(
                f"the target{_where(target)} already has its input preprocessing ({stored.describe() if stored else '?'}) "
                "folded into its first layer; drop --input-normalize/--input-scale")
        if stored is not None and stored != declared:
            raise TargetError(
                f"the target{_where(target)} declares the input preprocessing {stored.describe()} but the "
                f"flags say {declared.describe()}; drop the flags or make them agree")
        return fold(target, declared)
    if stored is not None and not stored.identity and not already:
        return fold(target, stored)
    return target


def _where(target) -> str:
    return f" in {target.source}" if getattr(target, "source", "") else ""


def report(target) -> dict:
    """The report's ``preprocessing`` field."""
    meta = target.metadata or {}
    prep = Preprocessing.from_metadata(meta)
    folded = str(meta.get("preprocessing_folded", "")).lower() == "true"
    if prep is None:
        return {"declared": None, "folded": False,
                "note": "no input preprocessing declared: the target is used on its inputs as given"}
    return prep.report(folded)


def declared_accuracy(meta: dict, expected: float | None = None) -> tuple[float, str] | None:
    """(accuracy in [0, 1], where it came from) from --expected-accuracy or the checkpoint."""
    if expected is not None:
        return (expected / 100 if expected > 1 else expected), "--expected-accuracy"
    for key in ACCURACY_KEYS:
        if key in meta:
            try:
                v = float(meta[key])
            except (TypeError, ValueError):
                continue
            if math.isfinite(v) and 0 <= v <= 100:
                return (v / 100 if v > 1 else v), f"its checkpoint's {key!r}"
    return None


def accuracy_warning(measured: float, declared: tuple[float, str] | None, target) -> str | None:
    """A warning when the accuracy measured on pixels/255 is more than ACCURACY_GAP below the declared one."""
    if declared is None or measured >= declared[0] - ACCURACY_GAP:
        return None
    folded = str((target.metadata or {}).get("preprocessing_folded", "")).lower() == "true"
    how = "with the declared preprocessing folded in" if folded else "as pixels/255 in [0, 1]"
    return (f"the target scores {100 * measured:.2f}% on the test images {how}, below the "
            f"{100 * declared[0]:.2f}% of {declared[1]}: was it trained on other inputs? Declare them "
            "with --input-normalize MEAN,STD (e.g. 0.1307,0.3081 for torchvision's usual MNIST "
            "Normalize) and/or --input-scale (1 for raw 0..255 pixels)")


def measure_accuracy(target, x, y, batch: int = 4096) -> float:
    """Accuracy of the target (as loaded, float64) on inputs ``x`` with labels ``y``."""
    import torch
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = target.forward(torch.as_tensor(np.asarray(x[i:i + batch]), dtype=torch.float64))
            correct += int((out.argmax(1).numpy() == np.asarray(y[i:i + batch])).sum())
    return correct / max(len(x), 1)
