"""Architectures of convolutional (and fully connected) ReLU targets: a JSON-able list of ops.

An architecture is a list of dicts, one per op, ReLU explicit, applied to inputs of shape
``input_shape`` = ``[C, H, W]`` (images) or ``[D]`` (vectors)::

    {"op": "conv2d", "in_channels": 1, "out_channels": 6, "kernel": [5, 5], "stride": [1, 1],
     "padding": [2, 2], "bias": true}
    {"op": "relu"}
    {"op": "maxpool2d", "kernel": [2, 2], "stride": [2, 2]}
    {"op": "avgpool2d", "kernel": [2, 2], "stride": [2, 2]}
    {"op": "flatten"}
    {"op": "linear", "in_features": 400, "out_features": 120, "bias": true}

The class the construction handles: every conv2d/linear except the last is followed by a relu
(pools and a flatten may come after that relu, pools nowhere else), the last conv2d/linear has
no relu and nothing but a flatten after it. Convolutions: zero padding, no dilation, no groups; pools: no padding,
floor mode.

* :func:`parse_arch` reads a preset (``lenet5``) or a compact SPEC (:data:`SPEC_HELP`);
* :func:`check_arch` validates an architecture and returns the output shape of every op;
* :func:`module_from_arch` / :func:`arch_from_module` convert to/from ``nn.Sequential``
  (:func:`fold_batchnorm` folds eval-mode BatchNorm into the preceding conv/linear);
* :func:`subsetsum_lth.arch_state.state_for_arch` maps a user's state_dict onto
  ``module_from_arch(arch)``'s keys.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import re

import torch
from torch import nn

from subsetsum_lth.checkpoint import fold_bn_tensors  # noqa: F401  (re-exported)
from subsetsum_lth.errors import TargetError, UserError
# the op vocabulary and its validator live in subsetsum_lth.ops (below layerkinds); arch uses them
# and tests import canonical_arch/check_arch from here
from subsetsum_lth.ops import (  # noqa: F401
    PARAMETRIC, _OTHER_ACTIVATIONS, module_from_ops, _check_input_shape, _fmt_shape, _op_shape, _pair, canonical_arch, canonical_op, check_arch,
    is_residual, param_paths,
)

log = logging.getLogger(__name__)

#: LeNet-5 for 1x28x28 inputs (padding 2 in the first conv, max pooling, as in da Cunha et al.)
LENET5: list[dict] = [
    {"op": "conv2d", "in_channels": 1, "out_channels": 6, "kernel": [5, 5], "stride": [1, 1],
     "padding": [2, 2], "bias": True},
    {"op": "relu"}, {"op": "maxpool2d", "kernel": [2, 2], "stride": [2, 2]},
    {"op": "conv2d", "in_channels": 6, "out_channels": 16, "kernel": [5, 5], "stride": [1, 1],
     "padding": [0, 0], "bias": True},
    {"op": "relu"}, {"op": "maxpool2d", "kernel": [2, 2], "stride": [2, 2]}, {"op": "flatten"},
    {"op": "linear", "in_features": 400, "out_features": 120, "bias": True}, {"op": "relu"},
    {"op": "linear", "in_features": 120, "out_features": 84, "bias": True}, {"op": "relu"},
    {"op": "linear", "in_features": 84, "out_features": 10, "bias": True},
]

#: residual presets for 1x28x28 inputs, as SPECs (rbN[sS]: a basic block, see SPEC_HELP)
RESIDUAL_SPECS = {
    # ResNet-8 style: stem, one block per stage (16, 32, 64 channels; the last two halve the
    # resolution with a strided body and a 1x1 projection skip), 7x7 average pool, linear head
    "resnet8": "c16k3p1,rb16,rb32s2,rb64s2,ap7,fc10",
    # ResNet-20 style (He et al. 2016's CIFAR net, on 28x28): 3 stages of 3 blocks
    "resnet20": "c16k3p1,rb16,rb16,rb16,rb32s2,rb32,rb32,rb64s2,rb64,rb64,ap7,fc10",
    # a small one for CPUs and tests: 8 and 16 channels
    "resnet-tiny": "c8k3p1,rb8,rb16s2,ap14,fc10",
}
PRESETS = {"lenet5": LENET5}

SPEC_HELP = (
    "ARCH is a preset (lenet5: conv6k5p2-relu-maxpool2-conv16k5-relu-maxpool2-fc120-relu-fc84-"
    "relu-fc10) or a comma-separated SPEC of layers applied in order: cN = conv2d with N output "
    "channels, followed by kK (kernel KxK, or kKHxKW; required), sS (stride, 1 if absent), pP "
    "(zero padding, 0 if absent); fcN = linear with N outputs; mpK / apK = max / average pooling "
    "with kernel K and stride K (mpKsS for stride S); flatten (optional: it is inserted before the "
    "first fc that follows a conv or pool); the suffix nb (c6k5nb, fc10nb) drops the bias. A ReLU "
    "follows every conv and fc except the last, which gives the logits. Residual nets: rbN[sS] is "
    "a basic block x -> relu(conv3x3(relu(conv3x3(x))) + skip(x)) with N channels (the first conv "
    "strided by S; the skip is the identity when the shape is kept, else a 1x1 conv with stride S: "
    "a projection); the presets resnet8 (c16k3p1 rb16 rb32s2 rb64s2 ap7 fc10), resnet20 (3 stages "
    "of 3 blocks, 16/32/64 channels) and resnet-tiny (c8k3p1 rb8 rb16s2 ap14 fc10); a JSON list of "
    "ops with {\"op\": \"residual\", \"body\": [...], \"shortcut\": [...]} is read too. Examples: "
    "c6k5p2,mp2,c16k5,mp2,fc120,fc84,fc10 (LeNet-5); c8k3s2,c16k3s2,fc10; fc300,fc100,fc10 (an MLP "
    "on flattened images).")


# --------------------------------------------------------------------------------------------
# parse_arch
# --------------------------------------------------------------------------------------------

_CONV = re.compile(r"^c(?P<n>\d+)(?P<rest>(?:[ksp]\d+(?:x\d+)?)*)(?P<nb>nb)?$")
_CONV_PART = re.compile(r"([ksp])(\d+)(?:x(\d+))?")
_FC = re.compile(r"^fc(?P<n>\d+)(?P<nb>nb)?$")
_POOL = re.compile(r"^(?P<kind>mp|ap)(?P<k>\d+(?:x\d+)?)(?:s(?P<s>\d+(?:x\d+)?))?$")


_RB = re.compile(r"^rb(?P<n>\d+)(?:s(?P<s>\d+))?$")


def _basic_block(shape, n: int, stride: int, where: str) -> dict:
    """A ResNet basic block on inputs of ``shape``: body conv3x3 (stride), relu, conv3x3; skip the
    identity when the shape is kept, else a 1x1 conv with the stride (a projection)."""
    if n < 1 or stride < 1:
        raise UserError(f"{where}: channels and stride must be >= 1")
    c = int(shape[0])
    body = [{"op": "conv2d", "in_channels": c, "out_channels": n, "kernel": [3, 3], "stride": [stride, stride],
             "padding": [1, 1], "bias": True},
            {"op": "relu"},
            {"op": "conv2d", "in_channels": n, "out_channels": n, "kernel": [3, 3], "stride": [1, 1],
             "padding": [1, 1], "bias": True}]
    shortcut = [] if (stride == 1 and c == n) else [
        {"op": "conv2d", "in_channels": c, "out_channels": n, "kernel": [1, 1], "stride": [stride, stride],
         "padding": [0, 0], "bias": True}]
    return {"op": "residual", "body": body, "shortcut": shortcut}


def _hw(text: str) -> list[int]:
    parts = [int(t) for t in text.split("x")]
    return parts * 2 if len(parts) == 1 else parts


def parse_arch(spec: str, input_shape) -> list[dict]:
    """The architecture named by ``spec`` (a preset such as ``lenet5``, a SPEC as in
    :data:`SPEC_HELP`, or a JSON list of ops) for inputs of ``input_shape``, checked with
    :func:`check_arch`. Raises :class:`UserError` naming the bad token."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"--arch needs a preset ({', '.join(PRESETS)}) or a SPEC such as "
                        "c6k5p2,mp2,c16k5,mp2,fc120,fc84,fc10")
    text = spec.strip()
    shape = _check_input_shape(input_shape)
    named = _named_arch(text, shape)
    if named is not None:
        return named
    layers: list[dict] = []       # ops without relus, in order
    cur = shape
    for pos, tok in enumerate(text.split(","), 1):
        ops, cur = _token_ops(tok.strip(), pos, cur, spec)
        layers.extend(ops)
    return _with_relus(spec, layers, shape)


