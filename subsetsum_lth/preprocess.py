"""Input preprocessing: a fixed affine map in front of both f and ĝ (or, on request, folded).

A model trained on ``x' = (s·255·x − μ) / σ`` (``x`` = pixels/255 in [0, 1], ``s`` the declared
pixel scale: ``1/255`` for pixels/255, ``1`` for raw 0..255 pixels; μ, σ per channel as in
torchvision's ``Normalize(mean, std)``) is, as a function of the pixels, ``f(a ⊙ x + c)`` with
``a = 255·s/σ``, ``c = −μ/σ`` (per channel, repeated over the channel's pixels).

**Input op (the default).** The target keeps its own layers; :class:`Preprocessing` rides on the
:class:`~subsetsum_lth.target.Target` (``Target.preprocessing``) and ``Target.forward`` applies
``x ↦ a ⊙ x + c`` first. The construction approximates the network on its own (normalised) inputs,
so zero padding, large biases and the signed normalised domain need no special case; ĝ gets the
same map in front (:class:`InputNormalize`, :func:`with_input_op`), and the run folder records it
(target metadata and report.json ``preprocessing``), so ĝ as exported takes the raw pixels.

The certificate's domain is the image of the data's domain under the map:

* a box ``lo ≤ x ≤ hi`` maps to the box ``a·lo + c ≤ z ≤ a·hi + c`` (a > 0, exact; signed
  when c < 0) — :meth:`Preprocessing.network_box`;
* the ball ``‖x‖₂ ≤ R`` (with or without x ≥ 0) maps into the ball around 0 that the certificate's
  recursion (DESIGN §2, ``R_1 = r``) needs: ``‖z‖₂ = ‖a⊙x + c‖₂ ≤ ‖a⊙x‖₂ + ‖c‖₂ ≤ max(a)·R + ‖c‖₂``
  (triangle inequality; ``‖a⊙x‖₂ ≤ max|a|·‖x‖₂`` as diag(a) has operator norm max|a|), and z is
  signed as soon as some c < 0 (``x ≥ 0`` and ``c ≥ 0`` keep z ≥ 0) — :meth:`Preprocessing.network_ball`.
  So sup over the raw ball of ‖f(a⊙x+c) − ĝ(a⊙x+c)‖ ≤ sup over ‖z‖ ≤ max(a)R + ‖c‖ of ‖f(z) − ĝ(z)‖,
  which is what ``certified_bound`` bounds (tests/test_preprocessing.py attacks the composed
  raw-pixel networks and checks a mutant without the ‖c‖ term is caught).

**Folding (``--fold-preprocessing``).** Where exact and asked for, the first layer ``W z + b``
becomes ``(W diag(a)) x + (b + W c)`` (float64, stored rounded to float32 like every target; a bias
is created when needed) and the target takes raw [0, 1] pixels (a non-negative input domain).
It is refused for a first conv layer with zero padding and a non-zero mean (the padded pixels are
0 after normalisation, not before). Channels are channel-major, as ``nn.Flatten`` lays out an
``N×C×H×W`` batch: channel k is the k-th of C equal slices of the input.

Metadata keys (strings, in the target's safetensors): ``input_normalize`` ("m1,..,mC,s1,..,sC"),
``input_scale`` ("1/255" or a number), ``preprocessing_folded`` ("true" once the weights carry it).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

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

    def network_ball(self, radius: float, domain: str, p: int) -> tuple[float, str]:
        """(r', domain') with {a⊙x + c : ‖x‖₂ ≤ radius (x ≥ 0 when domain is 'nonnegative')}
        ⊆ {z : ‖z‖₂ ≤ r'} (z ≥ 0 when domain' is 'nonnegative'): r' = max(a)·radius + ‖c‖₂."""
        a, c = self.affine(p)
        r = float(np.max(a)) * float(radius) + float(np.linalg.norm(c))
        nonneg = domain == "nonnegative" and not np.any(c < 0)
        return r * (1 + 4 * np.finfo(float).eps), ("nonnegative" if nonneg else "signed")

    def network_box(self, lo, hi, p: int) -> tuple[np.ndarray, np.ndarray]:
        """The image of the box lo ≤ x ≤ hi (scalars or (p,) arrays): a·lo + c ≤ z ≤ a·hi + c (a > 0)."""
        a, c = self.affine(p)
        lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (p,))
        hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (p,))
        return a * lo + c, a * hi + c

    def transform(self, x):
        """a ⊙ x + c for a torch batch ``x`` ((N, p) flat or (N, C, H, W)), in x's dtype."""
        n = x.shape[0]
        flat = x.reshape(n, -1)
        a, c = _affine_cached(self, flat.shape[1])
        out = flat * torch.as_tensor(a, dtype=x.dtype, device=x.device) + torch.as_tensor(c, dtype=x.dtype,
                                                                                          device=x.device)
        return out.reshape(x.shape)

    def report(self, folded: bool) -> dict:
        return {"declared": self.describe(), "input_scale": self.scale,
                "mean": list(self.mean) or None, "std": list(self.std) or None,
                "folded": folded, "applied": "folded into layer 1" if folded else "input op",
                "network_input": "pixels/255 in [0, 1]" if folded else self.describe()}


