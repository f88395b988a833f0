"""Compare masks on the same random network (subset-sum runs, edge-popup runs, ...).

For every run folder: MNIST test accuracy of ĝ, agreement with the target's predictions,
output deviation ‖f(x) − ĝ(x)‖₂ on the test images (max and mean; ĝ in float32 as deployed,
f in float64), the certified bound where one exists (``certify.layer_maps`` accepts the masks
only when they have the construction's form; otherwise "n/a" with the reason), kept
parameters per Linear layer, wall time and device. For every pair of runs and every Linear
layer (weight and bias together): the Jaccard index of the kept sets and the fraction of one
run's kept entries that the other keeps.

Masks of different random networks are refused: the tensors of every run's
``random_net.safetensors`` must have the same :func:`subsetsum_lth.netdigest.weights_digest`.
"""
from __future__ import annotations

import logging
import math
import time
from itertools import combinations
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from subsetsum_lth import runfolder as rf
from subsetsum_lth import manifest
from subsetsum_lth.api import load_run, random_module
from subsetsum_lth.certify import ball_set, certified_bound, flat_input, in_ball, layer_maps
from subsetsum_lth.data.mnist import input_radius, load_mnist
from subsetsum_lth.edge_popup import resolve_device
from subsetsum_lth.errors import RunFolderError, UserError
from subsetsum_lth.evaluation import bound_scale, class_margins
from subsetsum_lth.netdigest import short, weights_digest
from subsetsum_lth.preprocess import from_report, input_module
from subsetsum_lth.progress import advance, note, phase
from subsetsum_lth.target import Target, load_target
from subsetsum_lth.runcheck import choose_dataset, read_json

log = logging.getLogger(__name__)

JSON_FILE = "comparison.json"
CSV_FILE = "comparison.csv"
PLOT_FILE = "accuracy_vs_kept.png"
NA = "n/a"
#: test images per evaluation batch (small enough for a progress line every few seconds)
EVAL_BATCH = 1024


def _n_linear(state: dict) -> int:
    return len([k for k in state if k.endswith(".weight")])


def _param_index(state: dict, layout=None) -> list[int]:
    """The nn.Sequential index of each parametric layer of g."""
    return layout.param_indices() if layout is not None else [2 * j for j in range(_n_linear(state))]


def masked_sequential(state: dict, masks: dict, device="cpu", dtype=torch.float32,
                      relu_after=None, layout=None) -> nn.Sequential:
    """ĝ with every tensor times its mask, built by the one builder
    (:func:`subsetsum_lth.ops.module_from_ops`): Sequential(Linear, ReLU, ..., Linear) for an
    MLP, the layout's network (taking flat vectors) for an image network. ``relu_after`` (one
    bool per ReLU, default all True): False puts an ``nn.Identity`` where the ReLU would be
    (edge-popup's ``--no-inner-relu`` runs); the state_dict keys stay the same."""
    g = random_module({k: np.asarray(v) * (np.asarray(masks[k]) != 0) for k, v in state.items()},
                      dtype, relu_after, layout)
    g = g.to(device).requires_grad_(False)
    if layout is not None and layout.input_shape is not None:
        g = flat_input(g, layout.input_shape)
    return g


def _run_kind(report: dict) -> str:
    if report.get("method"):
        return str(report["method"])
    if "solver" in report:
        return "subset-sum"
    return "unknown"


def _describe(report: dict) -> str:
    kind = _run_kind(report)
    if kind == "edge-popup":
        return (f"edge-popup k={report.get('keep')} {report.get('scope')}/{report.get('structure')}"
                + ("" if report.get("inner_relu", True) else ", no ReLU after layers 2i-1"))
    if kind == "subset-sum":
        return f"subset-sum {report.get('solver')} τ={report.get('weight_eps')}"
    return kind


