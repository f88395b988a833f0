"""The edge-popup run folder (DESIGN §5, the format of ``approximate``'s): the output folder's
preparation, the report and metrics, and writing ``random_net.safetensors``, ``masks.safetensors``,
``target.safetensors``, ``metrics.csv``, ``report.json`` and the training curve."""
from __future__ import annotations

import logging
import math
import resource
import time
from pathlib import Path

import numpy as np
import torch

from subsetsum_lth import __version__, manifest
from subsetsum_lth import runfolder as rf
from subsetsum_lth.edge_popup.config import METHOD, EdgePopupConfig
from subsetsum_lth.edge_popup.network import EdgePopupNet, module_names
from subsetsum_lth.edge_popup.plots import plot_curve
from subsetsum_lth.edge_popup.sources import RandomNet, _plan_entries
from subsetsum_lth.errors import RunFolderError
from subsetsum_lth.layerkinds import arch_of
from subsetsum_lth.preprocess import report as preprocess_report
from subsetsum_lth.runwriter import write_run as write_folder

log = logging.getLogger(__name__)


def prepare_out(out: Path, overwrite: bool, sources: list[Path], need_state: dict | None = None) -> None:
    out = Path(out)
    for s in sources:
        if s is not None and out.resolve() == Path(s).resolve().parent:
            raise RunFolderError(f"--out {out} is the folder the random network comes from; "
                                 "write the edge-popup run to another folder")
    # --out must be new, empty, or an edge-popup run folder written by the tool (manifest.json);
    # it is locked until run_edge_popup() returns; --overwrite removes only the listed files
    need = 2 * sum(int(t.nbytes) for t in (need_state or {}).values()) + (1 << 20)
    writer = manifest.open_folder(out, "edge-popup", overwrite=overwrite, need_bytes=need)
    existing = [p for p in (out / rf.REPORT, out / rf.MASKS) if p.exists()]
    if existing and not overwrite:
        writer.close()
        raise RunFolderError(f"{out} already holds a run ({', '.join(p.name for p in existing)}); "
                             "use --overwrite to replace it, or another --out")


def _versions() -> dict:
    import platform

    return {"subsetsum_lth": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__}


def network_sizes(model: EdgePopupNet) -> list[int]:
    """[inputs, outputs of each parametric layer] (channels for a conv layer)."""
    return [model_input_dim(model)] + [s[0] for s in model.shapes]


def model_input_dim(model: EdgePopupNet) -> int:
    if model.input_shape is not None:
        return int(np.prod(model.input_shape))
    return model.shapes[0][1]


def image_fields(net: RandomNet) -> dict:
    """report.json's description of an image network (what ``read_run`` validates): the target's
    architecture and input shape and g's architecture; {} for an MLP."""
    if not net.is_image:
        return {}
    lay = net.layout
    out = {"target_arch": lay.graph if lay.graph is not None else arch_of(list(lay.kinds), [list(a) for a in lay.after]),
           "input_shape": list(lay.input_shape), "g_arch": lay.ops()}
    if net.input_radius is not None:
        # the source run's radius: compare certifies structured masks on the same input ball
        # (the MNIST radius would be wrong for images of another size)
        out["input_radius"] = float(net.input_radius)
    return out


def header(model: EdgePopupNet, net: RandomNet, config: EdgePopupConfig, device_name: str,
            n_train: int, n_test: int) -> dict:
    """What a run is about to do, for ``on_start``."""
    layers = []
    for j, (o, i) in enumerate(model.shapes):
        tw, tb = model.tensors[2 * j], model.tensors[2 * j + 1]
        layers.append({"layer": j, "shape": [o, i], "total_parameters": tw.numel + tb.numel,
                       "eligible_parameters": tw.n_eligible + tb.n_eligible,
                       "kept_parameters": (tw.n_keep if tw.score >= 0 else 0) + (tb.n_keep if tb.score >= 0 else 0)})
    return {"sizes": network_sizes(model), "source": net.source,
            "total_parameters": sum(L["total_parameters"] for L in layers),
            "eligible_parameters": model.n_eligible, "keep": float(config.keep), "scope": config.scope,
            "structure": config.structure, "inner_relu": bool(config.inner_relu), "layers": layers,
            "kept_parameters": (sum(L["kept_parameters"] for L in layers) if config.scope == "layer"
                                else model.n_keep_global),
            "epochs": int(config.epochs), "steps_per_epoch": math.ceil(n_train / int(config.batch_size)),
            "train_examples": n_train, "test_examples": n_test, "lr": float(config.lr),
            "batch_size": int(config.batch_size), "seed": int(config.seed), "device_name": device_name}