def _named_arch(text: str, shape: tuple) -> list[dict] | None:
    """A preset (plain or residual) or a JSON list of ops, checked; None for a SPEC."""
    if text.lower() in RESIDUAL_SPECS:
        try:
            return parse_arch(RESIDUAL_SPECS[text.lower()], shape)
        except UserError as exc:
            raise UserError(f"preset {text!r} does not fit inputs of shape {_fmt_shape(shape)}: {exc}") from None
    if text.lower() in PRESETS:
        arch = copy.deepcopy(PRESETS[text.lower()])
        try:
            check_arch(arch, shape)
        except TargetError as exc:
            raise UserError(f"preset {text!r} does not fit inputs of shape {_fmt_shape(shape)}: {exc}") from None
        return arch
    if text.startswith("["):
        arch = canonical_arch(text)
        check_arch(arch, shape)
        return arch
    return None


def _token_ops(tok: str, pos: int, cur: tuple, spec: str) -> tuple[list[dict], tuple]:
    """The ops (relus left out) of one SPEC token on inputs of shape ``cur``, and their output shape."""
    where = f"--arch token {pos} {tok!r}"
    low = tok.lower()
    if not low:
        raise UserError(f"--arch: empty token at position {pos} in {spec!r} (a doubled or trailing comma?)")
    if low in ("relu",):
        raise UserError(f"{where}: relu is implied after every conv and fc except the last; "
                        "leave it out")
    if low in _OTHER_ACTIVATIONS:
        raise UserError(f"{where}: only ReLU networks are supported (relu is implied)")
    if low in PRESETS or low in RESIDUAL_SPECS:
        raise UserError(f"{where}: the preset {low} is a whole architecture; pass it alone (--arch {low})")
    m = _RB.match(low)
    if m:
        if len(cur) != 3:
            raise UserError(f"{where}: a residual block needs a CxHxW input, but its input is a vector")
        block = _basic_block(cur, int(m.group("n")), int(m.group("s") or 1), where)
        try:
            return [block], _op_shape(block, cur, where)
        except TargetError as exc:
            raise UserError(f"{where}: {exc}") from None
    if low == "flatten":
        if len(cur) == 1:
            raise UserError(f"{where}: the input of flatten is already a vector")
        return [{"op": "flatten"}], (math.prod(cur),)
    ops: list[dict] = []
    if _FC.match(low) and len(cur) != 1:       # an fc after a conv flattens first
        ops.append({"op": "flatten"})
        cur = (math.prod(cur),)
    op = _layer_op(low, cur, where)
    try:
        checked = canonical_op(op)
        cur = _op_shape(checked, cur, checked["op"])
    except TargetError as exc:
        raise UserError(f"{where}: {exc}") from None
    return ops + [checked], cur


