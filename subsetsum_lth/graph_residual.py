"""The structure of a traced ATen graph beyond a plain chain, for :mod:`subsetsum_lth.graph_reader`:
how a node is named in messages (:func:`op_name`, :func:`where`, :func:`node_shape`) and where the
graph forks and joins again (:func:`find_blocks`).

A *join* is a node that takes two or more tensors computed by the graph. The one join that is read
is a skip add ``add(a, b)`` (``aten.add.Tensor``/``add_``, no ``alpha``) whose operands descend from
one earlier value ``x`` (the *fork*) through two plain chains of single-input ops -- a residual block
(docs/cnn.md, "Residual networks"): the reader reads each chain as an op list and emits
``{"op": "residual", "body": [...], "shortcut": [...]}``. Every other join -- a concatenation, a
product, an add of three branches, a fork inside a branch (nested blocks), a value used by a third
branch -- is a :class:`Block` holding the one-line refusal naming the join node.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from subsetsum_lth.errors import TargetError

#: ops that are not the network's computation (shape queries, graph bookkeeping)
BOOKKEEPING = {"sym_size", "sym_numel", "sym_stride", "_assert_scalar", "sym_constrain_range_for_size",
               "_assert_tensor_metadata"}
_ADDS = ("add", "add_")
_CATS = ("cat", "concat", "concatenate", "stack", "hstack", "vstack")


def op_name(node) -> str:
    """``linear`` for ``aten.linear.default`` (the op's name, without namespace and overload)."""
    packet = getattr(node.target, "_overloadpacket", None)
    name = getattr(packet if packet is not None else node.target, "__name__", None) or str(node.target)
    return name.rsplit(".", 1)[-1]


def full_name(node) -> str:
    return str(node.target).replace("torch.ops.", "")


def where(node) -> str:
    """``node tanh (module act: Tanh)``: the node and the module it came from, when recorded."""
    stack = []
    for path, cls in (node.meta.get("nn_module_stack") or {}).values():
        cls = cls if isinstance(cls, str) else f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', cls)}"
        if not (cls.startswith("torch.") and "<locals>" in cls):   # torch's own wrappers (the TorchScript converter's)
            stack.append((path, cls))
    text = f"node {node.name}"
    if stack:
        path, cls = stack[-1]
        text += f" (module {path or '(root)'}: {cls.rsplit('.', 1)[-1]})"
    return text


def node_shape(node) -> tuple | None:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    shape = getattr(val, "shape", None)
    if shape is None:
        return None
    return tuple(int(s) if isinstance(s, int) or str(s).isdigit() else str(s) for s in shape)


@dataclass
class Block:
    """One join of the graph: a readable skip add (``fork``, the two branches' nodes in forward
    order, one per operand of the add) or, with ``error`` set, a join that is refused. ``region``:
    the nodes between the fork and the join, read (or refused) when the walk reaches them."""
    join: torch.fx.Node
    fork: torch.fx.Node | None = None
    branches: tuple = ((), ())
    region: list = field(default_factory=list)
    error: TargetError | None = None


def act_inputs(node, is_const: Callable) -> list:
    """The tensors computed by the graph that ``node`` takes (constants and bookkeeping left out)."""
    out: list = []

    def visit(a):
        if isinstance(a, torch.fx.Node):
            if not is_const(a) and op_name(a) not in BOOKKEEPING and a not in out:
                out.append(a)
        elif isinstance(a, (list, tuple)):
            for v in a:
                visit(v)
    for a in list(node.args) + list(node.kwargs.values()):
        visit(a)
    return out


def real_users(node) -> list:
    """The users of ``node`` that compute with it (not shape queries, not a tuple's unused outputs)."""
    return [u for u in node.users if op_name(u) not in BOOKKEEPING
            and not (op_name(u) == "getitem" and len(u.args) > 1 and u.args[1] != 0)]


def find_blocks(graph, is_const: Callable) -> dict:
    """join node -> :class:`Block` for every node of ``graph`` that takes two or more tensors
    computed by the graph, and for every add of two graph tensors."""
    blocks = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        acts = act_inputs(node, is_const)
        two = op_name(node) in _ADDS and sum(isinstance(a, torch.fx.Node) and not is_const(a)
                                             for a in node.args[:2]) == 2
        if len(acts) >= 2 or two:
            blocks[node] = _block(node, acts, is_const)
    return blocks


def _chain(node, is_const) -> list:
    """``node`` and its ancestors through single-input ops, up to the first node that takes no or
    several computed tensors (the graph's input, a join), included."""
    out = [node]
    while True:
        ins = act_inputs(out[-1], is_const)
        if len(ins) != 1 or ins[0] in out:
            return out
        out.append(ins[0])


def _block(node, acts: list, is_const) -> Block:
    name = op_name(node)
    chains = [_chain(a, is_const) for a in acts] or [[]]
    common = set(chains[0]).intersection(*map(set, chains[1:]))
    # the nodes after the fork (none known without a common ancestor: then refused at the join)
    region = [n for c in chains for n in c if n not in common] if common else []
    skip_add = name in _ADDS and len(node.args) == 2 and node.kwargs.get("alpha", 1) == 1
    if not skip_add or len(acts) != 2:
        what = "concatenation" if name in _CATS else f"a join of {len(acts)} computed tensors"
        return Block(node, region=region, error=TargetError(
            f"{what} ({full_name(node)}) at {where(node)}: only a skip add of two branches "
            "(a residual block, body + shortcut) joins branches in a network that is read"))
    a, b = node.args
    ca, cb = _chain(a, is_const), _chain(b, is_const)
    fork = next((n for n in ca if n in set(cb)), None)
    if fork is None:
        ends = [c[-1] for c in (ca, cb) if act_inputs(c[-1], is_const)]
        why = (f"a fork inside a branch (node {ends[0].name}; nested blocks are not read)" if ends
               else "its operands do not descend from one earlier value")
        return Block(node, error=_refuse(node, why))
    branches = (ca[:ca.index(fork)][::-1], cb[:cb.index(fork)][::-1])
    region = list(branches[0]) + list(branches[1])
    for branch in branches:
        for i, n in enumerate(branch):
            nxt = branch[i + 1] if i + 1 < len(branch) else node
            if real_users(n) != [nxt]:
                others = ", ".join(u.name for u in real_users(n) if u is not nxt)
                return Block(node, region=region, error=_refuse(
                    node, f"node {n.name} inside a branch is also used by {others} (a third branch)"))
    expected = {branch[0] if branch else node for branch in branches}
    extra = [u.name for u in real_users(fork) if u not in expected]
    if extra:
        return Block(node, region=region, error=_refuse(
            node, f"its fork {fork.name} also feeds {', '.join(extra)} (more than two branches)"))
    # a branch's tuple outputs that are not used (BatchNorm statistics) go with it
    region += [u for n in region for u in n.users if u not in real_users(n)]
    return Block(node, fork=fork, branches=branches, region=region)


def _refuse(node, why: str) -> TargetError:
    return TargetError(f"skip connection (add) at {where(node)}: {why}; only a residual block of two "
                       "branches from one value (body + identity or 1x1-conv shortcut) is read")


def is_projection(ops: list) -> bool:
    """Whether a branch's ops are one 1x1 conv2d (a projection shortcut, BatchNorm folded in)."""
    return len(ops) == 1 and ops[0]["op"] == "conv2d" and list(ops[0]["kernel"]) == [1, 1]


def pick_shortcut(branch_ops: list, node) -> int:
    """Which of the two branches (their op lists, in the add's operand order) is the shortcut: an
    identity (no op) first, else a 1x1 conv2d projection (the second operand on a tie); the other
    must hold a conv2d/linear. Refuses anything else in one line naming the add."""
    params = [sum(o["op"] in ("conv2d", "linear") for o in ops) for ops in branch_ops]
    empty = [k for k in (1, 0) if not branch_ops[k]]
    proj = [k for k in (1, 0) if is_projection(branch_ops[k])]
    shortcut = (empty + proj + [None])[0]
    if shortcut is None:
        kinds = " / ".join(",".join(o["op"] for o in ops) for ops in branch_ops)
        raise _refuse(node, f"neither branch is an identity or a 1x1 conv2d (+BatchNorm) shortcut ({kinds})")
    if not params[1 - shortcut]:
        raise _refuse(node, "its body (the branch other than the shortcut) has no conv2d/linear")
    return shortcut