def _layer_entries(model: EdgePopupNet, masks: dict) -> tuple[list[dict], list[dict], int, int]:
    """Per Linear layer: its report entry and metrics rows; then the kept and total parameters."""
    layers, metrics = [], []
    kept_total = 0
    total = 0
    for j, (o, i) in enumerate(model.shapes):
        tw, tb = model.tensors[2 * j], model.tensors[2 * j + 1]
        kw, kb = int(masks[tw.key].sum()), int(masks[tb.key].sum())
        entry = {
            "layer": j, "module_index": model.param_index[j], "shape": [o, i],
            "weight_parameters": tw.numel, "weight_eligible": tw.n_eligible, "weight_kept": kw,
            "bias_parameters": tb.numel, "bias_eligible": tb.n_eligible, "bias_kept": kb,
            "kept_parameters": kw + kb, "total_parameters": tw.numel + tb.numel,
            "eligible_parameters": tw.n_eligible + tb.n_eligible,
            "kept_fraction": (kw + kb) / (tw.numel + tb.numel),
            "kept_fraction_of_eligible": (kw + kb) / max(1, tw.n_eligible + tb.n_eligible),
            "compute": ("gather" if tw.sparse else "columns" if tw.col_subset is not None else "dense"),
        }
        if model.input_shape is not None:
            entry.update({"op": model.kinds[j], "weight_shape": list(tw.shape)})
        layers.append(entry)
        kept_total += kw + kb
        total += tw.numel + tb.numel
        for key in ("weight_kept", "bias_kept", "kept_parameters", "total_parameters", "eligible_parameters"):
            metrics.append({"layer": j, "metric": key, "value": entry[key]})
    return layers, metrics, kept_total, total