def _layer_op(low: str, cur: tuple, where: str) -> dict:
    """The conv, fc or pooling op of a SPEC token (unchecked)."""
    m = _CONV.match(low)
    if m:
        parts = {}
        for p in _CONV_PART.finditer(m.group("rest")):
            if p.group(1) in parts:
                raise UserError(f"{where}: {p.group(1)!r} given twice")
            parts[p.group(1)] = [int(p.group(2)), int(p.group(3) or p.group(2))]
        if "k" not in parts:
            raise UserError(f"{where}: a conv needs a kernel size, e.g. c{m.group('n')}k5")
        if len(cur) != 3:
            raise UserError(f"{where}: a conv needs a CxHxW input, but its input is a vector of "
                            f"{cur[0]} features (after a flatten or an fc)")
        return {"op": "conv2d", "in_channels": cur[0], "out_channels": int(m.group("n")),
                "kernel": parts["k"], "stride": parts.get("s", [1, 1]),
                "padding": parts.get("p", [0, 0]), "bias": m.group("nb") is None}
    m = _FC.match(low)
    if m:
        return {"op": "linear", "in_features": cur[0], "out_features": int(m.group("n")),
                "bias": m.group("nb") is None}
    m = _POOL.match(low)
    if m:
        k = _hw(m.group("k"))
        if len(cur) != 3:
            raise UserError(f"{where}: pooling needs a CxHxW input, but its input is a vector of "
                            f"{cur[0]} features")
        return {"op": "maxpool2d" if m.group("kind") == "mp" else "avgpool2d", "kernel": k,
                "stride": _hw(m.group("s")) if m.group("s") else list(k)}
    raise UserError(f"{where} is not understood; tokens are cN + kK[sS][pP][nb] (conv), fcN[nb] "
                    "(linear), mpK[sS] / apK[sS] (pools), flatten; e.g. "
                    "c6k5p2,mp2,c16k5,mp2,fc120,fc84,fc10")