@torch.no_grad()
def _evaluate(g: nn.Module, target, x: torch.Tensor, y: torch.Tensor, batch: int = 4096, bar=None) -> dict:
    """Accuracy, agreement and deviation; ``_deviation`` (popped by the caller): per image ‖f − ĝ‖₂."""
    devs = []
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    agree = torch.zeros((), dtype=torch.int64, device=x.device)
    dev_max = torch.zeros((), dtype=torch.float64, device=x.device)
    dev_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        go = g(xb)
        gp = go.argmax(1)
        correct += (gp == yb).sum()
        if target is not None:
            fo = target.forward(xb.double())
            agree += (fo.argmax(1) == gp).sum()
            d = (fo - go.double()).norm(dim=1)
            dev_max = torch.maximum(dev_max, d.max())
            dev_sum += d.sum()
            devs.append(d.cpu())
        advance(bar)
    n = max(1, len(x))
    out = {"test_accuracy": int(correct) / n}
    if target is not None:
        out.update({"prediction_agreement": int(agree) / n, "max_output_deviation": float(dev_max),
                    "mean_output_deviation": float(dev_sum) / n,
                    "_deviation": torch.cat(devs) if devs else torch.zeros(0, dtype=torch.float64)})
    else:
        out.update({"prediction_agreement": NA, "max_output_deviation": NA, "mean_output_deviation": NA})
    return out


def _certificate(state: dict, masks: dict, target, report: dict, radius_fn, relu_after=None, layout=None) -> dict:
    """The certified bound if the masks have the construction's form, else n/a with the reason."""
    if target is None:
        return {"certified_bound": NA, "certified_reason": "no target (give --target)"}
    if relu_after is not None and not all(relu_after):
        return {"certified_bound": NA,
                "certified_reason": "the network is used without some ReLUs (--no-inner-relu); the "
                                    "certificate is for the construction's ReLU network"}
    n = _n_linear(state)
    if n % 2 or n // 2 != target.depth:
        return {"certified_bound": NA,
                "certified_reason": f"{n} Linear layers; the construction for a depth-{target.depth} "
                                    f"target has {2 * target.depth}"}
    try:
        maps = layer_maps(state, masks, layout if layout is not None else target.depth)
        if any(m.w_plus.shape != L.weight.shape for m, L in zip(maps, target.layers)):
            return {"certified_bound": NA, "certified_reason": "layer shapes do not match the target"}
        radius = report.get("input_radius") or radius_fn()
        domain = report.get("input_domain") or target.metadata.get("input_domain") or "nonnegative"
        cert = certified_bound(target, maps, float(radius), domain)
    except RunFolderError as exc:
        return {"certified_bound": NA, "certified_reason": str(exc)}
    return {"certified_bound": cert.bound, "certified_input_radius": float(radius),
            "certified_input_domain": domain, "certified_set": ball_set(float(radius), domain)}


def _set_figures(ev: dict, cert: dict, x: np.ndarray, margins: torch.Tensor | None) -> dict:
    """Where the certified bound and the measured deviation stand apart: how many test images lie
    in the certificate's set, the deviation over those alone, and the fraction of the test images
    on which the bound guarantees f's class (needs f's class margins)."""
    dev = ev.pop("_deviation", None)
    if not isinstance(cert.get("certified_bound"), float):
        return {}
    inside = in_ball(x, cert["certified_input_radius"], cert["certified_input_domain"])
    out = {"test_images_in_certified_set": int(inside.sum())}
    if dev is not None and len(dev) == len(inside):
        mask = torch.as_tensor(inside)
        out["max_output_deviation_in_certified_set"] = float(dev[mask].max()) if inside.any() else NA
    if margins is not None:
        ok = torch.as_tensor(inside) & (margins > cert["certified_bound"])
        out["certified_same_class_fraction"] = float(ok.double().mean())
    return out


def check_input_radius(path: Path, rep: dict, x_norm: float, radius_fn, data_set: bool) -> str | None:
    """Refuse (RunFolderError) a subset-sum run whose report.json input_radius is not the one
    run_config.json records, or (a run made with --data, its radius from the data) not the data
    set's largest ‖x‖₂; return why its certificate does not cover the images compared (a ball
    smaller than the largest of them), else None."""
    r = rep.get("input_radius")
    if "solver" not in rep or not isinstance(r, (int, float)) or isinstance(r, bool):
        return None
    where = f"{path / rf.REPORT}"
    cfg_path = path / "run_config.json"
    if cfg_path.exists():
        want = read_json(cfg_path).get("input_radius")
        if isinstance(want, (int, float)) and not math.isclose(r, want, rel_tol=1e-12):
            raise RunFolderError(f"{where}: input_radius {r:g}, but the run was made with {want:g} (run_config.json); "
                                 "the report was edited: recreate the run, or check it with 'subsetsum-lth certify'")
    src = rep.get("input_radius_source")
    if data_set and rep.get("data") is not None and src in (None, "data"):
        data_r = radius_fn()
        if (src == "data" and not math.isclose(r, data_r, rel_tol=1e-12)) or r < data_r * (1 - 1e-12):
            raise RunFolderError(f"{where}: input_radius {r:g}, but the {rep['data']} images it was made on give "
                                 f"{data_r:g} (their largest ‖x‖₂); the report was edited: recreate the run, or "
                                 "check it with 'subsetsum-lth certify'")
    if r < x_norm * (1 - 1e-12):
        return (f"the run's certificate is over the ball ‖x‖₂ ≤ {r:g}, which does not hold the images compared "
                f"(largest ‖x‖₂ {x_norm:.4g})")
    return None


