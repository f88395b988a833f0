"""What a target read from a state_dict assumes, said out loud.

A state_dict holds weights, not the computation: the loader assumes ReLU between layers, a layer
order (from nn.Sequential indices, registration order, shapes, ``--layers`` or ``--arch``) and no
input preprocessing unless one is declared. A network read from its graph (``.pt2``, TorchScript,
a live module) or written by ``train-target`` (which records its architecture) assumes none of
this. :func:`target_assumptions` lists them for the run's header and report.json;
:func:`mismatch_warning` names them, the activation first, when the accuracy measured is below the
expected one.
"""
from __future__ import annotations

ACTIVATION = ("activation: ReLU between consecutive layers (a state_dict does not record activations; a model "
              "with Tanh, LeakyReLU, GELU, ... is not this network: save it as a graph, "
              "torch.export.save(torch.export.export(model.eval(), (x,)), 'model.pt2'), and pass that file)")


def read_from(info: dict) -> str:
    """'graph' (a .pt2/TorchScript file or a live module), 'recorded' (a target that records its
    architecture: train-target), or 'state_dict'."""
    if info.get("read_from") == "graph":
        return "graph"
    meta = info.get("metadata") or {}
    if info.get("arch_from") == "recorded" or meta.get("format") == "subsetsum-lth-target":
        return "recorded"
    return "state_dict"


def target_assumptions(info: dict, arch_spec: str | None = None) -> list[str]:
    """The assumptions behind the target ``load_target(..., info=info)`` returned (empty for a
    graph or a target that records its architecture), the activation first."""
    if read_from(info) != "state_dict":
        return []
    out = [ACTIVATION]
    if arch_spec is not None:
        out.append(f"layer order, pooling and flatten: as --arch {arch_spec} says (a state_dict records "
                   "neither)")
    elif info.get("order"):
        how = info.get("order_from") or "the file"
        out.append(f"layer order: {', '.join(map(str, info['order']))} ({how}); a state_dict does not record "
                   "the forward pass")
    pp = info.get("preprocessing") or {}
    if pp.get("declared"):
        out.append(f"input preprocessing: {pp['declared']}, as declared (not recorded in the weights)")
    else:
        out.append("input preprocessing: none (the inputs are used as given: pixels/255 in [0, 1] with --data); "
                   "a model trained on normalised inputs needs --input-normalize MEAN,STD")
    return out


def header_line(info: dict, arch_spec: str | None = None) -> str | None:
    """The line a run from a state_dict starts with (None for a graph)."""
    items = target_assumptions(info, arch_spec)
    if not items:
        return None
    short = [items[0].split(" (")[0]] + [i.split(";")[0] for i in items[1:]]
    return "target read from a state_dict, assuming: " + "; ".join(short)


def mismatch_warning(measured: float, declared: tuple[float, str], assumptions: list[str]) -> str:
    """The accuracy-mismatch warning naming every assumption that could explain it, activation first."""
    listed = " ".join(f"({i + 1}) {a}" for i, a in enumerate(assumptions))
    return (f"the target scores {100 * measured:.2f}% on the test images, below the {100 * declared[0]:.2f}% of "
            f"{declared[1]}; the state_dict was read under assumptions that could explain it: {listed}")
