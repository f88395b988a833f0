"""``subsetsum-lth inspect FILE``: what the loader sees in a checkpoint, and what it refuses."""
from __future__ import annotations

import sys

from subsetsum_lth.assumptions import mismatch_warning, read_from, target_assumptions
from subsetsum_lth.certify import spectral_norm
from subsetsum_lth.errors import TargetError, UserError
from subsetsum_lth.data.mnist import load_mnist
from subsetsum_lth.preprocess import accuracy_warning, declared_accuracy, measure_accuracy
from subsetsum_lth.commands._common import print_json
from subsetsum_lth.request import InspectRequest
from subsetsum_lth.safetext import escape
from subsetsum_lth.target import load_target

HELP = ("show how a checkpoint or graph loads as a target: layers, order, shapes, norms, accuracy, "
        "or why it is refused")
DESCRIPTION = (
    "Load FILE as approximate would and print what the loader sees: the container and the entry "
    "holding the weights, any stripped prefix (module., model.), the Linear layers in forward order "
    "(state_dict keys, shapes, biases, dtype, spectral norms) and how that order was decided, the "
    "parameter count, metadata, the input preprocessing (declared or stored: an input op, or folded into layer 1), "
    "and with --data the test accuracy. A file the loader refuses is reported with the reason and "
    "the fix (exit 2). A graph (.pt2 torch.export archive, TorchScript file) is read op by op: the ops, "
    "their shapes and what each became (or why it is refused) are listed. From a state_dict ReLU is "
    "assumed between consecutive layers (a state_dict does not record activations) and the "
    "assumptions are listed.")


#: the request `run` takes (subsetsum_lth.request)
REQUEST = InspectRequest


def add_arguments(p) -> None:
    InspectRequest.add_arguments(p)


def inspect_file(path, layers=None, preprocessing=None, data=None, data_dir=None,
                 expected_accuracy=None, arch=None, fold_preprocessing=False) -> dict:
    """The loader's view of ``path`` as a dict; ``ok`` False with ``error`` when refused."""
    info: dict = {"file": str(path)}
    try:
        target = load_target(path, layers=layers, preprocessing=preprocessing, info=info,
                             arch=arch, fold_preprocessing=fold_preprocessing)
    except TargetError as exc:
        return {**info, "ok": False, "error": str(exc)}
    if target.is_mlp and "order" not in info:
        # a fully connected --arch (or stored architecture) is read as the plain MLP it is:
        # its layers are the architecture's linear ops, named by their index in it
        given = info.pop("arch", None) or []
        info["order"] = [str(i) for i, op in enumerate(given) if op.get("op") in ("linear", "conv2d")]
        info["order_from"] = ("the graph (the order it computes)" if info.get("read_from") == "graph"
                              else "the architecture (fully connected: read as a plain MLP)")
    by_name = {e["name"]: e for e in info.get("entries", [])}
    rows = []
    for i, (name, L) in enumerate(zip(info.get("order", []), target.layers)):
        e = by_name.get(name, {})
        rows.append({"layer": i + 1, "name": name, "keys": e.get("keys", []),
                     "shape": list(L.weight.shape), "bias": L.bias is not None,
                     "dtype": e.get("dtype"), "pruned": e.get("pruned", False),
                     "spectral_norm": spectral_norm(L.weight),
                     "relu_after": i < target.depth - 1})
    if not target.is_mlp:
        rows = [{"layer": i + 1, "name": str(idx), "kind": L.kind.name, "shape": list(L.tensor().shape),
                 "bias": L.bias is not None, "operator_norm_bound": L.kind.op_norm(L.weight)[0],
                 "relu_after": target.relu_after(i), "then": [op.name for op in target.ops_after(i)]}
                for i, (idx, L) in enumerate(zip(target.arch_indices(), target.layers))]
        info["arch"] = target.arch()
        info["input_shape"] = list(target.input_shape)
    graph = read_from(info) == "graph"
    out = {**info, "ok": True, "layers": rows, "sizes": target.sizes,
           "n_parameters": target.n_parameters, "has_bias": target.has_bias,
           "activation": "ReLU between layers (read from the graph)" if graph else
           "ReLU between layers (assumed: a state_dict does not record activations)",
           "read_from": read_from(info), "assumptions": target_assumptions(info, arch)}
    out.pop("entries", None)
    if data is not None:
        x, y = load_mnist("test", data_dir=data_dir, dataset=data)
        if target.input_dim != x.shape[1]:
            raise UserError(f"the target takes {target.input_dim} inputs but {data} images have {x.shape[1]}")
        acc = measure_accuracy(target, x, y)
        out["accuracy"] = {"data": f"{data} test", "inputs": "pixels/255 in [0, 1]", "value": acc}
        declared = declared_accuracy(target.metadata or {}, expected_accuracy)
        warn = accuracy_warning(acc, declared, target)
        if warn and out["assumptions"]:
            warn = mismatch_warning(acc, declared, out["assumptions"])
        if warn:
            out["warning"] = warn
    return out