def _with_relus(spec: str, layers: list[dict], shape: tuple) -> list[dict]:
    """The SPEC's ops with a relu after every conv, fc and residual block but the last, checked."""
    param = [i for i, op in enumerate(layers) if op["op"] in PARAMETRIC or op["op"] == "residual"]
    if not param:
        raise UserError(f"--arch {spec!r} has no conv (cN...) or fc (fcN) layer")
    last = param[-1]
    if any(op["op"] != "flatten" for op in layers[last + 1:]):
        extra = next(op["op"] for op in layers[last + 1:] if op["op"] != "flatten")
        raise UserError(f"--arch {spec!r}: a {extra} comes after the last layer; the spec must end "
                        "with the conv or fc that gives the logits")
    arch: list[dict] = []
    for i, op in enumerate(layers):
        arch.append(op)
        if (op["op"] in PARAMETRIC or op["op"] == "residual") and i != last:
            arch.append({"op": "relu"})
    try:
        check_arch(arch, shape)
    except TargetError as exc:
        raise UserError(f"--arch {spec!r}: {exc}") from None
    return arch


# --------------------------------------------------------------------------------------------
# nn.Sequential <-> architecture
# --------------------------------------------------------------------------------------------

def module_from_arch(arch) -> nn.Sequential:
    """``nn.Sequential`` of Conv2d/ReLU/MaxPool2d/AvgPool2d/Flatten/Linear, one module per op in
    order (state_dict keys ``0.weight``, ``0.bias``, ``3.weight``, ... for LeNet-5), float32,
    torch's default initialisation (from the global RNG). Built by the package's one builder,
    :func:`subsetsum_lth.ops.module_from_ops`."""
    return module_from_ops(canonical_arch(arch), None, None, torch.float32)


def parametric_keys(arch) -> list[tuple[int | str, dict]]:
    """(index in ``module_from_arch(arch)``, op) of every conv2d/linear, in order; inside a
    residual op the module path (``3.body.0``, :func:`subsetsum_lth.ops.param_paths`)."""
    ops = canonical_arch(arch)
    if is_residual(ops):
        return param_paths(ops)
    return [(i, op) for i, op in enumerate(ops) if op["op"] in PARAMETRIC]


def expected_shapes(op: dict) -> dict[str, tuple[int, ...]]:
    """{'weight': shape, 'bias': shape (when the op has one)} of a canonical conv2d/linear op."""
    if op["op"] == "conv2d":
        w = (op["out_channels"], op["in_channels"], *op["kernel"])
        n = op["out_channels"]
    else:
        w = (op["out_features"], op["in_features"])
        n = op["out_features"]
    return {"weight": w, **({"bias": (n,)} if op["bias"] else {})}


_SKIPPED = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
            nn.FeatureAlphaDropout, nn.Identity)


def _leaves(module: nn.Module, prefix: str = ""):
    """(dotted name, module) of the leaves of nested nn.Sequential containers, in forward order."""
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if type(child) is nn.Sequential:
            yield from _leaves(child, full + ".")
        else:
            yield full, child