def _kept_layers(state: dict, masks: dict, layout=None) -> list[dict]:
    out = []
    for j, idx in enumerate(_param_index(state, layout)):
        mw, mb = np.asarray(masks[f"{idx}.weight"]), np.asarray(masks[f"{idx}.bias"])
        kw, kb = int(np.count_nonzero(mw)), int(np.count_nonzero(mb))
        out.append({"layer": j, "shape": list(mw.shape), "weight_kept": kw, "bias_kept": kb,
                    "kept_parameters": kw + kb, "total_parameters": int(mw.size + mb.size)})
    return out


def _overlap(ma: dict, mb: dict, index: list[int]) -> tuple[list[dict], dict]:
    layers = []
    tot = np.zeros(4, dtype=np.int64)  # inter, union, |A|, |B|
    for j, idx in enumerate(index):
        inter = union = na = nb = 0
        for t in ("weight", "bias"):
            a = np.asarray(ma[f"{idx}.{t}"]) != 0
            b = np.asarray(mb[f"{idx}.{t}"]) != 0
            inter += int(np.count_nonzero(a & b))
            union += int(np.count_nonzero(a | b))
            na += int(np.count_nonzero(a))
            nb += int(np.count_nonzero(b))
        tot += (inter, union, na, nb)
        layers.append(_overlap_entry(j, inter, union, na, nb))
    return layers, _overlap_entry("all", *map(int, tot))


def _overlap_entry(layer, inter: int, union: int, na: int, nb: int) -> dict:
    return {"layer": layer, "intersection": inter, "union": union, "kept_a": na, "kept_b": nb,
            "jaccard": inter / union if union else NA,
            "a_kept_by_b": inter / na if na else NA,     # of A's kept entries, the fraction B keeps
            "b_kept_by_a": inter / nb if nb else NA}


def compare_runs(runs: list[str | Path], out: str | Path, target: str | Path | None = None,
                 data_dir=None, device: str = "auto", test_subset: int | None = None,
                 labels: list[str] | None = None, plots: bool = True, data: dict | None = None,
                 dataset: str | None = None, progress=None) -> dict:
    """Compare the masks of ``runs`` and write ``out`` (locked and listed in its manifest while
    this runs; see :mod:`subsetsum_lth.manifest`). See :func:`_compare_runs`. ``progress``: the
    stages are announced and shown (:mod:`subsetsum_lth.progress`)."""
    with manifest.session(out):
        return _compare_runs(runs, out, target, data_dir, device, test_subset, labels, plots, data, dataset,
                             progress)


@dataclass
class _Runs:
    """The runs to compare, read by the one validated reader, on one random network."""

    paths: list[Path]
    labels: list[str]
    state: dict
    digest: str
    layout: object
    masks: list = field(default_factory=list)
    reports: list = field(default_factory=list)
    relus: list = field(default_factory=list)
    targets: list = field(default_factory=list)
    recorded: list = field(default_factory=list)   #: per run: (data set or None, where recorded)
    dataset: str = "mnist"                          #: the data set the comparison uses


def _labels(runs: list[Path], labels: list[str] | None) -> list[str]:
    if not runs:
        raise UserError("compare needs at least one run folder")
    if labels is not None and len(labels) != len(runs):
        raise UserError(f"{len(labels)} labels for {len(runs)} runs")
    if labels is None:
        labels = [r.name or str(r) for r in runs]
        if len(set(labels)) != len(labels):
            labels = [str(r) for r in runs]
    return labels


