"""`subsetsum-lth edge-popup`: search masks on a random network from data (the baseline)."""
from __future__ import annotations

from pathlib import Path

from subsetsum_lth.commands._common import print_json
from subsetsum_lth.edge_popup import run_edge_popup
from subsetsum_lth.commands._progress import progress_factory, say
from subsetsum_lth.request import EdgePopupRequest

NAME = "edge-popup"
HELP = "learn a mask on a random network with edge-popup (Ramanujan et al. 2020), weights frozen"
DESCRIPTION = (
    "Edge-popup baseline: one score per weight (and per bias of a non-zero bias tensor) of the random "
    "network g, the mask = the top-k fraction of |score| (straight-through gradient to the scores), "
    "SGD with momentum on the scores only; no weight of g changes. --keep K is the fraction KEPT: "
    "with --scope layer every weight and every bias tensor keeps exactly ceil(K * n) of its n "
    "prunable entries (K read as the decimal given), with --scope global ceil(K * n) over all of "
    "them. --structure structured allows only the edges of the construction's block-diagonal "
    "pre-pruning (top-k among those). The random network comes from a run folder (--from-run, "
    "copied byte for byte), a target (--from-target, allocated as 'approximate' would) or a plain "
    "wide MLP (--wide 784,H,10 --param-budget N); a run or target with convolutions (CNN) gets scores on "
    "its conv kernels and linear weights alike, on images shaped by its input_shape. Writes a run "
    "folder in approximate's format "
    "(random_net.safetensors, masks.safetensors, report.json, metrics.csv, training_curve.png). "
    "Defaults against hidden-networks (Ramanujan et al.'s code): the same kaiming-uniform scores, "
    "per-layer top-k and SGD (momentum 0.9, weight decay 5e-4, cosine); g's weights used as stored "
    "(no fan-in rescaling: the temperature absorbs their scale); loss on logits / T (auto); lr 0.02 "
    "instead of 0.1 (g's very wide layers); a budget of one epoch of 7680 images on CPU, a few minutes.")


#: the request `run` takes (subsetsum_lth.request)
REQUEST = EdgePopupRequest


def add_arguments(p) -> None:
    # every default is EdgePopupConfig's (the options are generated from its fields; tests/test_cli_config.py)
    EdgePopupRequest.add_arguments(p)


def _header_lines(h: dict) -> list[str]:
    """The run's header: network, keep fraction, per-layer counts (printed before training)."""
    src = h["source"]
    where = src.get("path") or "wide MLP " + "-".join(map(str, src.get("sizes", [])))
    relu = "" if h.get("inner_relu", True) else ", no ReLU after layers 2i-1"
    lines = [f"edge-popup on {'-'.join(map(str, h['sizes']))} ({h['total_parameters']:,} parameters) from {where}",
             f"keep {h['keep']:g} ({h['scope']}, {h['structure']}{relu}): {h['kept_parameters']:,} of "
             f"{h['eligible_parameters']:,} prunable parameters kept"]
    for L in h["layers"]:
        lines.append(f"  layer {L['layer'] + 1} {L['shape'][0]}x{L['shape'][1]}: keeps "
                     f"{L['kept_parameters']:,} of {L['total_parameters']:,} ({L['eligible_parameters']:,} prunable)"
                     if h["scope"] == "layer" else
                     f"  layer {L['layer'] + 1} {L['shape'][0]}x{L['shape'][1]}: {L['total_parameters']:,} "
                     f"parameters ({L['eligible_parameters']:,} prunable)")
    lines.append(f"training: {h['epochs']} epoch(s) x {h['steps_per_epoch']:,} steps of {h['batch_size']} "
                 f"({h['train_examples']:,} training images), lr {h['lr']:g}, seed {h['seed']}, "
                 f"device {h['device_name']}; test on {h['test_examples']:,} "
                 f"{h.get('data') or ''}{' ' if h.get('data') else ''}images")
    return lines


def _epoch_line(c: dict) -> str:
    test = f", test acc {100 * c['test_accuracy']:.2f}%" if "test_accuracy" in c else ""
    return (f"epoch {c['epoch']}/{c['epochs']}: train loss {c['epoch_train_loss']:.4f}, train acc "
            f"{100 * c['epoch_train_accuracy']:.2f}%{test}, {c['epoch_seconds']:.1f} s")


def run(req: EdgePopupRequest) -> int:


    def on_start(header: dict) -> None:
        for line in _header_lines(header):
            say(line)

    def on_epoch(point: dict) -> None:
        say(_epoch_line(point))

    # a bar on a terminal, else a plain line every ~10 s (loss, accuracy, time left) on stderr
    report = run_edge_popup(req.config, req.out, progress=progress_factory(not req.no_progress),
                            on_start=on_start, on_epoch=on_epoch)
    if req.json:
        print_json(report)
    else:
        _summary(report, req.out)
    return 0


def _summary(r: dict, out: Path) -> None:
    src = r["source"]
    where = src.get("path") or "wide MLP " + "-".join(map(str, src.get("sizes", [])))
    print(f"edge-popup on {'-'.join(map(str, r['sizes']))} ({r['total_parameters']:,} parameters) from {where}")
    relu = "" if r.get("inner_relu", True) else ", no ReLU after layers 2i-1"
    print(f"keep {r['keep']:g} ({r['scope']}, {r['structure']}{relu}), {r['epochs']} epoch(s), lr {r['lr']:g}, "
          f"batch {r['batch_size']}, seed {r['seed']}, device {r['device_name']}")
    for L in r["layers"]:
        print(f"  layer {L['layer'] + 1} {L['shape'][0]}x{L['shape'][1]}: kept {L['kept_parameters']:,} of "
              f"{L['total_parameters']:,} ({L['eligible_parameters']:,} prunable)")
    line = f"test accuracy {100 * r['test_accuracy']:.2f}%" + (f" on {r['data']}" if r.get("data") else "")
    if "prediction_agreement" in r:
        line += (f" (target {100 * r['target_accuracy']:.2f}%, agreement with the target "
                 f"{100 * r['prediction_agreement']:.2f}%)")
    print(line)
    print(f"kept parameters: {r['kept_parameters']:,} of {r['total_parameters']:,}")
    print(f"time: {r['train_seconds']:.1f} s training with the test evaluations "
          f"({r['seconds_per_epoch']:.1f} s per epoch of steps), "
          f"{r['wall_seconds']:.1f} s wall in all (loading, training, evaluation, writing)   run folder: {out}")
