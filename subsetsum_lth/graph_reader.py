"""Read a network from its traced graph: an ``ExportedProgram`` (``torch.export``) is turned into
the package's op vocabulary (:mod:`subsetsum_lth.ops`: an architecture list, a state dict keyed
like ``module_from_ops(arch)``, and the input shape), which :func:`subsetsum_lth.target.from_arch_state`
turns into a target, so everything downstream is unchanged.

What is read (:data:`GRAPH_OPS`, the one table of what a graph may hold): ``nn.Linear``/``F.linear``,
``nn.Conv2d``/``F.conv2d``, ReLU in every spelling (``nn.ReLU``, ``F.relu``, ``torch.relu``,
in place), max/avg pooling (module or functional), flatten/view/reshape to ``N × features``,
eval-mode BatchNorm right after a conv/linear (folded exactly, in float64), dropout in eval mode
and identities (skipped), and a leading ``(x - mean) / std`` (a Normalize inside the model: read
as the target's input preprocessing). Anything else -- tanh, sigmoid, GELU, LeakyReLU, softmax
inside the net, attention -- is refused in one line naming the op and where it is (module path and
node name). A skip add of two branches from one value (a ResNet basic block: body + identity or
1x1-conv shortcut) becomes a ``residual`` op (:mod:`subsetsum_lth.graph_residual` finds the fork
and the branches); any other join (concatenation, nested forks, a third branch) is refused. :func:`read_graph` fills ``info['graph']`` with one row per node
(op, shape, what became of it), also when it refuses, for ``subsetsum-lth inspect``.
"""
from __future__ import annotations

import logging
import math
import re

import numpy as np
import torch

from subsetsum_lth.checkpoint import fold_bn_tensors
from subsetsum_lth.errors import TargetError
from subsetsum_lth.graph_residual import (BOOKKEEPING as _BOOKKEEPING, find_blocks, full_name as _full_name,
                                          node_shape as _shape, op_name, pick_shortcut, where)
from subsetsum_lth.ops import _OTHER_ACTIVATIONS, check_arch
from subsetsum_lth.preprocess import Preprocessing

log = logging.getLogger(__name__)

#: ATen op (name without the ``aten.`` namespace and overload) -> what it is in the op vocabulary
GRAPH_OPS = {
    "linear": "linear", "conv2d": "conv2d", "convolution": "conv2d", "_convolution": "conv2d",
    "relu": "relu", "relu_": "relu",
    "max_pool2d": "maxpool2d", "max_pool2d_with_indices": "maxpool2d", "avg_pool2d": "avgpool2d",
    "adaptive_avg_pool2d": "adaptive", "_adaptive_avg_pool2d": "adaptive",
    "flatten": "reshape", "view": "reshape", "reshape": "reshape", "_unsafe_view": "reshape",
    "batch_norm": "batchnorm", "_native_batch_norm_legit_no_training": "batchnorm",
    "dropout": "dropout", "dropout_": "dropout", "feature_dropout": "dropout",
    "alias": "identity", "clone": "identity", "contiguous": "identity", "detach": "identity",
    "detach_": "identity", "lift_fresh_copy": "identity", "_assert_tensor_metadata": "skip",
    "sub": "sub", "sub_": "sub", "div": "div", "div_": "div",
}
SUPPORTED_TEXT = ("Linear, Conv2d, ReLU, MaxPool2d/AvgPool2d, flatten/view/reshape, eval-mode BatchNorm "
                  "after a Conv2d/Linear, Dropout, Identity, and a leading (x - mean) / std")


_SOFTMAX = {"softmax", "_softmax", "log_softmax", "_log_softmax"}


def refuse_op(node, why: str = "") -> TargetError:
    name = op_name(node)
    if name in _SOFTMAX and not why:
        why = ("the construction approximates the logits: return them from forward and apply the "
               "(log-)softmax in the loss (F.cross_entropy does)")
    kind = "activation" if name.rstrip("_").lower() in _OTHER_ACTIVATIONS | {"leaky_relu", "hardtanh"} else "op"
    reason = why or f"only ReLU networks of {SUPPORTED_TEXT} are read"
    return TargetError(f"{kind} {name} ({_full_name(node)}) at {where(node)} is not supported: {reason}")


