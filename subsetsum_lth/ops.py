"""The op vocabulary of architecture lists (see :mod:`subsetsum_lth.arch` for the format): which
ops and keys exist, the one validator (:func:`canonical_op`, :func:`canonical_arch`,
:func:`check_arch`: shapes, supported options, the class of Theorem 1), and the one builder of an
``nn.Sequential`` from such a list (:func:`module_from_ops`), used for targets, g and ĝ alike.

It sits below :mod:`subsetsum_lth.layerkinds` (which parses a validated list into layer kinds)
and :mod:`subsetsum_lth.gnet` (which lays g out as such a list).
"""
from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from subsetsum_lth.errors import RunFolderError, TargetError

PARAMETRIC = ("conv2d", "linear")
POOLS = ("maxpool2d", "avgpool2d")
OPS = (*PARAMETRIC, "relu", *POOLS, "flatten", "residual")

#: the keys each op may carry (besides "op"), with the values that are the only ones accepted
#: for the keys the construction does not handle (a user's arch may state them explicitly)
_KEYS = {
    "conv2d": {"in_channels", "out_channels", "kernel", "stride", "padding", "bias"},
    "linear": {"in_features", "out_features", "bias"},
    "relu": set(),
    "maxpool2d": {"kernel", "stride"},
    "avgpool2d": {"kernel", "stride"},
    "flatten": set(),
    "residual": {"body", "shortcut"},
}
_NEUTRAL = {   # op -> key -> (accepted values, what to say)
    "conv2d": {"dilation": ((1, [1, 1], (1, 1)), "dilation is not supported (only 1)"),
               "groups": ((1,), "grouped/depthwise convolution is not supported (only groups=1)"),
               "padding_mode": (("zeros",), "only zero padding (padding_mode 'zeros') is supported")},
    "maxpool2d": {"padding": ((0, [0, 0], (0, 0)), "pool padding is not supported (only 0)"),
                  "dilation": ((1, [1, 1], (1, 1)), "pool dilation is not supported (only 1)"),
                  "ceil_mode": ((False,), "ceil_mode is not supported (only floor mode)")},
    "avgpool2d": {"padding": ((0, [0, 0], (0, 0)), "pool padding is not supported (only 0)"),
                  "ceil_mode": ((False,), "ceil_mode is not supported (only floor mode)"),
                  "count_include_pad": ((True, False), ""),
                  "divisor_override": ((None,), "divisor_override is not supported")},
}
_OTHER_ACTIVATIONS = {"tanh", "sigmoid", "gelu", "elu", "selu", "silu", "swish", "leakyrelu",
                      "leaky_relu", "relu6", "softplus", "hardtanh", "prelu", "mish", "softmax",
                      "log_softmax", "logsoftmax", "hardswish", "hardsigmoid", "celu", "rrelu"}
_RESIDUAL = {"add", "skip", "concat", "cat", "shortcut"}

def _pair(value, what: str) -> list[int]:
    """[a, b] from an int or a 2-sequence of ints (bools refused)."""
    if isinstance(value, bool):
        raise TargetError(f"{what}: expected an integer or a pair of integers, got {value!r}")
    if isinstance(value, int):
        return [int(value), int(value)]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [int(value[0]), int(value[1])]
    raise TargetError(f"{what}: expected an integer or a pair of integers, got {value!r}")