def _read_runs(paths: list[Path], labels: list[str]) -> _Runs:
    """Every run through runcheck; refused unless all hold the same random weights (content hash)."""
    runs, digests = None, []
    for r in paths:
        run = load_run(r)          # the one validated reader (runcheck): layout, fields, relu_after
        d = weights_digest(run.random_state)
        digests.append(d)
        if runs is None:
            runs = _Runs(paths, labels, run.random_state, d, run.layout_)
        runs.masks.append(run.masks)
        runs.reports.append(run.report)
        runs.relus.append(run.relu_after)
        runs.targets.append(run.target)
        runs.recorded.append((run.data, run.data_source))
        del run
    if len(set(digests)) > 1:
        lines = "\n".join(f"  {lab} ({r}): weights sha256 {short(d)}…" for lab, r, d in zip(labels, paths, digests))
        raise UserError("these runs hold masks for different random networks, so their masks cannot be "
                        "compared:\n" + lines + "\nCompare only runs made on the same random_net.safetensors "
                        "(e.g. 'edge-popup --from-run RUN')")
    return runs


def _choose_target(target, runs: _Runs):
    """(target, where it came from, warnings): the given one, else the first run's."""
    if target is not None:
        tgt, src = (target, target.source) if isinstance(target, Target) else (load_target(target), str(target))
        return tgt, src, []
    for r, t in zip(runs.paths, runs.targets):
        if t is not None:
            tgt, src = t, str(r / rf.TARGET)
            break
    else:
        return None, None, []
    ref = weights_digest(tgt.state_dict())
    warnings = [f"{r / rf.TARGET} differs from {src}; {src} is used" for r, t in zip(runs.paths, runs.targets)
                if t is not None and str(r / rf.TARGET) != src and weights_digest(t.state_dict()) != ref]
    return tgt, src, warnings


def _dataset(runs: _Runs, given: str | None = None) -> str:
    """The data set the runs were made on (report.json 'data', else their target's metadata):
    ``given`` (``--data``) must agree with it, and runs made on different data sets are
    refused; with nothing recorded, ``given`` or MNIST (with a logged note)."""
    made = {}
    for path, (name, source) in zip(runs.paths, runs.recorded):
        if name is not None:
            made.setdefault(name, (path, source))
    if len(made) > 1:
        (a, (pa, _)), (b, (pb, _)) = list(made.items())[:2]
        raise UserError(f"run {pa} was made on {a} but run {pb} on {b}; compare runs made on one data set")
    if made:
        name, (path, source) = next(iter(made.items()))
        return choose_dataset(given, name, source, f"run {path}")
    return choose_dataset(given, None, runs.recorded[0][1], f"run {runs.paths[0]}")


def _test_data(data, data_dir, test_subset, runs: _Runs, tgt):
    if data is None:
        x, y = load_mnist("test", data_dir, dataset=runs.dataset)
    else:
        x, y = data["x"], data["y"]
    if test_subset is not None:
        x, y = x[:test_subset], y[:test_subset]
    x = np.asarray(x).reshape(len(x), -1)
    layout = runs.layout
    in_f = int(np.prod(layout.input_shape)) if layout is not None and layout.input_shape is not None \
        else int(np.asarray(runs.state["0.weight"]).shape[1])
    if x.shape[1] != in_f:
        raise UserError(f"the random network takes {in_f} inputs but the images have {x.shape[1]}")
    if tgt is not None and tgt.input_dim != in_f:
        raise UserError(f"the target takes {tgt.input_dim} inputs but the random network {in_f}")
    return x, y, in_f


