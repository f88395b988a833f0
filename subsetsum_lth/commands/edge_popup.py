"""`subsetsum-lth edge-popup`: search masks on a random network from data (the baseline)."""
from __future__ import annotations

from pathlib import Path

from subsetsum_lth.commands._common import float_range, int_range, non_negative_float, positive_float, print_json
from subsetsum_lth.limits import MAX_COUNT, MAX_EPOCHS, MAX_SEED

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


_count = int_range(1, MAX_COUNT * 100)   # 1e10: --param-budget's memory is checked by EdgePopupConfig


def _fraction(text: str) -> float:
    import argparse
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"the kept fraction must lie in (0, 1], got {text}")
    return v


def _train_subset(text: str):
    if text in ("auto", "all"):
        return None if text == "all" else text
    return _count(text)


def _temperature(text: str):
    if text in ("auto", "batch"):
        return text
    return positive_float(text)


def add_arguments(p) -> None:
    # every default is EdgePopupConfig's (written once, in the dataclass; tests/test_cli_config.py)
    from subsetsum_lth.edge_popup import EdgePopupConfig as E

    src = p.add_argument_group("random network (exactly one)")
    g = src.add_mutually_exclusive_group(required=True)
    g.add_argument("--from-run", type=Path, metavar="RUN",
                   help="a run folder: its random_net.safetensors (copied byte for byte)")
    g.add_argument("--from-target", type=Path, metavar="TARGET",
                   help="allocate the construction's random network for this target (as 'approximate')")
    g.add_argument("--wide", metavar="SIZES",
                   help="a plain random MLP, e.g. 784,1000,10, or 784,H,10 with --param-budget")
    src.add_argument("--param-budget", type=_count, default=E.param_budget, metavar="N",
                     help="--wide: H = the largest width with at most N parameters (biases counted)")
    src.add_argument("--wide-init", choices=("uniform", "normal", "kaiming-uniform"), default=E.wide_init,
                     help="--wide: weight distribution (uniform = U[-1, 1], g's distribution; "
                          "kaiming-uniform = U[±sqrt(6/fan_in)])")
    src.add_argument("--no-bias", dest="wide_bias", action="store_false", default=E.wide_bias,
                     help="--wide: zero biases (not scored)")
    src.add_argument("--block-width", type=_count, default=E.block_width,
                     help="--from-target: units per block m (default: Theorem 1's formula)")
    src.add_argument("--C", dest="C", type=positive_float, default=E.C,
                     help="--from-target: constant C of the width formula")
    src.add_argument("--eps", type=positive_float, default=E.eps,
                     help="--from-target: ε in the width formula")
    src.add_argument("--input-domain", choices=("nonnegative", "signed"), default=E.input_domain,
                     help="first layer's input domain for the structured pre-pruning (default: the run's "
                          "or the target's, else nonnegative as MNIST pixels are)")
    src.add_argument("--net-seed", type=int_range(0, MAX_SEED), default=E.net_seed,
                     help="seed of a freshly allocated random network (default: --seed)")

    e = p.add_argument_group("edge-popup")
    e.add_argument("--keep", type=_fraction, default=E.keep, metavar="K",
                   help="fraction of weights KEPT (exactly ceil(K*n) per tensor, or over all with --scope global)")
    e.add_argument("--scope", choices=("layer", "global"), default=E.scope, help="where the top-k is taken")
    e.add_argument("--structure", choices=("free", "structured"), default=E.structure,
                   help="structured: only edges of the construction's block-diagonal pre-pruning may be kept")
    e.add_argument("--epochs", type=int_range(1, MAX_EPOCHS), default=E.epochs,
                   help=f"passes over the (--train-subset) training images (default: {E.epochs}; with the CPU "
                        "subset, a budget of a few minutes)")
    e.add_argument("--lr", type=positive_float, default=E.lr,
                   help="initial learning rate of the scores (cosine to 0). hidden-networks uses 0.1 on "
                        "kaiming-scaled networks of moderate width; on g (U[-1, 1] weights, hidden widths "
                        "in the tens of thousands, loss on logits / T) 0.1 moves the scores of the wide "
                        "layers by about their own size per step, the top-k reshuffles and the network "
                        "ends switched off (loss ln 10); 0.02 learns")
    e.add_argument("--batch-size", type=_count, default=E.batch_size, help="mini-batch size")
    e.add_argument("--momentum", type=float_range(0.0, 0.999999, lo_open=False), default=E.momentum, help="SGD momentum")
    e.add_argument("--weight-decay", type=non_negative_float, default=E.weight_decay, help="weight decay on the scores")
    e.add_argument("--seed", type=int_range(0, MAX_SEED), default=E.seed, help="seeds score initialisation and shuffling")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default=E.device,
                   help="auto: CUDA when available, else CPU")
    e.add_argument("--threads", type=int_range(1, MAX_COUNT), default=E.threads, help="torch CPU threads (default: torch's; more than the CPU cores are capped to them, with a note)")
    e.add_argument("--data", choices=("mnist", "fashion-mnist"), default=E.data,
                   help="the data set to train and test on (default: the one the run or target records, "
                        "else mnist); one that contradicts the run's record is refused")
    e.add_argument("--data-dir", type=Path, default=E.data_dir,
                   help="folder with the MNIST (or Fashion-MNIST) IDX files")
    e.add_argument("--train-subset", type=_train_subset, default=E.train_subset, metavar="N",
                   help="train on the first N training images only; auto: 7680 (60 steps of 128) on CPU, "
                        "all 60000 on CUDA; all: every image")
    e.add_argument("--test-subset", type=_count, default=E.test_subset, metavar="N",
                   help="evaluate on the first N test images only")
    e.add_argument("--sync-every", type=_count, default=E.sync_every, metavar="STEPS",
                   help="read loss/accuracy back from the device every STEPS steps (progress bar; "
                        "default 50 on CUDA, 10 on CPU)")
    e.add_argument("--no-inner-relu", dest="inner_relu", action="store_false", default=E.inner_relu,
                   help="use the construction's layers 2i-1 linearly (no ReLU after Linear layers 0, 2, 4, "
                        "...; Pensia et al.'s Fig. 1c structure without ReLU); needs an even number of "
                        "Linear layers; for a CNN run the first (k×k) Conv2d of each pair is used linearly; "
                        "recorded in report.json ('inner_relu', 'modules')")
    e.add_argument("--temperature", type=_temperature, default=E.temperature, metavar="T",
                   help="train on CE(logits / T); auto: T = standard deviation of the initial masked "
                        "network's logits (U[-1, 1] networks have logits in the hundreds); batch: each "
                        "batch's own logit standard deviation; 1 = plain edge-popup")
    e.add_argument("--no-epoch-eval", dest="eval_every_epoch", action="store_false", default=E.eval_every_epoch,
                   help="evaluate the test accuracy only after the last epoch")

    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, required=True, help="run folder to write")
    o.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    o.add_argument("--no-plots", action="store_true", help="do not write the training-curve PNG")
    o.add_argument("--no-progress", action="store_true",
                   help="no progress output (a bar on a terminal, else a line every ~10 s)")
    o.add_argument("--json", action="store_true", help="print report.json to stdout")


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