def _int(value, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TargetError(f"{what}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _describe(i: int, op: dict) -> str:
    return f"layer {i} ({op.get('op', '?')})" if isinstance(op, dict) else f"layer {i}"


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _check_input_shape(input_shape) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise TargetError(f"input_shape must be [C, H, W] or [D] (positive integers), "
                          f"got {input_shape!r}") from None
    if len(shape) not in (1, 3) or any(s < 1 for s in shape) or any(
            isinstance(s, bool) or (isinstance(s, float) and s != int(s)) for s in input_shape):
        raise TargetError(f"input_shape must be [C, H, W] or [D] (positive integers), got {input_shape!r}")
    return shape


def canonical_op(op: dict, i: int = 0) -> dict:
    """``op`` with every field in the fixed format: pairs as [a, b], defaults filled (conv stride 1,
    padding 0, bias true; pool stride = kernel), the neutral keys (dilation 1, groups 1, ...)
    dropped. Raises TargetError naming the layer for an op or a key the construction cannot
    handle."""
    where = _describe(i, op)
    if not isinstance(op, dict) or not isinstance(op.get("op"), str):
        raise TargetError(f"{where}: each op must be a dict with a string 'op' (one of {', '.join(OPS)}), "
                          f"got {op!r}")
    kind = op["op"].lower()
    if kind not in _KEYS:
        if kind in _OTHER_ACTIVATIONS:
            raise TargetError(f"{where}: activation {op['op']!r} is not supported; only ReLU networks are")
        if kind in _RESIDUAL:
            raise TargetError(f"{where}: residual/skip connections are written as one op {{'op': 'residual', "
                              f"'body': [ops], 'shortcut': [ops]}} (an empty shortcut is the identity), "
                              f"not {op['op']!r}")
        raise TargetError(f"{where}: unknown op {op['op']!r}; the ops are {', '.join(OPS)}")
    neutral = _NEUTRAL.get(kind, {})
    for key, value in op.items():
        if key == "op" or key in _KEYS[kind]:
            continue
        if key in neutral:
            accepted, why = neutral[key]
            if not any(value == a and type(value) is type(a) or (isinstance(a, (list, tuple)) and
                       isinstance(value, (list, tuple)) and list(value) == list(a)) for a in accepted):
                raise TargetError(f"{where}: {key}={value!r}: {why}")
            continue
        allowed = ", ".join(sorted(_KEYS[kind] | set(neutral))) or "none"
        raise TargetError(f"{where}: unknown key {key!r} (keys of {kind}: {allowed})")
    out: dict = {"op": kind}
    if kind == "conv2d":
        for key in ("in_channels", "out_channels", "kernel"):
            if key not in op:
                raise TargetError(f"{where}: missing {key!r}")
        out["in_channels"] = _int(op["in_channels"], f"{where} in_channels")
        out["out_channels"] = _int(op["out_channels"], f"{where} out_channels")
        out["kernel"] = _pair(op["kernel"], f"{where} kernel")
        out["stride"] = _pair(op.get("stride", 1), f"{where} stride")
        padding = op.get("padding", 0)
        if isinstance(padding, str):
            raise TargetError(f"{where}: padding {padding!r}: give the padding as numbers "
                              "(e.g. [2, 2] for a 5x5 kernel 'same')")
        out["padding"] = _pair(padding, f"{where} padding")
        if min(out["kernel"]) < 1 or min(out["stride"]) < 1 or min(out["padding"]) < 0:
            raise TargetError(f"{where}: kernel and stride must be >= 1 and padding >= 0, got kernel "
                              f"{out['kernel']}, stride {out['stride']}, padding {out['padding']}")
        out["bias"] = _bool(op.get("bias", True), f"{where} bias")
    elif kind == "linear":
        for key in ("in_features", "out_features"):
            if key not in op:
                raise TargetError(f"{where}: missing {key!r}")
        out["in_features"] = _int(op["in_features"], f"{where} in_features")
        out["out_features"] = _int(op["out_features"], f"{where} out_features")
        out["bias"] = _bool(op.get("bias", True), f"{where} bias")
    elif kind == "residual":
        body = op.get("body")
        shortcut = op.get("shortcut", [])
        for name, branch in (("body", body), ("shortcut", shortcut)):
            if not isinstance(branch, (list, tuple)):
                raise TargetError(f"{where}: {name!r} must be a list of ops, got {branch!r}")
        if not body:
            raise TargetError(f"{where}: a residual op needs a non-empty 'body' (the branch F of x + F(x))")
        out["body"] = [canonical_op(o, j) for j, o in enumerate(body)]
        out["shortcut"] = [canonical_op(o, j) for j, o in enumerate(shortcut)]
    elif kind in POOLS:
        if "kernel" not in op:
            raise TargetError(f"{where}: missing 'kernel'")
        out["kernel"] = _pair(op["kernel"], f"{where} kernel")
        stride = op.get("stride")
        out["stride"] = list(out["kernel"]) if stride is None else _pair(stride, f"{where} stride")
        if min(out["kernel"]) < 1 or min(out["stride"]) < 1:
            raise TargetError(f"{where}: kernel and stride must be >= 1, got kernel {out['kernel']}, "
                              f"stride {out['stride']}")
    return out


def _bool(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise TargetError(f"{what}: expected true or false, got {value!r}")
    return value


def canonical_arch(arch) -> list[dict]:
    """Every op of ``arch`` in canonical form (see :func:`canonical_op`); a JSON string is parsed."""
    if isinstance(arch, str):
        try:
            arch = json.loads(arch)
        except json.JSONDecodeError as exc:
            raise TargetError(f"the architecture is not valid JSON: {exc}") from None
    if not isinstance(arch, (list, tuple)) or not arch:
        raise TargetError(f"an architecture is a non-empty list of ops, got {type(arch).__name__}")
    return [canonical_op(op, i) for i, op in enumerate(arch)]


# --------------------------------------------------------------------------------------------
# check_arch
# --------------------------------------------------------------------------------------------

def check_arch(arch, input_shape) -> list[tuple[int, ...]]:
    """Output shape (without the batch dimension) of each op of ``arch`` on inputs of shape
    ``input_shape``; raises :class:`TargetError` naming the layer for a shape mismatch, an op or
    an option the construction cannot handle, or a network outside its class (a ReLU after every
    conv/linear but the last, none after the last)."""
    ops = canonical_arch(arch)
    shape = _check_input_shape(input_shape)
    shapes: list[tuple[int, ...]] = []
    for i, op in enumerate(ops):
        shape = _op_shape(op, shape, _describe(i, op), i)
        shapes.append(shape)
    if is_residual(ops):
        _check_residual_class(ops)
    else:
        _check_class(ops)
    return shapes


def _op_shape(op: dict, shape: tuple, where: str, i: int = 0) -> tuple[int, ...]:
    """Output shape of the canonical ``op`` on an input of ``shape``; TargetError on a mismatch."""
    kind = op["op"]
    if kind == "residual":
        outs = []
        for name in ("body", "shortcut"):
            s = tuple(shape)
            for j, sub in enumerate(op[name]):
                s = _op_shape(sub, s, f"{where} {name} {_describe(j, sub)}", j)
            outs.append(s)
        if outs[0] != outs[1]:
            raise TargetError(f"{where}: its body gives {_fmt_shape(outs[0])} but its shortcut "
                              f"{_fmt_shape(outs[1])}; the two branches of an add must have the same shape "
                              "(a 1x1 conv2d shortcut, stride as the body's, projects the input)")
        return outs[0]
    if kind == "conv2d":
        if len(shape) != 3:
            raise TargetError(f"{where} needs a CxHxW input but gets a vector of {shape[0]} features"
                              + ("" if i == 0 else f" (the output of layer {i - 1})")
                              + "; a conv2d cannot follow a flatten or a linear layer")
        if op["in_channels"] != shape[0]:
            raise TargetError(f"{where} has in_channels {op['in_channels']} but its input has "
                              f"{shape[0]} channels ({_fmt_shape(shape)})")
        hw = []
        for n, k, s, p in zip(shape[1:], op["kernel"], op["stride"], op["padding"]):
            if n + 2 * p < k:
                raise TargetError(f"{where}: kernel {_fmt_shape(op['kernel'])} is larger than its "
                                  f"padded input {_fmt_shape(shape)} (padding {op['padding']})")
            if p >= k:
                raise TargetError(f"{where}: padding {op['padding']} is not smaller than the kernel "
                                  f"{_fmt_shape(op['kernel'])}: some outputs would see only padding")
            hw.append((n + 2 * p - k) // s + 1)
        return (op["out_channels"], *hw)
    if kind in POOLS:
        if len(shape) != 3:
            raise TargetError(f"{where} needs a CxHxW input but gets a vector of {shape[0]} features")
        hw = []
        for n, k, s in zip(shape[1:], op["kernel"], op["stride"]):
            if n < k:
                raise TargetError(f"{where}: kernel {_fmt_shape(op['kernel'])} is larger than its "
                                  f"input {_fmt_shape(shape)}")
            hw.append((n - k) // s + 1)
        return (shape[0], *hw)
    if kind == "flatten":
        return (math.prod(shape),)
    if kind == "linear":
        if len(shape) != 1:
            raise TargetError(f"{where} gets a {_fmt_shape(shape)} input; put a flatten op before it "
                              f"(in_features would be {math.prod(shape)})")
        if op["in_features"] != shape[0]:
            raise TargetError(f"{where} has in_features {op['in_features']} but its input has "
                              f"{shape[0]} features")
        return (op["out_features"],)
    return tuple(shape)   # relu


def _check_class(ops: list[dict]) -> None:
    """A ReLU right after every conv/linear but the last (pools/flatten may follow it), no ReLU
    anywhere else, pools only after such a ReLU, and nothing but a flatten after the last
    conv/linear."""
    param = [i for i, op in enumerate(ops) if op["op"] in PARAMETRIC]
    if not param:
        raise TargetError("the architecture has no conv2d or linear layer")
    last = param[-1]
    for i, op in enumerate(ops):
        where = _describe(i, op)
        kind = op["op"]
        if kind in PARAMETRIC and i != last:
            if i + 1 >= len(ops) or ops[i + 1]["op"] != "relu":
                nxt = f"is followed by {ops[i + 1]['op']}" if i + 1 < len(ops) else "ends the network"
                raise TargetError(f"{where} {nxt}; every conv2d/linear but the last must be followed "
                                  "directly by a relu")
        if kind == "relu":
            if i == 0 or ops[i - 1]["op"] not in PARAMETRIC or i - 1 == last:
                prev = "the input" if i == 0 else f"layer {i - 1} ({ops[i - 1]['op']})"
                what = ("the last conv2d/linear gives the logits and has no relu after it"
                        if i > 0 and i - 1 == last else "a relu must come right after a conv2d/linear")
                raise TargetError(f"{where} follows {prev}: {what}")
        if kind in POOLS:
            j = i - 1
            while j >= 0 and ops[j]["op"] in POOLS:
                j -= 1
            if j < 0 or ops[j]["op"] != "relu":
                prev = "the input" if j < 0 else f"layer {j} ({ops[j]['op']})"
                raise TargetError(f"{where} follows {prev}: a pool must come after the relu of a "
                                  "conv2d (conv2d, relu, pool)")
        if i > last and kind != "flatten":
            raise TargetError(f"{where} comes after the last conv2d/linear (layer {last}); the network must "
                              "end with that layer (a flatten after it is allowed)")


# --------------------------------------------------------------------------------------------
# residual architectures: a nested op {"op": "residual", "body": [...], "shortcut": [...]}
# --------------------------------------------------------------------------------------------

def is_residual(ops) -> bool:
    """Whether an architecture list holds a residual op (anywhere)."""
    return any(isinstance(op, dict) and str(op.get("op", "")).lower() == "residual" for op in ops)


def param_paths(ops: list[dict], prefix: str = "") -> list[tuple[str, dict]]:
    """(module path, op) of every conv2d/linear in forward order, depth first, a residual's body
    before its shortcut: the path is the op's name in ``module_from_ops(ops)`` (``3`` for the op
    at index 3 of the list, ``3.body.0`` for the first op of the body of the residual op at 3), so
    its tensors are ``{path}.weight`` / ``{path}.bias``."""
    out = []
    for i, op in enumerate(ops):
        name = op["op"]
        if name in PARAMETRIC:
            out.append((f"{prefix}{i}", op))
        elif name == "residual":
            out += param_paths(op["body"], f"{prefix}{i}.body.")
            out += param_paths(op["shortcut"], f"{prefix}{i}.shortcut.")
    return out


def substitute_params(ops: list[dict], replace) -> tuple[list[dict], list[bool]]:
    """``ops`` with the k-th conv2d/linear (forward order, as :func:`param_paths`) replaced by the
    list of ops ``replace(k, op)``, residual ops rebuilt around their substituted branches; and
    one flag per ReLU of the result (forward order): True for a ReLU that ``replace`` put in."""
    counter = [0]
    flags: list[bool] = []

    def walk(seq):
        out = []
        for op in seq:
            name = op["op"]
            if name in PARAMETRIC:
                new = replace(counter[0], op)
                counter[0] += 1
                flags.extend(True for o in new if o["op"] == "relu")
                out.extend(new)
            elif name == "residual":
                out.append({"op": "residual", "body": walk(op["body"]), "shortcut": walk(op["shortcut"])})
            else:
                if name == "relu":
                    flags.append(False)
                out.append(dict(op))
        return out

    return walk(ops), flags


def relu_follows(ops: list[dict]) -> list[bool]:
    """For every conv2d/linear (forward order): whether a ReLU comes right after it in its list
    (a residual body's last conv has none: the add comes first)."""
    out: list[bool] = []

    def walk(seq):
        for i, op in enumerate(seq):
            if op["op"] in PARAMETRIC:
                out.append(i + 1 < len(seq) and seq[i + 1]["op"] == "relu")
            elif op["op"] == "residual":
                walk(op["body"])
                walk(op["shortcut"])

    walk(ops)
    return out


def signed_inputs(ops: list[dict], input_signed: bool) -> list[bool]:
    """For every conv2d/linear (forward order): whether its input can be negative. The network's
    input is signed iff ``input_signed``; a ReLU's output is non-negative; pools and flatten keep
    the sign; a conv2d/linear output is signed; an add is non-negative iff both branches are."""
    out: list[bool] = []

    def walk(seq, nonneg: bool) -> bool:
        for op in seq:
            name = op["op"]
            if name in PARAMETRIC:
                out.append(not nonneg)
                nonneg = False
            elif name == "relu":
                nonneg = True
            elif name == "residual":
                a = walk(op["body"], nonneg)
                b = walk(op["shortcut"], nonneg)
                nonneg = a and b
        return nonneg

    walk(ops, not input_signed)
    return out


def _check_residual_class(ops: list[dict]) -> None:
    """The class of a residual network (ReLUs explicit, anywhere): it starts with a conv2d/linear
    (the stem, into which input preprocessing folds), ends with the conv2d/linear that gives the
    logits (a flatten after it allowed), every residual body holds a conv2d/linear, and no
    residual op is nested in another's shortcut."""
    if ops[0]["op"] not in PARAMETRIC:
        raise TargetError(f"{_describe(0, ops[0])}: a residual network must start with a conv2d/linear "
                          "(the stem) before its first residual op")
    param = [i for i, op in enumerate(ops) if op["op"] in PARAMETRIC or op["op"] == "residual"]
    last = param[-1]
    if ops[last]["op"] != "linear" and ops[last]["op"] != "conv2d":
        raise TargetError(f"{_describe(last, ops[last])} ends the network; a residual network must end "
                          "with the conv2d/linear that gives the logits (e.g. avgpool, flatten, linear)")
    for i, op in enumerate(ops[last + 1:], last + 1):
        if op["op"] != "flatten":
            raise TargetError(f"{_describe(i, op)} comes after the last conv2d/linear (layer {last}); the "
                              "network must end with that layer (a flatten after it is allowed)")

    def check(seq, where):
        for j, op in enumerate(seq):
            if op["op"] != "residual":
                continue
            w = f"{where}{_describe(j, op)}"
            if not param_paths(op["body"]):
                raise TargetError(f"{w}: its body has no conv2d/linear")
            if any(o["op"] == "residual" for o in op["shortcut"]):
                raise TargetError(f"{w}: a residual op inside a shortcut is not supported")
            check(op["body"], f"{w} body ")
    check(ops, "")


# --------------------------------------------------------------------------------------------
# the one builder
# --------------------------------------------------------------------------------------------

def parameter_free_module(name: str, kernel=(1, 1), stride=(1, 1)) -> nn.Module:
    """The module of a parameter-free op: ``flatten``, ``maxpool2d`` or ``avgpool2d`` (kernel, stride)."""
    if name == "flatten":
        return nn.Flatten()
    cls = nn.MaxPool2d if name == "maxpool2d" else nn.AvgPool2d
    return cls(tuple(kernel), tuple(stride))


class Residual(nn.Module):
    """``body(x) + shortcut(x)`` (an empty shortcut Sequential is the identity): the module of a
    residual op; its tensors are keyed ``body.{j}.*`` and ``shortcut.{j}.*``."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential):
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


def module_from_ops(ops: list[dict], state: dict | None = None, masks: dict | None = None,
                    dtype=torch.float32, relu_after=None, replace=None) -> nn.Sequential:
    """An nn.Sequential from an architecture list, its parametric layers loaded from ``state``
    (keyed ``{index}.weight``/``{index}.bias``; inside a residual op ``{index}.body.{j}.weight``,
    see :func:`param_paths`) and multiplied by ``masks`` when given. A residual op becomes a
    :class:`Residual` module. ``relu_after`` (one bool per ReLU of ``ops``, in forward order,
    depth first): False puts ``nn.Identity`` in that ReLU's place, so the keys stay the same
    (edge-popup's ``--no-inner-relu``). ``replace(path, op)``, when given, may return the module
    to put in a conv2d/linear op's place (its path as in the keys, e.g. ``'0'``); None builds it
    as usual."""
    n_relu = count_relus(ops)
    if relu_after is not None and len(relu_after) != n_relu:
        raise RunFolderError(f"relu_after has {len(relu_after)} entries for {n_relu} ReLUs")
    keep = iter([True] * n_relu if relu_after is None else [bool(r) for r in relu_after])
    return _build(ops, state, masks, dtype, keep, "", replace)


def count_relus(ops) -> int:
    """The ReLUs of an architecture list, those inside residual ops included."""
    return sum(1 if op["op"] == "relu" else
               (count_relus(op["body"]) + count_relus(op["shortcut"]) if op["op"] == "residual" else 0)
               for op in ops)


def _build(ops, state, masks, dtype, keep, prefix: str, replace=None) -> nn.Sequential:
    mods: list[nn.Module] = []
    for idx, op in enumerate(ops):
        name = op["op"]
        if replace is not None and name in ("linear", "conv2d"):
            mod = replace(f"{prefix}{idx}", op)
            if mod is not None:
                mods.append(mod)
                continue
        if name == "linear":
            mod = nn.Linear(int(op["in_features"]), int(op["out_features"]), bias=op.get("bias", True))
        elif name == "conv2d":
            mod = nn.Conv2d(int(op["in_channels"]), int(op["out_channels"]), tuple(op["kernel"]),
                            tuple(op.get("stride", (1, 1))), tuple(op.get("padding", (0, 0))),
                            bias=op.get("bias", True))
        elif name == "relu":
            mods.append(nn.ReLU() if next(keep) else nn.Identity())
            continue
        elif name in ("maxpool2d", "avgpool2d", "flatten"):
            mods.append(parameter_free_module(name, tuple(op.get("kernel", (1, 1))), tuple(op.get("stride", (1, 1)))))
            continue
        elif name == "residual":
            body = _build(op["body"], state, masks, dtype, keep, f"{prefix}{idx}.body.", replace)
            shortcut = _build(op.get("shortcut", []), state, masks, dtype, keep, f"{prefix}{idx}.shortcut.", replace)
            mods.append(Residual(body, shortcut))
            continue
        else:
            raise RunFolderError(f"unsupported layer {idx} ({name}) in an architecture")
        mod = mod.to(dtype)
        if state is not None:
            with torch.no_grad():
                for t in ("weight", "bias"):
                    key = f"{prefix}{idx}.{t}"
                    if getattr(mod, t) is None:
                        continue
                    v = torch.as_tensor(np.asarray(state[key]), dtype=dtype)
                    if masks is not None:
                        v = v * torch.as_tensor(np.asarray(masks[key]) != 0)
                    getattr(mod, t).copy_(v.reshape(getattr(mod, t).shape))
        mods.append(mod)
    return nn.Sequential(*mods)