class _Reader:
    """The walk over one graph: the chain of activations, the ops read, their weights."""

    def __init__(self, graph, tensors: dict, input_node, info: dict):
        self.graph, self.tensors, self.info = graph, tensors, info
        self.current = input_node          # the node holding the activation the next op must take
        self.ops: list[dict] = []
        self.sources: list[str] = []       # the node each op came from
        self.state: dict[str, torch.Tensor] = {}
        self.mean: list | None = None      # a leading (x - mean) / std
        self.std: list | None = None
        self.rows: list[dict] = info.setdefault("graph", [])
        self.errors: list[TargetError] = []
        self.aliases: dict = {}            # tuple-valued nodes (batch norm, pool with indices) -> output 0
        self.param_tail = None             # the node a BatchNorm may follow: a conv/linear (or its dropout)
        self.nested = False                # reading a branch of a residual block
        self.blocks: dict = {}             # join node -> graph_residual.Block (the top-level walk's)
        self.pending: dict = {}            # node between a fork and its join -> that Block

    # ------------------------------------------------------------------ helpers
    def const(self, arg):
        """The tensor a placeholder/get_attr stands for, else None."""
        if isinstance(arg, torch.fx.Node):
            return self.tensors.get(arg.name)
        return None

    def is_activation(self, arg) -> bool:
        return isinstance(arg, torch.fx.Node) and (arg is self.current or self.aliases.get(arg) is self.current)

    def row(self, node, status: str) -> None:
        self.rows.append({"node": node.name, "op": _full_name(node), "where": where(node),
                          "shape": list(_shape(node) or []), "read_as": status})

    def take(self, node, args) -> None:
        """``node`` must apply to the current activation (a plain chain)."""
        acts = [a for a in args if isinstance(a, torch.fx.Node) and self.const(a) is None
                and op_name(a) not in _BOOKKEEPING]
        if not acts or not self.is_activation(acts[0]):
            raise TargetError(f"{op_name(node)} at {where(node)} does not take the output of the op before it "
                              "(a branch in the graph); only a plain chain of layers is read")

    def push(self, node, op: dict) -> None:
        self.ops.append(op)
        self.sources.append(node.name)
        self.current = node
        self.param_tail = node if op["op"] in ("linear", "conv2d") else None

    # ------------------------------------------------------------------ the walk
    def walk(self) -> None:
        for node in self.graph.nodes:
            if node.op in ("placeholder", "get_attr"):
                continue
            if node.op == "output":
                flat = node.args[0]
                flat = list(flat) if isinstance(flat, (list, tuple)) else [flat]
                if len(flat) != 1 or not self.is_activation(flat[0]):
                    raise TargetError(f"the graph returns {len(flat)} value(s), not the output of its last layer; "
                                      "only a network with one output tensor is read")
                continue
            if node.op != "call_function":
                raise TargetError(f"{node.op} {node.target} at {where(node)}: the graph is not an ATen graph "
                                  "(export the model with torch.export)")
            block = self.pending.get(node)
            if block is not None and block.error is not None:
                self.row(node, f"refused: {block.error}")
                raise block.error
            if block is not None:
                continue            # a branch of a residual block: read at its add
            try:
                self.visit(node)
            except TargetError as exc:
                self.row(node, f"refused: {exc}")
                raise

    def visit(self, node) -> None:
        name = op_name(node)
        if name == "getitem":
            src, idx = node.args
            if src in self.aliases and idx == 0:
                self.aliases[node] = self.aliases[src]
                if self.current is src:
                    self.current = node
                self.row(node, "output 0 of the op before")
                return
            if src in self.aliases:
                self.row(node, "unused (statistics/indices)")
                return
            raise refuse_op(node)
        if name in _BOOKKEEPING:
            return
        block = self.blocks.get(node)
        if block is not None:
            if block.error is not None:
                raise block.error
            self._residual(node, block)
            return
        if name in ("add", "add_"):
            raise refuse_op(node, "only a skip add of two branches computed by the network (a residual block) "
                                  "is read, not an add of a constant")
        kind = GRAPH_OPS.get(name)
        if kind is None:
            raise refuse_op(node)
        getattr(self, f"_{kind}")(node)

    # ------------------------------------------------------------------ residual blocks
    def _residual(self, node, block) -> None:
        """The skip add ``node``: each branch from the fork read as an op list, the identity or 1x1
        projection as the shortcut, emitted as one ``residual`` op (docs/cnn.md)."""
        self.take(node, [block.fork])
        subs = [self._branch(nodes, block.fork, operand) for nodes, operand in zip(block.branches, node.args[:2])]
        s = pick_shortcut([sub.ops for sub in subs], node)
        body, shortcut = subs[1 - s], subs[s]
        idx = len(self.ops)
        for role, sub in (("body", body), ("shortcut", shortcut)):
            for key, value in sub.state.items():
                self.state[f"{idx}.{role}.{key}"] = value
        self.push(node, {"op": "residual", "body": body.ops, "shortcut": shortcut.ops})
        what = "identity" if not shortcut.ops else f"1x1 conv2d {shortcut.sources[0]}"
        self.row(node, f"residual (from {block.fork.name}: body {len(body.ops)} ops, shortcut {what})")

    def _branch(self, nodes, fork, operand) -> "_Reader":
        """The ops of one branch of a residual block: ``nodes`` read from ``fork`` to ``operand``."""
        sub = _Reader(self.graph, self.tensors, fork, self.info)
        sub.graph_input, sub.nested = self.graph_input, True
        for n in nodes:
            if op_name(n) in _BOOKKEEPING:
                continue
            try:
                sub.visit(n)
            except TargetError as exc:
                sub.row(n, f"refused: {exc}")
                raise
        if not sub.is_activation(operand):
            raise TargetError(f"the branch of the add at {where(operand)} does not end at the add's operand")
        return sub

    # ------------------------------------------------------------------ op by op
    def _linear(self, node) -> None:
        self.take(node, node.args[:1])
        w, b = self.const(node.args[1]), self.const(node.args[2]) if len(node.args) > 2 else None
        if w is None or w.dim() != 2:
            raise refuse_op(node, "the weight of a linear layer must be a parameter of the model (a 2-D tensor)")
        self._weights(node, w, b, {"op": "linear", "in_features": int(w.shape[1]), "out_features": int(w.shape[0]),
                                   "bias": b is not None})

    def _conv2d(self, node) -> None:
        self.take(node, node.args[:1])
        a = list(node.args) + [None] * 9
        w, b = self.const(a[1]), self.const(a[2])
        if w is None or w.dim() != 4:
            raise refuse_op(node, "only 2-D convolutions with a parameter weight (4-D) are read")
        name = op_name(node)
        if name == "conv2d":
            stride, padding, dilation, groups, transposed = a[3] or 1, a[4] or 0, a[5] or 1, a[6] or 1, False
        else:     # convolution(x, w, b, stride, padding, dilation, transposed, output_padding, groups)
            stride, padding, dilation, transposed, groups = a[3], a[4], a[5], bool(a[6]), a[8]
        if transposed:
            raise refuse_op(node, "transposed convolution is not supported")
        pair = lambda v: [int(v), int(v)] if isinstance(v, int) else [int(t) for t in v] * (2 if len(v) == 1 else 1)  # noqa: E731
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            elif any(k % 2 == 0 for k in w.shape[2:]):
                raise refuse_op(node, "padding='same' with an even kernel pads asymmetrically")
            else:
                padding = [(k - 1) // 2 for k in w.shape[2:]]
        if pair(dilation) != [1, 1]:
            raise refuse_op(node, f"dilation {pair(dilation)} is not supported (only 1)")
        if int(groups) != 1:
            raise refuse_op(node, f"groups={groups} (grouped/depthwise convolution) is not supported")
        self._weights(node, w, b, {"op": "conv2d", "in_channels": int(w.shape[1]), "out_channels": int(w.shape[0]),
                                   "kernel": list(w.shape[2:]), "stride": pair(stride), "padding": pair(padding),
                                   "bias": b is not None})

    def _weights(self, node, w, b, op: dict) -> None:
        idx = len(self.ops)
        self.state[f"{idx}.weight"] = w.detach()
        if b is not None:
            self.state[f"{idx}.bias"] = b.detach()
        self.push(node, op)
        self.row(node, op["op"])

    def _relu(self, node) -> None:
        self.take(node, node.args[:1])
        self.push(node, {"op": "relu"})
        self.row(node, "relu")

    def _maxpool2d(self, node) -> None:
        self._pool(node, "maxpool2d")

    def _avgpool2d(self, node) -> None:
        self._pool(node, "avgpool2d")

    def _pool(self, node, kind: str) -> None:
        self.take(node, node.args[:1])
        a = list(node.args) + [None] * 7
        pair = lambda v: [int(v), int(v)] if isinstance(v, int) else [int(t) for t in v] * (2 if len(v) == 1 else 1)  # noqa: E731
        kernel = pair(a[1])
        stride = pair(a[2]) if a[2] else list(kernel)
        if a[3] and pair(a[3]) != [0, 0]:
            raise refuse_op(node, f"pool padding {pair(a[3])} is not supported (only 0)")
        if kind == "maxpool2d":
            if a[4] and pair(a[4]) != [1, 1]:
                raise refuse_op(node, f"pool dilation {pair(a[4])} is not supported (only 1)")
            if a[5]:
                raise refuse_op(node, "ceil_mode=True is not supported (only floor mode)")
        else:
            if a[4]:
                raise refuse_op(node, "ceil_mode=True is not supported (only floor mode)")
            if a[6] is not None:
                raise refuse_op(node, f"divisor_override={a[6]} is not supported")
        if op_name(node) == "max_pool2d_with_indices":
            self.aliases[node] = node
        self.push(node, {"op": kind, "kernel": kernel, "stride": stride})
        self.row(node, kind)

    def _adaptive(self, node) -> None:
        """Adaptive average pooling to an output size that divides the input: an exact avgpool2d."""
        self.take(node, node.args[:1])
        before, out = _shape(node.args[0]), node.args[1]
        out = [int(out), int(out)] if isinstance(out, int) else [int(v) for v in out]
        if before is None or len(before) != 4 or any(not isinstance(n, int) or n % o for n, o in zip(before[2:], out)):
            raise refuse_op(node, f"adaptive pooling from {list(before or [])} to {out} is not an exact "
                                  "average pool (the input size must be a multiple of the output size)")
        kernel = [n // o for n, o in zip(before[2:], out)]
        self.push(node, {"op": "avgpool2d", "kernel": kernel, "stride": list(kernel)})
        self.row(node, f"avgpool2d (adaptive, kernel {kernel[0]}×{kernel[1]})")

    def _reshape(self, node) -> None:
        self.take(node, node.args[:1])
        before, after = _shape(node.args[0]), _shape(node)
        if before is None or after is None:
            raise refuse_op(node, "its shapes are not recorded in the graph")
        same = after == before or after[1:] == before[1:]
        if same:
            self.current = node
            self.row(node, "identity (same shape)")
            return
        flat = len(after) == 2 and len(before) >= 2 and all(isinstance(s, int) for s in before[1:]) \
            and after[1] == math.prod(before[1:])
        if not flat or len(before) != 4:
            raise refuse_op(node, f"a reshape from {list(before)} to {list(after)}: only flattening N×C×H×W "
                                  "to N×(C·H·W) is read")
        self.push(node, {"op": "flatten"})
        self.row(node, "flatten")

    def _batchnorm(self, node) -> None:
        self.take(node, node.args[:1])
        a = list(node.args)
        if op_name(node) == "batch_norm":
            gamma, beta, mean, var, training, eps = a[1], a[2], a[3], a[4], a[5], a[7]
        else:   # _native_batch_norm_legit_no_training(x, weight, bias, running_mean, running_var, momentum, eps)
            gamma, beta, mean, var, training, eps = a[1], a[2], a[3], a[4], False, a[6]
            self.aliases[node] = node
        if training:
            raise refuse_op(node, "BatchNorm in training mode (batch statistics) cannot be folded; call "
                                  "model.eval() before exporting")
        rm, rv = self.const(mean), self.const(var)
        if rm is None or rv is None:
            raise refuse_op(node, "BatchNorm without running statistics cannot be folded")
        prev = self.ops[-1] if self.ops else None
        if prev is None or self.param_tail is None or self.current is not self.param_tail:
            raise refuse_op(node, "only a BatchNorm right after a Conv2d/Linear can be folded into it")
        idx = len(self.ops) - 1
        w, b = self.state[f"{idx}.weight"], self.state.get(f"{idx}.bias")
        w2, b2 = fold_bn_tensors(w, b, rm, rv, self.const(gamma), self.const(beta), float(eps))
        self.state[f"{idx}.weight"], self.state[f"{idx}.bias"] = w2, b2
        prev["bias"] = True
        self.current, self.param_tail = node, None     # a second BatchNorm in a row is refused
        self.row(node, f"BatchNorm folded into {self.sources[idx]} (eps {float(eps):g})")

    def _dropout(self, node) -> None:
        self.take(node, node.args[:1])
        train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", True)
        if train:
            raise refuse_op(node, "dropout is active (train=True, F.dropout's default training=True); pass "
                                  "training=self.training and call model.eval()")
        self._pass(node, "skipped (dropout in eval mode)")

    def _identity(self, node) -> None:
        self.take(node, node.args[:1])
        self._pass(node, "skipped (identity)")

    def _skip(self, node) -> None:
        return

    def _pass(self, node, status: str) -> None:
        if self.param_tail is not None and self.param_tail is self.current:
            self.param_tail = node
        self.current = node
        self.row(node, status)

    def _sub(self, node) -> None:
        self._normalize(node, "mean")

    def _div(self, node) -> None:
        self._normalize(node, "std")

    def _normalize(self, node, which: str) -> None:
        """A leading ``(x - mean) / std``: per-channel constants before any layer."""
        self.take(node, node.args[:1])
        other = node.args[1]
        value = self.const(other) if isinstance(other, torch.fx.Node) else other
        if self.ops or self.nested or value is None or (which == "mean" and self.std is not None) or \
                getattr(self, which) is not None or len(node.args) > 2 or node.kwargs:
            raise refuse_op(node, "only a leading (x - mean) / std before the first layer is read "
                                  "(as the input preprocessing)")
        shape = _shape(self.graph_input)
        channels = shape[1] if shape and len(shape) == 4 else 1
        t = torch.as_tensor(value, dtype=torch.float64).flatten()
        if t.numel() == 1:
            t = t.repeat(channels)
        if t.numel() != channels:
            raise refuse_op(node, f"a {which} of {t.numel()} values for an input of {channels} channel(s)")
        if which == "std" and not bool((t > 0).all()):
            raise refuse_op(node, "a division by a non-positive std")
        # a float32 constant as the decimal it was written as (0.1307, not 0.13070000708)
        src = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        if src.dtype == torch.float32:
            t = torch.tensor([float(str(np.float32(v))) for v in t.tolist()], dtype=torch.float64)
        setattr(self, which, [float(v) for v in t])
        self._pass(node, f"input preprocessing ({'subtract mean' if which == 'mean' else 'divide by std'})")


def read_graph(graph, tensors: dict, input_node, info: dict | None = None):
    """``(arch, state, input_shape, preprocessing)`` of the ATen graph ``graph`` whose placeholder
    ``input_node`` is the network's input and whose other placeholders are ``tensors``
    (placeholder name -> tensor). Raises :class:`TargetError` (one line, naming the op and where)
    for anything outside the vocabulary; ``info['graph']`` holds the nodes seen, also then."""
    info = {} if info is None else info
    shape = _shape(input_node)
    if shape is None or len(shape) not in (2, 4) or not all(isinstance(s, int) for s in shape[1:]):
        raise TargetError(f"the graph's input {input_node.name} has shape {shape}; expected N×C×H×W or N×D "
                          "with known sizes")
    r = _Reader(graph, tensors, input_node, info)
    r.graph_input = input_node
    r.blocks = find_blocks(graph, lambda n: n.name in tensors or (n.op in ("placeholder", "get_attr")
                                                                   and n is not input_node))
    r.pending = {n: b for b in r.blocks.values() for n in b.region}
    r.walk()
    input_shape = tuple(int(s) for s in shape[1:])
    if not r.ops:
        raise TargetError("the graph has no conv2d or linear layer")
    arch = r.ops
    try:
        check_arch(arch, input_shape)
    except TargetError as exc:
        named = re.sub(r"layer (\d+) \((\w+)\)",
                       lambda m: f"layer {m.group(1)} ({m.group(2)}, node {r.sources[int(m.group(1))]})"
                       if int(m.group(1)) < len(r.sources) else m.group(0), str(exc))
        raise TargetError(f"the graph read is not a network of the supported class: {named}") from None
    prep = None
    if r.mean is not None or r.std is not None:
        n = len(r.mean or r.std)
        prep = Preprocessing(mean=tuple(r.mean or [0.0] * n), std=tuple(r.std or [1.0] * n))
    info["graph_arch"] = arch
    return arch, r.state, input_shape, prep


def read_exported(ep, info: dict | None = None):
    """:func:`read_graph` of an ``ExportedProgram``: parameters, buffers and constants from its
    state dict, the one user input as the network's input."""
    info = {} if info is None else info
    sig = ep.graph_signature
    fqn = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
           **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    values = {**ep.state_dict, **getattr(ep, "constants", {})}
    tensors = {}
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in fqn:
            t = values.get(fqn[node.name])
            if isinstance(t, torch.Tensor):
                tensors[node.name] = t.detach()
    users = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in set(sig.user_inputs)]
    if len(users) != 1:
        raise TargetError(f"the exported program takes {len(users)} inputs; only a network of one input "
                          "tensor is read")
    info["graph_input"] = {"node": users[0].name, "shape": list(_shape(users[0]) or [])}
    return read_graph(ep.graph, tensors, users[0], info)
