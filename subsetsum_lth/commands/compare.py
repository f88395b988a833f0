"""`subsetsum-lth compare`: compare masks of several runs on the same random network."""
from __future__ import annotations

from pathlib import Path

from subsetsum_lth.commands._common import bound_text, int_range, print_json, scale_text

NAME = "compare"
HELP = "compare masks of runs on the same random network (accuracy, agreement, deviation, overlap)"
DESCRIPTION = (
    "For run folders whose masks belong to the same random network (checked by a content hash of "
    "the weights; different networks are refused): MNIST test accuracy, agreement with the "
    "target's predictions, output deviation from the target (max/mean on the test images), the "
    "certified bound where the masks have the construction's form (else n/a), kept parameters "
    "per layer, per-layer mask overlap (Jaccard, and the fraction of one run's kept edges the "
    "other keeps), wall time and device. The target comes from --target, else from the first "
    "run folder holding target.safetensors. Writes comparison.json, comparison.csv and "
    "accuracy_vs_kept.png into --out.")


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folders to compare")
    p.add_argument("--out", type=Path, required=True, help="folder for comparison.json/.csv/.png")
    p.add_argument("--target", type=Path, default=None,
                   help="target file or folder (default: the first run's target.safetensors)")
    from subsetsum_lth.commands._target_args import add_layers_argument, add_preprocessing_arguments
    add_layers_argument(p)
    from subsetsum_lth.commands._target_args import add_arch_argument
    add_arch_argument(p)
    add_preprocessing_arguments(p, expected=False)
    p.add_argument("--label", action="append", default=None, metavar="NAME",
                   help="a name per run, in order (repeat the option; default: folder names)")
    p.add_argument("--data", choices=("mnist", "fashion-mnist"), default=None,
                   help="the test set to use (default: the one the runs record, else mnist); one that "
                        "contradicts the runs' record is refused")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder with the MNIST (or Fashion-MNIST) IDX files")
    p.add_argument("--test-subset", type=int_range(1, 10_000_000), default=None, metavar="N",
                   help="use the first N test images only")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where ĝ and f are evaluated")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG")
    p.add_argument("--json", action="store_true", help="print comparison.json to stdout")


def _fmt(v, pct=False, digits=4) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{100 * v:.2f}%" if pct else f"{v:.{digits}g}"
    return str(v)


def _certified_line(e: dict, n: int) -> str:
    """The certified bound with its set, and how that set relates to the test images the deviation is measured on."""
    if not isinstance(e.get("certified_bound"), float):
        return f"certified n/a ({e.get('certified_reason', 'no certificate')})"
    line = f"certified {bound_text(e['certified_bound'], e['certified_set'])}"
    inside = e.get("test_images_in_certified_set")
    if inside is None:
        return line
    if inside == n:
        line += f" (all {n:,} test images lie in this set)"
    elif inside == 0:
        line += (f" — a different set from the deviation's: none of the {n:,} test images lies in it, so the "
                 "bound says nothing about them")
    else:
        line += (f" — only {inside:,} of the {n:,} test images lie in this set (deviation max over those "
                 f"{_fmt(e.get('max_output_deviation_in_certified_set'))})")
    if "certified_same_class_fraction" in e:
        line += f"; it guarantees f's class on {100 * e['certified_same_class_fraction']:.2f}% of the test images"
    return line


def run(args) -> int:
    from subsetsum_lth.commands._target_args import preprocessing_from_args, target_flags_given
    from subsetsum_lth.commands._progress import progress_factory
    from subsetsum_lth.compare import compare_runs

    target = args.target
    if target_flags_given(args):
        from subsetsum_lth.errors import UserError
        from subsetsum_lth.target import load_target
        if target is None:
            raise UserError(f"{', '.join(target_flags_given(args))} describe a --target file; pass --target "
                            "or drop them")
        target = load_target(target, layers=args.layers, preprocessing=preprocessing_from_args(args),
                             arch=args.arch, fold_preprocessing=bool(args.fold_preprocessing))
    result = compare_runs(args.runs, args.out, target=target,
                          data_dir=None if args.data_dir is None else str(args.data_dir),
                          device=args.device, test_subset=args.test_subset, labels=args.label,
                          plots=not args.no_plots, dataset=args.data,
                          progress=progress_factory(not args.json, unit="batch"))
    if args.json:
        print_json(result)
        return 0
    print(f"random network {'-'.join(map(str, result['random_network_sizes']))}, weights sha256 "
          f"{result['weights_sha256'][:12]}…; target {result['target'] or 'none'} "
          f"(accuracy {_fmt(result['target_accuracy'], pct=True)}); {result['test_examples']:,} "
          f"{result.get('data', '')}{' ' if result.get('data') else ''}test images")
    scale = scale_text(result.get("bound_scale"), lead="to judge the deviations and bounds below")
    if scale:
        print(f"  {scale}")
    for e in result["runs"]:
        print(f"  {e['label']}: {e['description']}")
        print(f"    accuracy {_fmt(e['test_accuracy'], pct=True)}, agreement {_fmt(e['prediction_agreement'], pct=True)}, "
              f"deviation on the {result['test_examples']:,} test images max {_fmt(e['max_output_deviation'])} "
              f"mean {_fmt(e['mean_output_deviation'])}")
        print(f"    {_certified_line(e, result['test_examples'])}")
        per_layer = " / ".join(format(L["kept_parameters"], ",") for L in e["layers"])
        print(f"    kept {e['kept_parameters']:,} of {e['total_parameters']:,} "
              f"({per_layer} per layer), "
              f"wall {_fmt(e['wall_seconds'], digits=3)}s on {e['device']}")
    for pr in result["pairs"]:
        t = pr["total"]
        per = ", ".join(f"L{L['layer'] + 1} {_fmt(L['jaccard'], digits=3)}" for L in pr["layers"])
        print(f"  {pr['a']} vs {pr['b']}: Jaccard {_fmt(t['jaccard'], digits=3)} ({per}); "
              f"{_fmt(t['a_kept_by_b'], pct=True)} of {pr['a']}'s kept edges kept by {pr['b']}, "
              f"{_fmt(t['b_kept_by_a'], pct=True)} the other way")
    for w in result["warnings"]:
        print(f"warning: {w}")
    print(f"wrote {args.out}")
    return 0