def run(req: InspectRequest) -> int:
    info = inspect_file(req.target, layers=req.layers, arch=req.arch, preprocessing=req.preprocessing(),
                        data=req.data, data_dir=req.data_dir, expected_accuracy=req.expected_accuracy,
                        fold_preprocessing=bool(req.fold_preprocessing))
    if req.json:
        print_json(info)
    else:
        _print(info)
    if not info["ok"]:
        raise TargetError(info["error"])
    if info.get("warning"):
        print(f"warning: {escape(info['warning'])}", file=sys.stderr)
    return 0


def _out(line: str) -> None:
    """One line of the report; names, keys and metadata come from the file: terminal controls escaped."""
    print(escape(line))


def _print(info: dict) -> None:
    _out(f"file: {info['file']}" + (f" ({info['format']})" if info.get("format") else ""))
    if info.get("container"):
        where = f", weights under {info['weights_key']!r}" if info.get("weights_key") else ""
        other = f" (also: {', '.join(info['other_entries'])})" if info.get("other_entries") else ""
        _out(f"container: {info['container']}{where}{other}")
    if info.get("prefix_stripped"):
        _out(f"prefix stripped: {info['prefix_stripped']!r}")
    _print_graph(info)
    if not info["ok"]:
        for e in info.get("entries", []):
            _out(f"  {e['name']}: weight {tuple(e['shape'])}{' + bias' if e['bias'] else ''} {e['dtype']}")
        _out("loads: no (refused, see the error below)")
        return
    if info.get("arch"):
        how = "read from the graph" if info.get("read_from") == "graph" else "stored with the file or given by --arch"
        _out(f"architecture: input {'×'.join(map(str, info['input_shape']))} ({how})")
        for r in info["layers"]:
            _out(f"  {r['layer']}. [{r['name']}] {r['kind']:<7} {'×'.join(map(str, r['shape']))}"
                 f"{' + bias' if r['bias'] else ', no bias'}  ‖op‖₂≤{r['operator_norm_bound']:.4g}"
                 f"{', ReLU' if r['relu_after'] else ''}{''.join(', ' + t for t in r['then'])}")
        _out(f"network: {info['n_parameters']:,} parameters")
    else:
        _out(f"layer order: {info['order_from']}")
    for r in ([] if info.get("arch") else info["layers"]):
        keys = ", ".join(r["keys"])
        extra = " (weight_orig × weight_mask)" if r["pruned"] else ""
        _out(f"  {r['layer']}. {r['name']:<12} {r['shape'][0]}×{r['shape'][1]}"
             f"{' + bias' if r['bias'] else ', no bias'}  {r['dtype'] or ''}  ‖W‖₂={r['spectral_norm']:.4g}"
             f"{extra}" + (f"  [{keys}]" if keys else ""))
    if not info.get("arch"):
        _out(f"network: {'-'.join(map(str, info['sizes']))}, {info['n_parameters']:,} parameters, "
             f"{info['activation']}")
    pp = info.get("preprocessing") or {}
    if pp.get("declared"):
        state = ("folded into layer 1: the target takes pixels/255 in [0, 1]" if pp.get("folded")
                 else "applied as an input op in front of the network (it takes pixels/255 in [0, 1])")
        _out(f"input preprocessing: {pp['declared']}, {state}")
    else:
        _out("input preprocessing: none declared (inputs used as given; see --input-normalize)")
    meta = {k: v for k, v in (info.get("metadata") or {}).items()
            if k not in ("input_normalize", "input_scale", "preprocessing_folded")}
    if meta:
        _out("metadata: " + ", ".join(f"{k}={v}" for k, v in meta.items()))
    for i, a in enumerate(info.get("assumptions") or []):
        _out(("assumed (a state_dict records weights, not the computation): " if i == 0 else "         ") + a)
    if "accuracy" in info:
        a = info["accuracy"]
        _out(f"accuracy ({a['data']}, {a['inputs']}): {100 * a['value']:.2f}%")
    _out("loads: yes")


def _print_graph(info: dict) -> None:
    """The graph read from a .pt2/TorchScript file: every op, its output shape, what became of it."""
    rows = info.get("graph")
    if not rows:
        return
    shape = info.get("graph_input", {}).get("shape") or []
    _out(f"graph: input {'×'.join(map(str, shape))}, {len(rows)} op(s) ({info.get('format', 'graph')})")
    for r in rows:
        _out(f"  {r['node']:<14} {r['op']:<34} {'×'.join(map(str, r['shape'])):<14} -> {r['read_as']}"
             + (f"  [{r['where'].split('(module ', 1)[1].rstrip(')')}]" if "(module " in r["where"] else ""))
    if info.get("graph_preprocessing"):
        _out(f"input preprocessing in the graph: {info['graph_preprocessing']}")