def _entry(label, path: Path, mk, rep, relu, runs: _Runs, tgt, xt, yt, dev, radius_fn, progress=None,
           x=None, margins=None) -> dict:
    """Accuracy, agreement, deviation, certificate and kept parameters of one run's masks."""
    t = time.perf_counter()
    with phase(progress, f"{label}", f"ĝ on {len(xt):,} test images", total=-(-len(xt) // EVAL_BATCH),
               unit="batch") as bar:
        g = masked_sequential(runs.state, mk, dev, relu_after=relu, layout=runs.layout)
        prep = from_report(rep.get("preprocessing"))     # the run's input op (read_run checked it)
        if prep is not None:
            g = nn.Sequential(input_module(prep, xt.shape[1]).to(dev), g)
        ev = _evaluate(g, tgt, xt, yt, batch=EVAL_BATCH, bar=bar)
        del g
    cert = _certificate(runs.state, mk, tgt, rep, radius_fn, relu, runs.layout)
    if isinstance(cert.get("certified_bound"), float):
        note(progress, f"{label}: certified sup over {cert['certified_set']} of ‖f(x) − ĝ(x)‖₂ ≤ "
                       f"{cert['certified_bound']:.4g}")
    cert.update(_set_figures(ev, cert, x, margins))
    layers = _kept_layers(runs.state, mk, runs.layout)
    kept = sum(L["kept_parameters"] for L in layers)
    total = sum(L["total_parameters"] for L in layers)
    kind = _run_kind(rep)
    log.info("%s: accuracy %.4f, kept %s of %s", label, ev["test_accuracy"], f"{kept:,}", f"{total:,}")
    return {
        "label": label, "path": str(path.resolve()), "method": kind, "description": _describe(rep),
        **ev, **cert,
        "kept_parameters": kept, "total_parameters": total, "kept_fraction": kept / max(1, total),
        "layers": layers, "inner_relu": all(relu),
        "wall_seconds": rep.get("wall_seconds", NA),
        "device": rep.get("device_name") or rep.get("device") or ("cpu" if "solver" in rep else NA),
        "reported_test_accuracy": rep.get("test_accuracy", rep.get("pruned_accuracy", NA)),
        **({"keep": rep.get("keep"), "scope": rep.get("scope"), "structure": rep.get("structure"),
            "epochs": rep.get("epochs")} if kind == "edge-popup" else {}),
        **({"solver": rep.get("solver"), "weight_eps": rep.get("weight_eps"),
            "reported_certified_bound": rep.get("certified_bound")} if kind == "subset-sum" else {}),
        "evaluation_seconds": time.perf_counter() - t,
    }


def _csv_rows(entries: list[dict], pairs: list[dict]) -> list[dict]:
    rows = []
    for e in entries:
        for key in ("test_accuracy", "prediction_agreement", "max_output_deviation", "mean_output_deviation",
                    "certified_bound", "kept_parameters", "total_parameters", "kept_fraction",
                    "wall_seconds", "device", "method"):
            rows.append({"run": e["label"], "other": "", "layer": "all", "metric": key, "value": e[key]})
        for L in e["layers"]:
            for key in ("weight_kept", "bias_kept", "kept_parameters", "total_parameters"):
                rows.append({"run": e["label"], "other": "", "layer": L["layer"], "metric": key, "value": L[key]})
    for p in pairs:
        for L in p["layers"] + [p["total"]]:
            for key in ("jaccard", "a_kept_by_b", "b_kept_by_a", "intersection", "union"):
                rows.append({"run": p["a"], "other": p["b"], "layer": L["layer"], "metric": key, "value": L[key]})
    return rows


def _compare_runs(runs: list[str | Path], out: str | Path, target: str | Path | None = None,
                  data_dir=None, device: str = "auto", test_subset: int | None = None,
                  labels: list[str] | None = None, plots: bool = True, data: dict | None = None,
                  dataset: str | None = None, progress=None) -> dict:
    """Compare the masks of ``runs`` (same random network) and write comparison.json,
    comparison.csv and accuracy_vs_kept.png into ``out``. Returns the comparison.

    Raises UserError when the runs' random networks differ (by content hash of the weights).
    ``data``: optional {"x": float32 (N, p), "y": int64 (N,)} instead of the test set of the data
    set the runs record (MNIST or Fashion-MNIST). ``dataset`` (``--data``): the data set to use;
    one that contradicts the runs' record is refused (UserError, exit 2).
    """

    t_start = time.perf_counter()
    paths = [Path(r) for r in runs]
    labels = _labels(paths, labels)
    out = Path(out)
    # --out must be new, empty, or a compare folder written by the tool; refused before any work
    writer = manifest.open_folder(out, "compare", need_bytes=1 << 20)
    dev = resolve_device(device)
    # no announcement before the folders and the data are checked: bad input gets one line alone
    rs = _read_runs(paths, labels)
    if data is None or dataset is not None:
        rs.dataset = _dataset(rs, dataset)
    tgt, tgt_src, warnings = _choose_target(target, rs)
    x, y, in_f = _test_data(data, data_dir, test_subset, rs, tgt)
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32).to(dev)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.int64).to(dev)
    radius_cache: list[float] = []

    def radius_fn() -> float:
        if not radius_cache:
            radius_cache.append(input_radius(data_dir, dataset=rs.dataset))
        return radius_cache[0]

    # a stored radius the files contradict is refused before any work is announced
    x64 = np.asarray(x, dtype=np.float64)
    x_norm = float(np.sqrt(np.einsum("ij,ij->i", x64, x64).max())) if len(x64) else 0.0
    del x64
    covers = [check_input_radius(r, rep, x_norm, radius_fn, data is None) for r, rep in zip(paths, rs.reports)]
    target_accuracy = scale = margins = None
    if tgt is not None:
        with phase(progress, "target", f"f on {len(xt):,} test images (accuracy, ‖f(x)‖₂, class margins)"), \
                torch.no_grad():
            fo = [tgt.forward(xt[i:i + 4096].double()) for i in range(0, len(xt), 4096)]
            fo = torch.cat(fo) if fo else torch.zeros(0, 1, dtype=torch.float64)
            target_accuracy = int((fo.argmax(1) == yt).sum()) / max(1, len(xt))
            if len(fo):
                margins = class_margins(fo).cpu()
                scale = bound_scale(fo.norm(dim=1).cpu(), margins)
            del fo
    entries = [_entry(lab, r, mk, rep, relu, rs, tgt, xt, yt, dev, radius_fn, progress, x, margins)
               for lab, r, mk, rep, relu in zip(labels, paths, rs.masks, rs.reports, rs.relus)]
    for e, reason in zip(entries, covers):
        # the bound stays (it is sound on its own set, named in certified_set); the entry and the
        # warnings say that the set misses images compared (test_images_in_certified_set: how many)
        if reason is not None and e.get("certified_bound") != NA:
            e["certified_set_note"] = reason
            warnings.append(f"{e['label']}: {reason}")
    pairs = []
    for (ia, a), (ib, b) in combinations(enumerate(entries), 2):
        layers, total = _overlap(rs.masks[ia], rs.masks[ib], _param_index(rs.state, rs.layout))
        pairs.append({"a": a["label"], "b": b["label"], "layers": layers, "total": total})
    comparison = {
        "weights_sha256": rs.digest,
        "random_network_sizes": [in_f] + [int(np.asarray(rs.state[f"{j}.weight"]).shape[0])
                                          for j in _param_index(rs.state, rs.layout)],
        "target": tgt_src, "target_accuracy": target_accuracy if target_accuracy is not None else NA,
        "test_examples": int(len(xt)),
        **({"data": rs.dataset} if data is None or dataset is not None else {}),
        "device": dev.type,
        "deviation_note": "‖f(x) − ĝ(x)‖₂ over the test images; ĝ in float32, f in float64",
        "certified_note": "certified_bound is sup of ‖f(x) − ĝ(x)‖₂ over each run's certified_set, not over the "
                          "test images: test_images_in_certified_set says how many of them lie in it, "
                          "max_output_deviation_in_certified_set the deviation over those",
        **({"bound_scale": scale} if scale is not None else {}),
        "runs": entries,
        "pairs": pairs,
        "warnings": warnings,
    }
    rf.atomic_write_csv(out / CSV_FILE, _csv_rows(entries, pairs))
    if plots:
        note(progress, "writing the plot ...")
        try:
            comparison["plots"] = [plot_accuracy_vs_kept(out, entries, target_accuracy)]
        except Exception as exc:  # a plot must never cost the comparison
            log.warning("plot failed: %s", exc)
    comparison["wall_seconds"] = time.perf_counter() - t_start
    rf.atomic_write_json(out / JSON_FILE, comparison)
    writer.finish()
    return comparison


def plot_accuracy_vs_kept(out: Path, entries: list[dict], target_accuracy: float | None) -> str:
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    colours = {"subset-sum": "#4477aa", "edge-popup": "#ee6677"}
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in sorted({e["method"] for e in entries}):
        es = [e for e in entries if e["method"] == kind]
        ax.scatter([e["kept_parameters"] for e in es], [100 * e["test_accuracy"] for e in es],
                   color=colours.get(kind, "#228833"), label=kind, zorder=3)
        for e in es:
            ax.annotate(e["label"], (e["kept_parameters"], 100 * e["test_accuracy"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    if target_accuracy is not None:
        ax.axhline(100 * target_accuracy, color="#555555", ls="--", lw=1, label="target f")
    ax.axhline(10, color="#999999", ls=":", lw=1, label="chance (10 classes)")
    ax.set_xscale("log")
    ax.set_xlabel("kept parameters of g")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("masks on the same random network", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out) / PLOT_FILE
    rf.atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path.name


__all__ = ["compare_runs", "masked_sequential", "JSON_FILE", "CSV_FILE", "PLOT_FILE", "NA"]
