"""The one validated reader of a run folder (issue 11: a run folder is checked, not trusted).

``certify``, ``compare``, ``edge-popup --from-run`` and the Python API (``load_run``,
``masked_model``, ``export_pruned``) all read a run folder through :func:`read_run`, so they
can never disagree about which network a folder holds. It refuses, with a
:class:`RunFolderError` (exit 2, one line naming the file and the fix):

* a non-regular file (FIFO, device, directory, a symlink to one) before opening it;
* report.json / run_config.json that is not a JSON object, or whose fields have the wrong type
  or range (``input_domain``, ``input_radius``, ``seed``, ``eps``, ``certified_bound``,
  ``target_sizes``, ``layers``, ``construction_plan``, ``relu_after``, ``witness``);
* tensors whose key set is not exactly ``{0, 2, ..., 2(n-1)}.{weight, bias}`` in both files, or
  whose shapes are not those of the construction recorded for the target (``2l`` Linear layers
  for an ``l``-layer target; ``H = Σ block widths`` from report.json's ``layers`` /
  ``construction_plan``); masks that are not uint8 0/1, or that keep an entry the construction's
  block-diagonal pre-pruning removes (subset-sum runs);
* a compact run (``"store": "compact"``, :mod:`subsetsum_lth.gstore`) whose generator
  specification differs between report.json and its files, or whose stored support values are
  not what that specification regenerates (bit for bit), or whose masks keep a pre-pruned entry;
* a ``relu_after`` entry in a subset-sum run (the construction always has every ReLU); in an
  edge-popup run it must be a list of booleans, one per hidden Linear layer;
* for an image network (``target_arch``/``input_shape``/``g_arch`` in report.json, subset-sum
  or edge-popup): g's layout rebuilt from the architecture and the block widths (``layers``,
  or an edge-popup run's ``construction_plan``) must give every key and shape and equal the
  stored ``g_arch``; an edge-popup run's ``relu_after`` has one boolean per ReLU of g, drops
  only ReLUs inside a pair and agrees with ``inner_relu``; structured masks stay inside the
  pre-pruning.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from subsetsum_lth import runfolder as rf
from subsetsum_lth.construction import DISTRIBUTIONS, layout_of
from subsetsum_lth.errors import RunFolderError, UserError
from subsetsum_lth.gnet import mlp_layout
from subsetsum_lth.gstore import DenseMasks, DenseState, generator_spec, read_compact
from subsetsum_lth.layerkinds import arch_of, kinds_from_arch
from subsetsum_lth.manifest import KIND_NAMES, MANIFEST, read_manifest
from subsetsum_lth.mask_rules import eligible_masks, prepruning_masks
from subsetsum_lth.ops import canonical_arch, is_residual, signed_inputs
from subsetsum_lth.preprocess import recorded_input_op
from subsetsum_lth.report_fields import Fields, short
from subsetsum_lth.run_shapes import (block_plans, check_construction_shapes, check_mlp_shapes, linear_count,
                                     relu_after_of)
# which data set a run was made on; certify_run, compare, edge-popup and the CLI import them from here
from subsetsum_lth.run_dataset import choose_dataset, recorded_dataset  # noqa: F401
# the readers of one file live in runfolder (below gstore); certify_run and the CLI import them from here
from subsetsum_lth.runfolder import RECREATE, check_regular, load_tensors, read_json  # noqa: F401
from subsetsum_lth.target import load_target


INPUT_DOMAINS = ("nonnegative", "signed")
WITNESS = "witness.safetensors"
#: the largest input radius read (beyond it the float64 forward passes of the certificate overflow)
MAX_INPUT_RADIUS = 1e12


# ----------------------------------------------------------------------------- the run

@dataclass
class Run:
    """A validated run folder: tensors as numpy arrays, the report, what was checked."""

    path: Path
    random_state: dict              #: numpy float arrays, keys '0.weight', '0.bias', ...
    masks: dict                     #: numpy uint8 0/1 arrays, the same keys and shapes
    report: dict
    kind: str = "subset-sum"        #: 'subset-sum' (approximate) or 'edge-popup'
    relu_after: list = field(default_factory=list)   #: one bool per hidden Linear layer
    plans: list | None = None       #: the construction's LayerPlans when construction-shaped
    target: object | None = None    #: subsetsum_lth.target.Target (target.safetensors) or None
    input_domain: str | None = None
    input_radius: float | None = None
    seed: int | None = None
    layout_: object | None = None   #: subsetsum_lth.gnet.GLayout for networks with conv/pooling layers
    #: a compact run's validated support and masks (subsetsum_lth.gstore.CompactG); its
    #: random_state/masks are then lazy dense views generated tensor by tensor
    compact: object | None = None
    #: the data set the run was made on ('mnist', 'fashion-mnist'), None when it records none
    data: str | None = None
    #: where ``data`` comes from: 'report.json', 'the target's metadata', 'none' (made without
    #: data: a synthetic target, or no --data), 'unrecorded' (written before runs recorded it)
    data_source: str = "unrecorded"
    #: the input op recorded in report.json 'preprocessing' (a subsetsum_lth.preprocess.Preprocessing
    #: that f and ĝ apply to pixels/255 first), None when none (or one folded into the target)
    preprocessing: object | None = None

    @property
    def layout(self):
        """Where each tensor of g lives (:class:`subsetsum_lth.gnet.GLayout`)."""
        if self.layout_ is not None:
            return self.layout_
        if self.plans is not None:
            return layout_of(self.plans)
        return mlp_layout(self.random_state)

    @property
    def input_dim(self) -> int:
        lay = self.layout_
        if lay is not None and lay.input_shape is not None:
            return int(np.prod(lay.input_shape))
        if self.compact is not None:
            return int(self.plans[0].p)
        return int(self.random_state["0.weight"].shape[1])

    @property
    def n_linear(self) -> int:
        """The conv2d/linear layers of g (a residual g has more or fewer ReLUs than layers − 1)."""
        if self.layout_ is not None and self.layout_.graph is not None:
            return len(self.layout_.param_indices())
        return len(self.relu_after) + 1

    @property
    def depth(self) -> int:
        return rf.depth_of(self.random_state)

    @property
    def all_relu(self) -> bool:
        return all(self.relu_after)


def _load_target(path: Path):
    check_regular(path)
    return load_target(path)


def read_run(path: str | Path, *, need_target: bool = False) -> Run:
    """Read and validate a run folder (see the module docstring). ``need_target``: refuse a
    folder without target.safetensors (a certificate needs it). The data set the run records
    is in ``run.data`` / ``run.data_source`` (:func:`recorded_dataset`)."""
    run = _read_run(path, need_target=need_target)
    run.data, run.data_source = recorded_dataset(run.report, run.target, str(Path(path) / rf.REPORT))
    run.preprocessing = _recorded_preprocessing(run, Path(path) / rf.REPORT)
    return run


def _recorded_preprocessing(run: Run, where: Path):
    """The input op report.json records, checked (subsetsum_lth.preprocess.recorded_input_op)."""
    try:
        return recorded_input_op(run.report.get("preprocessing"), run.input_dim, run.target)
    except ValueError as exc:
        raise RunFolderError(f"{where}: {exc}; {RECREATE}") from None


def _read_run(path: str | Path, *, need_target: bool = False) -> Run:
    path = Path(path)
    report, where, f, kind = _open_report(path)
    domain, radius, seed, sizes = _report_fields(f, kind)
    if kind == "subset-sum" and f.choice("store", ("dense", "compact"), optional=True) == "compact":
        return _read_compact_run(path, report, f, sizes, domain, radius, seed, need_target)

    # --- tensors
    state = load_tensors(path / rf.RANDOM_NET)
    masks = load_tensors(path / rf.MASKS)
    if "target_arch" in report or "input_shape" in report or "g_arch" in report:
        return _read_image_run(path, report, f, state, masks, sizes, domain, radius, seed, kind)
    n, net_sizes = _check_mlp_tensors(path, state, masks)
    relu_after = relu_after_of(report, kind, n, path)

    # --- the construction recorded for the target
    plans, sizes = _mlp_plans(path, report, f, kind, n, sizes, domain)
    if plans is not None:
        check_construction_shapes(state, plans, path, rf.RANDOM_NET)
    _check_allowed(path, masks, _allowed_masks(f, kind, plans, state))

    target = _mlp_target(path, sizes, plans, net_sizes, need_target)
    if "witness" in report:
        _witness_entry(report, where, net_sizes[0])
    return Run(path, state, masks, report, kind, relu_after, plans, target, domain, radius, seed)


#: the run kind of each kind of run folder that manifest.json records
RUN_KINDS = {"approximate": "subset-sum", "edge-popup": "edge-popup"}


def _manifest_kind(path: Path) -> str | None:
    """The run kind manifest.json records ('subset-sum' for an approximate run, 'edge-popup'); None
    for a folder without one (written before manifests, or copied without it)."""
    try:
        m = read_manifest(path)
    except RunFolderError as exc:       # its message ends with a fix for --out; this one is for a run
        raise RunFolderError(f"{str(exc).split('; ')[0]}; {RECREATE}") from None
    if m is None:
        return None
    if m["kind"] not in RUN_KINDS:
        raise RunFolderError(f"{path} is {KIND_NAMES[m['kind']]} ({MANIFEST}), not a run folder; give the folder "
                             "that 'approximate' or 'edge-popup' wrote")
    return RUN_KINDS[m["kind"]]


def _open_report(path: Path) -> tuple[dict, str, Fields, str]:
    """report.json of the run folder ``path``, read and checked to be a run's: (report, where,
    its fields, the run kind 'subset-sum' or 'edge-popup'). The kind is the one manifest.json
    records; report.json must read as that kind (its 'solver' or 'method'), which alone decides
    only in a folder without a manifest."""
    try:
        st = os.stat(path)
    except OSError:
        raise RunFolderError(f"run folder {path} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RunFolderError(f"run folder {path} is not a folder; give the folder that 'approximate' or "
                             "'edge-popup' wrote")
    recorded = _manifest_kind(path)
    report_path = path / rf.REPORT
    if not report_path.exists() and not report_path.is_symlink():
        raise RunFolderError(f"{report_path} does not exist; is {path} a run folder written by subsetsum-lth?")
    report = read_json(report_path)
    where = str(report_path)
    f = Fields(report, where)
    method = report.get("method")
    if method is not None:
        if method != "edge-popup":
            raise f.fail("method", "'edge-popup' (or absent for a subset-sum run)", method)
        kind = "edge-popup"
    elif "solver" in report:
        if not isinstance(report["solver"], str):
            raise f.fail("solver", "a solver name", report["solver"])
        kind = "subset-sum"
    else:
        raise RunFolderError(f"{where} has neither 'solver' (an approximate run) nor 'method' (an edge-popup "
                             f"run); is it a run folder written by subsetsum-lth? {RECREATE}")
    if recorded is not None and kind != recorded:
        names = {v: KIND_NAMES[k] for k, v in RUN_KINDS.items()}
        raise RunFolderError(f"{where} reads as {names[kind]} ('{'method' if kind == 'edge-popup' else 'solver'}') "
                             f"but {path / MANIFEST} records {names[recorded]}; {RECREATE}")
    return report, where, f, recorded or kind


def _report_fields(f: Fields, kind: str):
    """The fields the readers use, by type and range: (domain, radius, seed, target sizes or None)."""
    if kind == "subset-sum":
        domain = f.choice("input_domain", INPUT_DOMAINS)
        radius = f.number("input_radius", positive=True, maximum=MAX_INPUT_RADIUS)
        seed = f.integer("seed", minimum=0)
        f.number("eps", positive=True, optional=True, none_ok=True)
        f.number("weight_eps", positive=True, optional=True, none_ok=True)
        f.number("certified_bound", nonneg=True, optional=True, none_ok=True)
        sizes = f.int_list("target_sizes", minimum=1)
        if len(sizes) < 2:
            raise f.fail("target_sizes", "a list of at least 2 layer sizes", sizes)
    else:
        domain = f.choice("input_domain", INPUT_DOMAINS, optional=True)
        radius = f.number("input_radius", positive=True, optional=True, none_ok=True, maximum=MAX_INPUT_RADIUS)
        seed = f.integer("seed", minimum=0, optional=True)
        f.number("certified_bound", nonneg=True, optional=True, none_ok=True)
        f.boolean("inner_relu", optional=True)
        sizes = None
    return domain, radius, seed, sizes


def _check_mlp_tensors(path: Path, state: dict, masks: dict) -> tuple[int, list[int]]:
    """An MLP run's random net and masks: the same Linear layers, masks uint8 0/1 of the weights'
    shapes. Returns (the number of Linear layers, the random net's layer sizes)."""
    n = linear_count(state, rf.RANDOM_NET, path)
    n_m = linear_count(masks, rf.MASKS, path)
    if n_m != n:
        raise RunFolderError(f"{path / rf.MASKS} has {n_m} Linear layers but {rf.RANDOM_NET} {n}; {RECREATE}")
    net_sizes = check_mlp_shapes(state, n, path)
    for k in state:
        if masks[k].shape != state[k].shape:
            raise RunFolderError(f"{path / rf.MASKS}: mask {k} has shape {tuple(masks[k].shape)}, the random "
                                 f"weight {tuple(state[k].shape)}; {RECREATE}")
        if masks[k].dtype != np.uint8:
            raise RunFolderError(f"{path / rf.MASKS}: mask {k} has dtype {masks[k].dtype}; masks are uint8 0/1; {RECREATE}")
        if masks[k].size and int(masks[k].max()) > 1:
            raise RunFolderError(f"{path / rf.MASKS}: mask {k} holds values other than 0 and 1; {RECREATE}")
    return n, net_sizes


def _mlp_plans(path: Path, report: dict, f: Fields, kind: str, n: int, sizes, domain):
    """The construction recorded for an MLP target (report.json's ``layers`` or, for an edge-popup
    run, ``construction_plan``), checked against the n Linear layers: (plans or None, sizes)."""
    where = f.where
    plans = None
    if kind == "subset-sum":
        if n != 2 * (len(sizes) - 1):
            raise RunFolderError(f"{path / rf.RANDOM_NET} has {n} Linear layers, but the construction for the "
                                 f"{len(sizes) - 1}-layer target recorded in report.json has exactly "
                                 f"{2 * (len(sizes) - 1)}; {RECREATE}")
        plans = block_plans(report.get("layers"), sizes, domain, f"{where} 'layers'")
    elif "construction_plan" in report:
        entries = report["construction_plan"]
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise f.fail("construction_plan", "a list of per-layer objects", entries)
        sizes = []
        for i, e in enumerate(entries):
            shape = Fields(e, f"{where} 'construction_plan'[{i}]").int_list("target_shape", length=2, minimum=1)
            if i == 0:
                sizes.append(shape[1])
            elif shape[1] != sizes[-1]:
                raise RunFolderError(f"{where} 'construction_plan'[{i}]: target_shape {shape} does not chain "
                                     f"with layer {i - 1}; {RECREATE}")
            sizes.append(shape[0])
        if n != 2 * len(entries):
            raise RunFolderError(f"{path / rf.RANDOM_NET} has {n} Linear layers, but the construction recorded in "
                                 f"report.json ('construction_plan', {len(entries)} target layers) has exactly "
                                 f"{2 * len(entries)}; {RECREATE}")
        plans = block_plans(entries, sizes, domain or "nonnegative", f"{where} 'construction_plan'")
    return plans, sizes


def _allowed_masks(f: Fields, kind: str, plans, state: dict) -> dict | None:
    """The entries an MLP run's masks may keep (None: any)."""
    if kind == "subset-sum":
        # the masks keep nothing that the block-diagonal pre-pruning removed
        return prepruning_masks(plans, state)
    if plans is not None and f.choice("structure", ("free", "structured"), optional=True) == "structured":
        # a structured edge-popup run keeps only the entries its search was allowed to score
        return eligible_masks(plans, {k: np.ascontiguousarray(v) for k, v in state.items()}, None,
                              f.boolean("inner_relu", optional=True, default=True))
    return None


def _mlp_target(path: Path, sizes, plans, net_sizes: list[int], need_target: bool):
    """The target of an MLP run folder, when it holds one, checked against the report and g."""
    target = None
    tpath = path / rf.TARGET
    if tpath.exists() or tpath.is_symlink():
        target = _load_target(tpath)
        if sizes is not None and target.sizes != sizes:
            raise RunFolderError(f"{tpath} is a {'-'.join(map(str, target.sizes))} network but report.json records "
                                 f"a {'-'.join(map(str, sizes))} target; {RECREATE}")
        if plans is not None:
            _check_target_bias(tpath, plans, target)
        if target.sizes[0] != net_sizes[0]:
            raise RunFolderError(f"{tpath} takes {target.sizes[0]} inputs but the random network {net_sizes[0]}; {RECREATE}")
    elif need_target:
        raise RunFolderError(f"{path} has no {rf.TARGET}; a certificate needs the target: {RECREATE}")
    return target


def _check_target_bias(tpath: Path, plans, target) -> None:
    """The run's target has a bias exactly where report.json's block plan records one."""
    for pl, L in zip(plans, target.layers):
        if pl.has_bias != (L.bias is not None):
            raise RunFolderError(f"{tpath}: layer {pl.index} {'has no' if pl.has_bias else 'has a'} bias but "
                                 f"report.json records the opposite; {RECREATE}")


def _check_allowed(path: Path, masks: dict, allowed: dict | None) -> None:
    """Refuse masks that keep an entry the construction's pre-pruning (or a structured
    search's eligibility) removed."""
    for k, a in (allowed or {}).items():
        bad = int(np.count_nonzero(masks[k] & (1 - a)))
        if bad:
            raise RunFolderError(f"{path / rf.MASKS}: mask {k} keeps {bad} entries outside the blocks the "
                                 f"construction allows (pre-pruned entries); {RECREATE}")


def _read_compact_run(path: Path, report: dict, f, sizes, domain, radius, seed, need_target: bool) -> Run:
    """A subset-sum run stored compact (:mod:`subsetsum_lth.gstore`): the block plan, seed and
    distribution from report.json must give exactly the generator specification recorded there
    and in both compact files, and every stored support value must be what that specification
    regenerates (read_compact). random_state and masks are lazy dense views."""
    where = str(path / rf.REPORT)
    dist = f.choice("distribution", tuple(sorted(DISTRIBUTIONS)))
    if "target_arch" in report or "input_shape" in report or "g_arch" in report:
        return _read_compact_image_run(path, report, f, sizes, domain, radius, seed, need_target, dist)
    plans = block_plans(report.get("layers"), sizes, domain, f"{where} 'layers'")
    if report.get("generator") != generator_spec(seed, dist, plans):
        raise RunFolderError(f"{where}: 'generator' is not the specification of the recorded seed, distribution and "
                             f"block plan; {RECREATE}")
    compact = read_compact(path, plans, seed, dist, domain)
    layout = layout_of(plans)
    n = 2 * len(plans)
    relu_after = relu_after_of(report, "subset-sum", n, path)
    target = None
    tpath = path / rf.TARGET
    if tpath.exists() or tpath.is_symlink():
        target = _load_target(tpath)
        if not target.is_mlp or target.sizes != sizes:
            raise RunFolderError(f"{tpath} is a {'-'.join(map(str, target.sizes))} network but report.json records "
                                 f"a {'-'.join(map(str, sizes))} MLP target; {RECREATE}")
        _check_target_bias(tpath, plans, target)
    elif need_target:
        raise RunFolderError(f"{path} has no {rf.TARGET}; a certificate needs the target: {RECREATE}")
    if "witness" in report:
        _witness_entry(report, where, sizes[0])
    return Run(path, DenseState(compact.pairs, layout), DenseMasks(plans, compact.cmasks, layout), report,
               "subset-sum", relu_after, plans, target, domain, radius, seed, None, compact)


def _image_plans(report: dict, f, where: str, sizes, domain, kind: str):
    """(plans, layout, kinds, after, graph, input shape) of an image run: the target's
    architecture and input shape from report.json, the block widths (``layers`` of a subset-sum
    run, ``construction_plan`` of an edge-popup run), g's layout rebuilt from them (the stored
    ``g_arch``, when recorded, must equal it)."""
    arch = report.get("target_arch")
    shape = f.int_list("input_shape", minimum=1)
    if not isinstance(arch, list) or not arch:
        raise f.fail("target_arch", "a list of layer objects", arch)
    try:
        kinds, after = kinds_from_arch(arch, shape)
        graph = canonical_arch(arch) if is_residual(arch) else None
    except (UserError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RunFolderError(f"{where}: 'target_arch' is not a supported architecture ({exc}); {RECREATE}") from None
    signed = None if graph is None else signed_inputs(graph, (domain or "nonnegative") == "signed")
    arch_sizes = [kinds[0].p] + [k.q for k in kinds]
    if kind == "subset-sum":
        if arch_sizes != sizes:
            raise RunFolderError(f"{where}: 'target_sizes' {sizes} do not match 'target_arch'; {RECREATE}")
        entries, entries_name = report.get("layers"), "layers"
    else:
        if "construction_plan" not in report:
            raise RunFolderError(f"{where} lacks 'construction_plan' (the block widths of the construction's "
                                 f"network, which an edge-popup run of an image network records); {RECREATE}")
        entries, entries_name = report["construction_plan"], "construction_plan"
        sizes = arch_sizes
    plans = block_plans(entries, sizes, domain or "nonnegative", f"{where} '{entries_name}'", [(k.q, k.p) for k in kinds],
                   signed)
    for pl, k in zip(plans, kinds):
        pl.kind = k
    layout = layout_of(plans, after, shape, graph)
    if report.get("g_arch") is not None and report["g_arch"] != layout.ops():
        raise RunFolderError(f"{where}: 'g_arch' is not the construction's network for 'target_arch' and the "
                             f"recorded block widths; {RECREATE}")
    return plans, layout, kinds, after, graph, shape


def _image_target(path: Path, plans, kinds, after, graph, shape):
    """The target of an image run folder, when it holds one, checked against report.json."""
    tpath = path / rf.TARGET
    if not (tpath.exists() or tpath.is_symlink()):
        return None
    target = _load_target(tpath)
    want_arch = graph if graph is not None else arch_of(kinds, after)
    if target.is_mlp or target.arch() != want_arch or list(target.input_shape) != shape:
        raise RunFolderError(f"{tpath} is not the network report.json records ('target_arch', "
                             f"'input_shape'); {RECREATE}")
    _check_target_bias(tpath, plans, target)
    return target


def _read_compact_image_run(path: Path, report: dict, f, sizes, domain, radius, seed, need_target: bool,
                            dist: str) -> Run:
    """An image run stored compact (a g with support-drawn pairs, ``--support-draw-above``): the
    layout as :func:`_read_image_run` rebuilds it, the support checked as for an MLP compact run."""
    where = str(path / rf.REPORT)
    plans, layout, kinds, after, graph, shape = _image_plans(report, f, where, sizes, domain, "subset-sum")
    if report.get("generator") != generator_spec(seed, dist, plans):
        raise RunFolderError(f"{where}: 'generator' is not the specification of the recorded seed, distribution and "
                             f"block plan; {RECREATE}")
    compact = read_compact(path, plans, seed, dist, domain, [pl.signed_input for pl in plans])
    relu_after = relu_after_of(report, "subset-sum", len(layout.inner_relus()) + 1, path)
    target = _image_target(path, plans, kinds, after, graph, shape)
    if target is None and need_target:
        raise RunFolderError(f"{path} has no {rf.TARGET}; a certificate needs the target: {RECREATE}")
    if "witness" in report:
        _witness_entry(report, where, int(np.prod(shape)))
    return Run(path, DenseState(compact.pairs, layout), DenseMasks(plans, compact.cmasks, layout), report,
               "subset-sum", relu_after, plans, target, domain, radius, seed, layout, compact)


def _read_image_run(path: Path, report: dict, f, state: dict, masks: dict, sizes, domain, radius, seed,
                    kind: str = "subset-sum") -> Run:
    """A run of a network with conv/pooling layers: report.json records the target's
    architecture and input shape; g's layout is rebuilt from them and the block widths
    (``layers`` of a subset-sum run, ``construction_plan`` of an edge-popup run; never taken
    from the stored ``g_arch``, which must equal the rebuilt one), then every tensor's key and
    shape is checked against it. Subset-sum masks and structured edge-popup masks keep nothing
    the construction's pre-pruning removes; an edge-popup run's ``relu_after`` has one boolean
    per ReLU of g."""
    where = str(path / rf.REPORT)
    plans, layout, kinds, after, graph, shape = _image_plans(report, f, where, sizes, domain, kind)
    want = layout.shapes()
    for fname, tensors in ((rf.RANDOM_NET, state), (rf.MASKS, masks)):
        if set(tensors) != set(want):
            extra, missing = sorted(set(tensors) - set(want))[:4], sorted(set(want) - set(tensors))[:4]
            raise RunFolderError(f"{path / fname}: keys are not those of the construction for the recorded "
                                 f"architecture (unexpected {extra}, missing {missing}); {RECREATE}")
        for k, shp in want.items():
            if tuple(tensors[k].shape) != tuple(shp):
                raise RunFolderError(f"{path / fname}: {k} has shape {tuple(tensors[k].shape)}, the construction "
                                     f"recorded in report.json needs {tuple(shp)}; {RECREATE}")
    for k in state:
        if not np.issubdtype(state[k].dtype, np.floating):
            raise RunFolderError(f"{path / rf.RANDOM_NET}: {k} is not floating point ({state[k].dtype}); {RECREATE}")
        if masks[k].dtype != np.uint8:
            raise RunFolderError(f"{path / rf.MASKS}: mask {k} has dtype {masks[k].dtype}; masks are uint8 0/1; {RECREATE}")
        if masks[k].size and int(masks[k].max()) > 1:
            raise RunFolderError(f"{path / rf.MASKS}: mask {k} holds values other than 0 and 1; {RECREATE}")
    # one relu_after entry per ReLU of g (for a chain: one fewer than its conv2d/linear layers)
    relu_after = relu_after_of(report, kind, len(layout.inner_relus()) + 1, path)
    allowed = None
    if kind == "subset-sum":
        allowed = prepruning_masks(plans, state, layout)
    elif f.choice("structure", ("free", "structured"), optional=True) == "structured":
        # a structured edge-popup run keeps only the entries its search was allowed to score
        allowed = eligible_masks(plans, {k: np.ascontiguousarray(v) for k, v in state.items()}, layout,
                                 f.boolean("inner_relu", optional=True, default=True))
    if kind == "edge-popup":
        # the ReLU after the first layer of each pair (layout.inner_relus(); for a chain the even
        # positions) is dropped only by --no-inner-relu; the target's own ReLUs are always there
        inner = layout.inner_relus()
        if not all(r for r, i in zip(relu_after, inner) if not i):
            raise RunFolderError(f"{where}: 'relu_after' drops a ReLU of the target (not one inside a pair "
                                 f"of g); edge-popup only drops the inner ReLUs; {RECREATE}")
        if f.boolean("inner_relu", optional=True, default=True) != all(r for r, i in zip(relu_after, inner) if i):
            raise RunFolderError(f"{where}: 'inner_relu' and 'relu_after' disagree; {RECREATE}")
    _check_allowed(path, masks, allowed)
    target = _image_target(path, plans, kinds, after, graph, shape)
    n_in = int(np.prod(shape))
    if "witness" in report:
        _witness_entry(report, where, n_in)
    return Run(path, state, masks, report, kind, relu_after, plans, target, domain, radius, seed, layout)



# ----------------------------------------------------------------------------- witness

def _witness_entry(report: dict, where: str, p: int) -> dict:
    w = report["witness"]
    if not isinstance(w, dict):
        raise RunFolderError(f"{where}: 'witness' must be an object, got {short(w)}; {RECREATE}")
    f = Fields(w, f"{where} 'witness'")
    if w.get("file") != WITNESS:
        raise f.fail("file", repr(WITNESS), w.get("file"))
    f.number("error", nonneg=True)
    return w