def _bn_fold(layer: nn.Module, bn: nn.Module, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``layer`` with the eval-mode ``bn`` folded in (computed in float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise TargetError(f"{where} keeps no running statistics (track_running_stats=False), so it "
                          "cannot be folded; retrain with track_running_stats=True")
    n = layer.weight.shape[0]
    if bn.num_features != n:
        raise TargetError(f"{where} normalises {bn.num_features} features but the layer before it "
                          f"has {n} outputs")
    return fold_bn_tensors(layer.weight, layer.bias, bn.running_mean, bn.running_var,
                           bn.weight, bn.bias, bn.eps)


def fold_batchnorm(seq: nn.Module) -> nn.Sequential:
    """A copy of ``seq`` (an ``nn.Sequential``, nested ones flattened) in which every
    BatchNorm1d/BatchNorm2d that comes right after a Linear/Conv2d (Dropout/Identity between
    them are skipped) is folded into that layer with its running statistics, i.e. the network in
    eval mode; the result equals ``seq.eval()``. A BatchNorm anywhere else is refused naming its
    layer. ``seq`` itself is not modified."""
    if not isinstance(seq, nn.Sequential):
        raise TargetError(f"expected an nn.Sequential, got {type(seq).__name__}")
    out: list[nn.Module] = []
    last_param: int | None = None     # index in out of the latest Linear/Conv2d, while foldable
    for name, mod in _leaves(seq):
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            where = f"layer {name} ({type(mod).__name__})"
            want = nn.Conv2d if isinstance(mod, nn.BatchNorm2d) else nn.Linear
            if last_param is None or not isinstance(out[last_param], want):
                prev = type(out[-1]).__name__ if out else "the input"
                raise TargetError(f"{where} follows {prev}, not a {want.__name__}: only a BatchNorm "
                                  f"right after a {want.__name__} can be folded into it")
            layer = out[last_param]
            w, b = _bn_fold(layer, mod, where)
            new = copy.deepcopy(layer)
            with torch.no_grad():
                new.weight.copy_(w)
                if new.bias is None:
                    new.bias = nn.Parameter(b.to(new.weight.dtype))
                else:
                    new.bias.copy_(b)
            out[last_param] = new
            last_param = None          # a second BatchNorm in a row is refused
            continue
        if isinstance(mod, _SKIPPED):
            out.append(copy.deepcopy(mod))
            continue
        out.append(copy.deepcopy(mod))
        last_param = len(out) - 1 if isinstance(mod, (nn.Linear, nn.Conv2d)) else None
    return nn.Sequential(*out)


def _pool_op(mod: nn.Module, where: str) -> dict:
    kind = "maxpool2d" if isinstance(mod, nn.MaxPool2d) else "avgpool2d"
    op = {"op": kind, "kernel": _pair(mod.kernel_size, f"{where} kernel"),
          "stride": _pair(mod.stride if mod.stride is not None else mod.kernel_size, f"{where} stride")}
    if _pair(mod.padding, f"{where} padding") != [0, 0]:
        raise TargetError(f"{where}: pool padding {mod.padding} is not supported (only 0)")
    if mod.ceil_mode:
        raise TargetError(f"{where}: ceil_mode=True is not supported (only floor mode)")
    if kind == "maxpool2d":
        if _pair(mod.dilation, f"{where} dilation") != [1, 1]:
            raise TargetError(f"{where}: pool dilation {mod.dilation} is not supported (only 1)")
        if mod.return_indices:
            raise TargetError(f"{where}: return_indices=True is not supported")
    elif mod.divisor_override is not None:
        raise TargetError(f"{where}: divisor_override={mod.divisor_override} is not supported")
    return op


def _conv_op(mod: nn.Conv2d, where: str) -> dict:
    if tuple(mod.dilation) != (1, 1):
        raise TargetError(f"{where}: dilation {tuple(mod.dilation)} is not supported (only 1)")
    if mod.groups != 1:
        raise TargetError(f"{where}: groups={mod.groups} (grouped/depthwise convolution) is not supported")
    if mod.padding_mode != "zeros":
        raise TargetError(f"{where}: padding_mode {mod.padding_mode!r} is not supported (only 'zeros')")
    padding = mod.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        else:   # 'same' (stride 1): symmetric only for odd kernels
            if any(k % 2 == 0 for k in mod.kernel_size):
                raise TargetError(f"{where}: padding='same' with an even kernel {tuple(mod.kernel_size)} "
                                  "pads asymmetrically, which is not supported")
            padding = tuple((k - 1) // 2 for k in mod.kernel_size)
    return {"op": "conv2d", "in_channels": mod.in_channels, "out_channels": mod.out_channels,
            "kernel": list(mod.kernel_size), "stride": list(mod.stride), "padding": list(padding),
            "bias": mod.bias is not None}


def arch_from_module(seq: nn.Module, input_shape) -> list[dict]:
    """The architecture of ``seq`` (an ``nn.Sequential``, nested ones flattened), checked with
    :func:`check_arch`. Dropout and Identity are skipped, BatchNorm right after a conv/linear is
    folded (:func:`fold_batchnorm`: build the weights from ``fold_batchnorm(seq)`` too), anything
    else that is not Conv2d/ReLU/MaxPool2d/AvgPool2d/Flatten/Linear is refused naming the layer
    (``layer 4 (Tanh)``)."""
    if not isinstance(seq, nn.Sequential):
        raise TargetError(f"expected an nn.Sequential, got {type(seq).__name__}; write the model as "
                          "an nn.Sequential or pass --arch")
    names = [name for name, mod in _leaves(seq) if not isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for name, mod in _leaves(seq):     # refuse what is not supported, naming the original layer
        if not isinstance(mod, _SUPPORTED):
            _refuse_module(name, mod)
    folded = fold_batchnorm(seq)       # refuses a BatchNorm that cannot be folded, naming it
    arch: list[dict] = []
    for name, mod in zip(names, folded):
        where = f"layer {name} ({type(mod).__name__})"
        if isinstance(mod, _SKIPPED):
            continue
        if type(mod) is nn.Conv2d:
            arch.append(_conv_op(mod, where))
        elif type(mod) is nn.Linear:
            arch.append({"op": "linear", "in_features": mod.in_features,
                         "out_features": mod.out_features, "bias": mod.bias is not None})
        elif type(mod) is nn.ReLU:
            arch.append({"op": "relu"})
        elif type(mod) in (nn.MaxPool2d, nn.AvgPool2d):
            arch.append(_pool_op(mod, where))
        elif type(mod) is nn.Flatten:
            if mod.start_dim != 1 or mod.end_dim != -1:
                raise TargetError(f"{where}: only Flatten(start_dim=1, end_dim=-1) is supported")
            arch.append({"op": "flatten"})
        else:
            _refuse_module(name, mod)
    check_arch(arch, input_shape)
    return arch


_SUPPORTED = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.BatchNorm1d,
              nn.BatchNorm2d, *_SKIPPED)


def _refuse_module(name: str, mod: nn.Module):
    if isinstance(mod, _SUPPORTED) and type(mod) not in _SUPPORTED:
        kind = f"a subclass of {next(c.__name__ for c in _SUPPORTED if isinstance(mod, c))} (its forward may differ)"
    elif type(mod).__name__.lower() in _OTHER_ACTIVATIONS:
        kind = f"activation {type(mod).__name__}"
    else:
        kind = f"module {type(mod).__name__}"
    raise TargetError(f"layer {name} ({type(mod).__name__}): {kind} is not supported; the layers read are "
                      "Conv2d, ReLU, MaxPool2d, AvgPool2d, Flatten, Linear (Dropout and Identity skipped, "
                      "BatchNorm right after a Conv2d/Linear folded)")


# --------------------------------------------------------------------------------------------
# reading a saved target
# --------------------------------------------------------------------------------------------

def arch_from_metadata(metadata: dict, source: str = "") -> tuple[list[dict], tuple[int, ...]] | None:
    """(arch, input_shape) recorded in a target's safetensors metadata (keys ``arch`` and
    ``input_shape``, both JSON), checked; None when the metadata records no architecture."""
    where = f" in {source}" if source else ""
    if "arch" not in metadata:
        return None
    try:
        arch = json.loads(metadata["arch"])
        input_shape = json.loads(metadata.get("input_shape", "null"))
    except json.JSONDecodeError as exc:
        raise TargetError(f"the 'arch'/'input_shape' metadata{where} is not valid JSON: {exc}") from None
    if input_shape is None:
        raise TargetError(f"the metadata{where} has an 'arch' but no 'input_shape'")
    arch = canonical_arch(arch)
    shape = _check_input_shape(input_shape)
    check_arch(arch, shape)
    return arch, shape


def load_arch_target(path) -> tuple[nn.Sequential, list[dict], tuple[int, ...], dict]:
    """``(module, arch, input_shape, metadata)`` of a ``target.safetensors`` written by
    ``train-target --arch``: ``module = module_from_arch(arch)`` with the file's weights, in eval
    mode. Raises :class:`TargetError` when the file records no architecture or its tensors are not
    exactly those of the architecture."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise TargetError(f"cannot read {path} as safetensors: {exc}") from None
    found = arch_from_metadata(metadata, str(path))
    if found is None:
        raise TargetError(f"{path} records no architecture (no 'arch' metadata); it is not a target "
                          "written by train-target --arch")
    arch, shape = found
    module = module_from_arch(arch)
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    if want != have:
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        raise TargetError(f"the tensors of {path} do not match its architecture: missing {missing}, "
                          f"unexpected {extra}, wrong shape "
                          f"{[(k, have[k], want[k]) for k in wrong]}")
    module.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    module.eval()
    return module, arch, shape, metadata