def build_report(config: EdgePopupConfig, net: RandomNet, model: EdgePopupNet, masks: dict, trained: dict,
                 evaluation: dict, test_acc: float, *, device_type: str, device_name: str, threads: int,
                 relu_after: list[bool], digest: str, n_train: int, n_test: int,
                 timings: dict) -> tuple[dict, list[dict]]:
    """(report.json's content, metrics.csv's rows) of a finished training. ``timings`` is kept by
    reference: what is added to it before the report is written is reported."""
    layers, metrics, kept_total, total = _layer_entries(model, masks)
    for c in trained["curve"]:
        for key in ("train_loss", "train_accuracy", "lr", "epoch_train_loss", "epoch_train_accuracy",
                    "test_accuracy", "epoch_seconds"):
            if key in c:
                metrics.append({"layer": "all", "epoch": c["epoch"], "step": c["step"], "metric": key,
                                "value": c[key]})
    epoch_seconds = trained["epoch_seconds"]
    report = {
        "method": METHOD,
        "keep": float(config.keep),
        "keep_rule": ("exactly ceil(keep * eligible) entries kept per scored tensor (weight and bias "
                      "ranked separately)" if config.scope == "layer" else
                      "exactly ceil(keep * eligible) entries kept over all scored tensors together"),
        "scope": config.scope,
        "structure": config.structure,
        "epochs": int(config.epochs),
        "lr": float(config.lr),
        "batch_size": int(config.batch_size),
        "momentum": float(config.momentum),
        "weight_decay": float(config.weight_decay),
        "schedule": "cosine (per step, to 0)",
        "weight_scaling": "none: the stored weights of g are used as they are (the temperature absorbs their scale)",
        "score_init": "kaiming-uniform (a=sqrt(5)): U[-1/sqrt(fan_in), 1/sqrt(fan_in)]",
        "seed": int(config.seed),
        "device": device_type,
        "device_name": device_name,
        "threads": threads,
        "topk_method": model.selection,
        "logit_temperature": trained["temperature"],
        "training_note": ("the training loss (curve) is CE(logits / logit_temperature); dividing by a "
                          "positive constant changes no prediction"),
        "source": net.source,
        "inner_relu": bool(config.inner_relu),
        "relu_after": relu_after,
        "modules": module_names(relu_after, net.ops()),
        **({} if config.inner_relu else {"architecture_note": (
            "no ReLU after the construction's layers 2i-1 (Linear layers 0, 2, 4, ... of the "
            "Sequential): rebuild g-hat as the Sequential in 'modules' (Identity where a ReLU would be), "
            "not as Sequential(Linear, ReLU, ..., Linear)") if not net.is_image else (
            "no ReLU after the first layer of each of the construction's pairs (the k×k Conv2d or first "
            "Linear of each pair): rebuild g-hat from 'g_arch' with Identity where 'relu_after' is false")}),
        **image_fields(net),
        "weights_sha256": digest,
        "sizes": network_sizes(model),
        "input_domain": net.input_domain,
        # the target's input op, which ĝ applies before g (as approximate's report records it)
        **({} if net.target is None else {"preprocessing": preprocess_report(net.target)}),
        "test_accuracy": float(test_acc),
        "train_accuracy": float(trained["final"]["epoch_train_accuracy"]),
        "final_train_loss": float(trained["final"]["epoch_train_loss"]),
        **evaluation,
        "kept_parameters": kept_total,
        "total_parameters": total,
        "eligible_parameters": model.n_eligible,
        "kept_fraction": kept_total / max(1, total),
        "layers": layers,
        "train_examples": n_train,
        "test_examples": n_test,
        "steps_per_epoch": trained["steps_per_epoch"],
        "epoch_seconds": epoch_seconds,
        "seconds_per_epoch": float(np.mean(epoch_seconds)),
        "train_seconds": timings["train"],
        "curve": trained["curve"],
        "timings": timings,
        "versions": _versions(),
    }
    if net.plans is not None:
        report["construction_plan"] = _plan_entries(net.plans)
    for key in ("test_accuracy", "kept_parameters", "total_parameters", "seconds_per_epoch"):
        metrics.append({"layer": "all", "metric": key, "value": report[key]})
    for key in ("target_accuracy", "prediction_agreement"):
        if key in report:
            metrics.append({"layer": "all", "metric": key, "value": report[key]})
    return report, metrics


def write_run(out: Path, config: EdgePopupConfig, net: RandomNet, masks: dict, report: dict,
              metrics: list[dict], digest: str, timings: dict, t_start: float) -> None:
    """Write the run folder's files through the one run writer (the report last) and close its
    manifest."""
    curve = report["curve"]
    meta = {"format": "subsetsum-lth-run", "method": METHOD, "seed": int(config.seed),
            "weights_sha256": digest}
    if net.is_image:     # as approximate's files: ĝ can be rebuilt from the two safetensors files
        meta.update({"g_arch": net.layout.ops(), "input_shape": list(net.layout.input_shape)})

    def plots():
        title = (f"edge-popup: keep {config.keep:g} ({config.scope}, {config.structure}"
                 f"{'' if config.inner_relu else ', no inner ReLU'}), "
                 f"test acc {100 * report['test_accuracy']:.2f}%")
        return [plot_curve(out, curve, title)]
    write_folder(out, masks=masks, meta=meta, report=report, metrics=metrics, t_start=t_start, timings=timings,
                 random_state=net.state if net.copy_from is None else None, random_copy_from=net.copy_from,
                 target=net.target if net.target_file is None else None, target_file=net.target_file,
                 plots=plots if config.plots else None, wall_metric=True)