def run(args) -> int:
    from subsetsum_lth.edge_popup import EdgePopupConfig, run_edge_popup

    config = EdgePopupConfig(
        from_run=args.from_run, from_target=args.from_target, wide=args.wide,
        param_budget=args.param_budget, wide_init=args.wide_init, wide_bias=args.wide_bias,
        block_width=args.block_width, C=args.C, eps=args.eps, input_domain=args.input_domain,
        net_seed=args.net_seed, keep=args.keep, scope=args.scope, structure=args.structure,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, momentum=args.momentum,
        weight_decay=args.weight_decay, seed=args.seed, device=args.device, threads=args.threads,
        data_dir=None if args.data_dir is None else str(args.data_dir), data=args.data,
        train_subset=args.train_subset, test_subset=args.test_subset, sync_every=args.sync_every,
        eval_every_epoch=args.eval_every_epoch, temperature=args.temperature, inner_relu=args.inner_relu,
        plots=not args.no_plots,
        overwrite=args.overwrite,
    )
    from subsetsum_lth.commands._progress import progress_factory, say

    def on_start(header: dict) -> None:
        for line in _header_lines(header):
            say(line)

    def on_epoch(point: dict) -> None:
        say(_epoch_line(point))

    # a bar on a terminal, else a plain line every ~10 s (loss, accuracy, time left) on stderr
    report = run_edge_popup(config, args.out, progress=progress_factory(not args.no_progress),
                            on_start=on_start, on_epoch=on_epoch)
    if args.json:
        print_json(report)
    else:
        _summary(report, args.out)
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