_AFFINE_CACHE: dict = {}


def _affine_cached(prep: Preprocessing, p: int):
    key = (prep, p)
    if key not in _AFFINE_CACHE:
        if len(_AFFINE_CACHE) > 64:
            _AFFINE_CACHE.clear()
        _AFFINE_CACHE[key] = prep.affine(p)
    return _AFFINE_CACHE[key]


class InputNormalize(nn.Module):
    """x ↦ a ⊙ x + c per input value (flat (N, p) or (N, C, H, W), channel-major): the declared
    preprocessing as fixed float64 buffers ``a`` and ``c`` (cast to the input's dtype)."""

    def __init__(self, a, c):
        super().__init__()
        self.register_buffer("a", torch.as_tensor(np.asarray(a, dtype=np.float64)))
        self.register_buffer("c", torch.as_tensor(np.asarray(c, dtype=np.float64)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return (x.reshape(n, -1) * self.a.to(x.dtype) + self.c.to(x.dtype)).reshape(x.shape)


def input_module(prep: Preprocessing, p: int):
    """The input op of ``prep`` for ``p`` input values, as an nn.Module with buffers a, c."""
    a, c = prep.affine(p)
    return InputNormalize(a, c)


class RawInputSequential(nn.Sequential):
    """An nn.Sequential (g or ĝ of a run folder) that takes pixels/255: the recorded input op
    x ↦ a ⊙ x + c is applied first. ``a`` and ``c`` are non-persistent buffers, so the modules,
    their indices and the state_dict keys are those of the plain Sequential (``0.weight``, ...);
    a slice is a plain part (no input op)."""

    def __init__(self, *args, input_op: tuple | None = None):
        super().__init__(*args)
        if input_op is not None:
            a, c = input_op
            self.register_buffer("input_a", torch.as_tensor(np.asarray(a, dtype=np.float64)), persistent=False)
            self.register_buffer("input_c", torch.as_tensor(np.asarray(c, dtype=np.float64)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "input_a", None) is not None:
            n = x.shape[0]
            x = (x.reshape(n, -1) * self.input_a.to(x.dtype) + self.input_c.to(x.dtype)).reshape(x.shape)
        return super().forward(x)


def with_input_op(module, target):
    """``module`` (ĝ, taking the network's inputs) preceded by the target's input op, so it takes
    the same raw inputs as ``target.forward``; ``module`` itself when the target has none."""
    prep = getattr(target, "preprocessing", None)
    if prep is None:
        return module
    return nn.Sequential(input_module(prep, target.input_dim), module)


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


def attach(target, prep: Preprocessing):
    """A new Target that applies ``prep`` in front of its own layers (``Target.forward`` takes
    pixels/255); its metadata records it, so a saved and reloaded target carries it again."""
    prep.affine(target.input_dim)        # the channels divide the inputs (one clear error otherwise)
    meta = dict(target.metadata)
    meta.update(prep.to_metadata())
    meta.pop("preprocessing_folded", None)
    log.info("input preprocessing %s applied in front of the target's layers (f and ĝ take pixels/255)",
             prep.describe())
    return replace(target, metadata=meta, preprocessing=prep)


def apply(target, declared: Preprocessing | None, fold_it: bool = False):
    """Attach the declared preprocessing (flags) or the one stored in the metadata as the
    target's input op, once; ``fold_it`` (``--fold-preprocessing``): fold it into the first layer
    instead (refused where not exact)."""
    meta = target.metadata or {}
    already = str(meta.get("preprocessing_folded", "")).lower() == "true"
    stored = Preprocessing.from_metadata(meta)
    use = None
    if declared is not None and not declared.identity:
        if already:
            raise TargetError(
                f"the target{_where(target)} already has its input preprocessing ({stored.describe() if stored else '?'}) "
                "folded into its first layer; drop --input-normalize/--input-scale")
        if stored is not None and stored != declared:
            raise TargetError(
                f"the target{_where(target)} declares the input preprocessing {stored.describe()} but the "
                f"flags say {declared.describe()}; drop the flags or make them agree")
        use = declared
    elif stored is not None and not stored.identity and not already:
        use = stored
    if use is None:
        if fold_it and not already:
            raise TargetError("--fold-preprocessing needs a declared preprocessing (--input-normalize/--input-scale "
                              "or one stored in the target); drop it")
        return target
    return fold(target, use) if fold_it else attach(target, use)


def _where(target) -> str:
    return f" in {target.source}" if getattr(target, "source", "") else ""


def from_report(field) -> Preprocessing | None:
    """The input op a run's report.json ``preprocessing`` field records (None: none, or one folded
    into the target's first layer). Raises ValueError naming what is wrong with a malformed field."""
    if field is None:
        return None
    if not isinstance(field, dict):
        raise ValueError(f"'preprocessing' must be an object, got {type(field).__name__}")
    folded = field.get("folded", False)
    if not isinstance(folded, bool):
        raise ValueError(f"'preprocessing.folded' must be true or false, got {folded!r}")
    if folded or field.get("declared") is None:
        return None
    mean, std, scale = field.get("mean"), field.get("std"), field.get("input_scale", DEFAULT_SCALE)
    if (mean is None) != (std is None) or not isinstance(scale, str):
        raise ValueError("'preprocessing' needs 'mean' and 'std' (both lists or both null) and an 'input_scale' string")
    for name, vals in (("mean", mean), ("std", std)):
        if vals is not None and not (isinstance(vals, list) and vals
                                     and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)):
            raise ValueError(f"'preprocessing.{name}' must be a non-empty list of numbers, got {vals!r}")
    text = None if mean is None else ",".join(repr(float(v)) for v in (*mean, *std))
    try:
        return Preprocessing.parse(text, scale)
    except UserError as exc:
        raise ValueError(f"'preprocessing' is unusable: {str(exc).replace('--input-normalize', 'mean/std')}") from None


def recorded_input_op(field, p: int, target=None) -> Preprocessing | None:
    """The input op a run's report.json ``preprocessing`` field records, checked: finite means,
    positive finite stds, a usable scale, channels that divide the ``p`` inputs, and, where the
    run holds its ``target``, the same as the one the target carries. Raises ValueError."""
    prep = from_report(field)
    if prep is not None:
        try:
            prep.affine(p)
        except TargetError as exc:
            raise ValueError(f"'preprocessing': {exc}") from None
    if target is not None and getattr(target, "preprocessing", None) != prep:
        have = getattr(target, "preprocessing", None)
        raise ValueError(f"'preprocessing' records {prep.describe() if prep else 'no input op'} but the run's "
                         f"target carries {have.describe() if have else 'none'}")
    return prep


def report(target) -> dict:
    """The report's ``preprocessing`` field."""
    meta = target.metadata or {}
    prep = Preprocessing.from_metadata(meta)
    folded = str(meta.get("preprocessing_folded", "")).lower() == "true"
    if prep is None:
        return {"declared": None, "folded": False,
                "note": "no input preprocessing declared: the target is used on its inputs as given"}
    out = prep.report(folded)
    if not folded:
        a, c = prep.affine(target.input_dim)
        out["network_input_range"] = [float(c.min()), float((a + c).max())]   # of pixels/255 in [0, 1]
    return out


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
    how = ("with the declared preprocessing folded in" if folded else
           "with the declared preprocessing applied" if getattr(target, "preprocessing", None) is not None
           else "as pixels/255 in [0, 1]")
    return (f"the target scores {100 * measured:.2f}% on the test images {how}, below the "
            f"{100 * declared[0]:.2f}% of {declared[1]}: was it trained on other inputs? Declare them "
            "with --input-normalize MEAN,STD (e.g. 0.1307,0.3081 for torchvision's usual MNIST "
            "Normalize) and/or --input-scale (1 for raw 0..255 pixels)")


def measure_accuracy(target, x, y, batch: int | None = None) -> float:
    """Accuracy of the target (as loaded, float64) on inputs ``x`` with labels ``y``, ``batch``
    inputs at a time (default ``target.chunk_rows()``: 4096, fewer for a wide conv target)."""
    batch = batch or target.chunk_rows()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = target.forward(torch.as_tensor(np.asarray(x[i:i + batch]), dtype=torch.float64))
            correct += int((out.argmax(1).numpy() == np.asarray(y[i:i + batch])).sum())
    return correct / max(len(x), 1)
