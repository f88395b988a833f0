"""`subsetsum-lth compare`: compare masks of several runs on the same random network."""
from __future__ import annotations

from subsetsum_lth.commands._common import bound_text, print_json, scale_text
from subsetsum_lth.commands._progress import progress_factory
from subsetsum_lth.compare import compare_runs
from subsetsum_lth.request import CompareRequest

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


#: the request `run` takes (subsetsum_lth.request)
REQUEST = CompareRequest


def add_arguments(p) -> None:
    CompareRequest.add_arguments(p)


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


def run(req: CompareRequest) -> int:

    # the target the flags describe (loaded here when they say how), else the --target path as is
    target = req.load() if req.target_flags_given() else req.target
    result = compare_runs(list(req.runs), req.out, target=target,
                          data_dir=None if req.data_dir is None else str(req.data_dir),
                          device=req.device, test_subset=req.test_subset,
                          labels=None if req.label is None else list(req.label),
                          plots=req.plots, dataset=req.data,
                          progress=progress_factory(not req.json, unit="batch"))
    if req.json:
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
    print(f"wrote {req.out}")
    return 0
