"""Run folders of both kinds of runs: preparing ``--out`` (manifest, lock, ``--resume``), telling a
finished approximate run from an unfinished one, and writing the files — one writer for
``approximate`` and ``edge-popup``: random_net, masks, target and extra tensors first, plots,
metrics.csv, report.json last, then the manifest is closed."""
from __future__ import annotations

import json
import logging
import math
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from subsetsum_lth import gstore, manifest
from subsetsum_lth import runfolder as rf
from subsetsum_lth.certify import certified_bound
from subsetsum_lth.certify_box import box_bound, box_from_report
from subsetsum_lth.errors import RunFolderError, UserError
from subsetsum_lth.overwrite import STAGE_SUFFIX
from subsetsum_lth.report_check import target_sha256
from subsetsum_lth.runcheck import read_run
from subsetsum_lth.solve import ResumeStore
from subsetsum_lth.solvers.portfolio import LEGACY_NAMES
from subsetsum_lth.target import save_target

log = logging.getLogger(__name__)


@dataclass
class GWrite:
    """g of an approximate run as the pipeline holds it (the support), and how to store it:
    ``kind`` 'dense' (random_net/masks.safetensors, streamed a tensor at a time) or 'compact'
    (:mod:`subsetsum_lth.gstore`)."""

    kind: str
    pairs: list
    plans: list
    cmasks: list
    layout: object
    spec: dict


def write_run(out: Path, *, masks: dict | None, meta: dict, report: dict, metrics: list[dict], t_start: float,
              timings: dict, random_state: dict | None = None, random_copy_from: Path | None = None,
              g: GWrite | None = None,
              target=None, target_file: Path | None = None, extra: dict | None = None,
              plots: Callable[[], list] | None = None, store_name: str | None = None,
              extra_report: dict | None = None, wall_metric: bool = False) -> None:
    """Write a run folder's files (report.json last) and close its manifest. ``extra``: file name
    -> tensors (e.g. the witness); ``plots()`` returns the plot file names (a failed plot is
    logged, never fatal); ``store_name``: a resume store to remove once the run is written;
    ``extra_report``: entries added after ``wall_seconds``; ``wall_metric``: a metrics.csv row
    for it too; ``g``: an approximate run's g (then ``masks``/``random_state`` are not used)."""
    out = Path(out)
    t = time.perf_counter()
    tmeta = rf.tensor_metadata(meta)
    if g is not None:
        if g.kind == "compact":
            gstore.write_compact(out, g.pairs, g.cmasks, meta, g.spec)
        else:
            gstore.write_dense(out, g.pairs, g.plans, g.cmasks, g.layout, meta)
    else:
        if random_copy_from is not None:
            rf.atomic_copy(random_copy_from, out / rf.RANDOM_NET)
        else:
            rf.atomic_save_safetensors(random_state, out / rf.RANDOM_NET, tmeta)
        rf.atomic_save_safetensors(masks, out / rf.MASKS, tmeta)
    if target_file is not None:
        rf.atomic_copy(target_file, out / rf.TARGET)
    elif target is not None:
        save_target(target, out / rf.TARGET)
    for name, tensors in (extra or {}).items():
        rf.atomic_save_safetensors(tensors, out / name, tmeta)
    if plots is not None:
        try:
            report["plots"] = plots()
        except Exception as exc:  # a plot must never cost the run
            log.warning("plots failed: %s", exc)
    if (out / rf.TARGET).exists():
        # the bytes `certify` checks target.safetensors against
        report["target_sha256"] = target_sha256(out / rf.TARGET)
    timings["write"] = time.perf_counter() - t
    report["wall_seconds"] = time.perf_counter() - t_start
    report.update(extra_report or {})
    if wall_metric:
        metrics.append({"layer": "all", "metric": "wall_seconds", "value": report["wall_seconds"]})
    return _finish(out, report, metrics, store_name)


def _finish(out: Path, report: dict, metrics: list[dict], store_name: str | None) -> None:
    report["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rf.atomic_write_csv(out / rf.METRICS, metrics)
    rf.atomic_write_json(out / rf.REPORT, report)
    writer = manifest.writer_for(out)
    if store_name is not None:
        writer.remove_store(store_name)     # only the store's own files, never a user's
    writer.finish()


#: run_config.json "solver_names": 2 since the portfolio is called ``auto`` (``ortools`` is then
#: OR-Tools only); a run_config.json without it was written when ``ortools`` named the portfolio
SOLVER_NAMES = 2


def upgrade_settings(old: dict) -> dict:
    """The settings of a run_config.json as this version names them: a folder written before
    ``auto`` existed (no "solver_names") resumes as the portfolio it ran, ``auto``."""
    if not isinstance(old, dict) or "solver_names" in old:
        return old
    solver = old.get("solver")
    return {**old, "solver": LEGACY_NAMES.get(solver, solver) if isinstance(solver, str) else solver,
            "solver_names": SOLVER_NAMES}


def continue_stage(out: Path, config, fingerprint: dict):
    """``config`` to use for ``out``: when ``out`` is the staging folder of an ``--overwrite``
    that failed (a full disk, Ctrl-C) with these very settings, ``--resume`` it (its finished
    solver batches are continued; other settings: it is started afresh)."""
    if not (config.overwrite and not config.resume and out.name.endswith(STAGE_SUFFIX)
            and (out / "run_config.json").is_file()):
        return config
    try:
        same = (upgrade_settings(rf.read_json(out / "run_config.json"))
                == json.loads(json.dumps(fingerprint, default=rf._json_default)))
    except RunFolderError:
        return config
    return replace(config, resume=True, overwrite=False) if same else config


def prepare_folder(out: Path, config, fingerprint: dict,
                    need_bytes: int = 0) -> ResumeStore:
    out = Path(out)
    partial = out / "partial"
    # --out must be new, empty, or an approximate run folder written by the tool (manifest.json,
    # files unchanged); it is locked until approximate() returns, and --overwrite removes only
    # the files the manifest lists
    writer = manifest.open_folder(out, "approximate", overwrite=config.overwrite and not config.resume,
                                  need_bytes=need_bytes)
    try:
        existing = [p for p in (out / rf.REPORT, out / rf.MASKS, partial) if p.exists()]
        if existing and not (config.resume or config.overwrite):
            raise RunFolderError(
                f"{out} already holds a run ({', '.join(p.name for p in existing)}); "
                "use --resume to continue it, --overwrite to replace it, or another --out")
        # a resumed run's settings are checked before anything in the folder changes
        cfg_path = out / "run_config.json"
        if config.resume and cfg_path.exists():
            recorded = rf.read_json(cfg_path, fix="use --overwrite to start the run again, or another --out")
            old = upgrade_settings(recorded)
            new = json.loads(json.dumps(fingerprint, default=rf._json_default))
            if "data" not in old:     # recorded before run_config.json held the data set
                new.pop("data", None)
            if new != old:
                renamed = old is not recorded and old.get("solver") != recorded.get("solver")
                # earlier versions folded a declared normalisation into the first layer; now it
                # is an input op unless --fold-preprocessing says otherwise
                folded = "preprocessing" in new and "preprocessing" not in old
                raise RunFolderError(f"--resume: the run in {out} was started with different settings "
                                     f"({'; '.join(_setting_diff(old, new))}); use the same options "
                                     "or another --out" + (" (its solver 'ortools' ran the routing called "
                                                           "'auto' now, the default)" if renamed else "")
                                     + (" (it was made with the input normalisation folded into the first "
                                        "layer, as earlier versions did: add --fold-preprocessing)"
                                        if folded else ""))
        writer.make_store("partial")
    except BaseException:
        writer.close()
        raise
    rf.atomic_write_json(cfg_path, fingerprint)
    return ResumeStore(partial)


def _setting_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: was X, now Y' for every differing setting (nested dicts by dotted key, e.g.
    construction.width, whose default changed from 'auto' to 'adaptive')."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _setting_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: was {a!r}, now {b!r}")
    return out


def completed_run(out: Path) -> dict | None:
    """The report of a finished, successful run in ``out`` (masks and report written, nothing
    infeasible, ε met), else None. ``_prepare_folder`` has already checked the settings match."""
    dense = (out / rf.MASKS).exists() and (out / rf.RANDOM_NET).exists()
    compact = (out / gstore.MASKS_COMPACT).exists() and (out / gstore.RANDOM_NET_COMPACT).exists()
    if not ((out / rf.REPORT).exists() and (dense or compact)):
        return None
    # nothing stored is believed: the folder goes through the validated reader and its
    # certificate and weight errors are recomputed from the files before it counts as done
    try:
        run = read_run(out, need_target=True)
        report = run.report
        maps = gstore.run_layer_maps(run)
        cert = certified_bound(run.target, maps, run.input_radius, run.input_domain)
        box = box_from_report(report, str(out))      # a box run's --eps was checked on its box bound
        eps_bound = cert.bound if box is None else box_bound(run.target, maps, box)
    except Exception as exc:
        log.warning("--resume: the finished run in %s does not check out (%s); solving again", out, exc)
        return None
    if report.get("infeasible_count", 1) != 0 or report.get("certified_ok") is False:
        return None
    stored = report.get("certified_bound")
    tau = report.get("weight_eps")
    ok = stored is not None and math.isclose(stored, cert.bound, rel_tol=1e-9, abs_tol=1e-15)
    if report.get("mode") == "network":
        ok = ok and report.get("eps") is not None and eps_bound <= report["eps"]
    else:
        ok = ok and isinstance(tau, (int, float)) and all(
            max(L["max_weight_error"], L["max_bias_error"]) <= tau * (1 + 1e-6) + 1e-9 for L in cert.layers)
    if not ok:
        log.warning("--resume: the report in %s does not match its recomputed certificate or errors; "
                    "solving again", out)
        return None
    return report


def export_dense(run_path) -> list[Path]:
    """Write ``random_net.safetensors`` and ``masks.safetensors`` into a compact run folder,
    regenerated from its validated support and specification, byte-identical to what the dense
    store writes for the same run. Returns the two paths. The folder must be a finished
    approximate run written by the tool (its manifest); the files are added to the manifest (a
    file of those names that the tool did not write is refused, never replaced)."""
    run_path = Path(run_path)
    run = read_run(run_path)
    if run.compact is None:
        raise UserError(f"{run_path} is stored dense already ({rf.RANDOM_NET}, {rf.MASKS}); nothing to export")
    if gstore.has_support_pairs(run.plans):
        pl = next(pl for pl in run.plans if pl.lean)
        raise UserError(f"{run_path} has no dense files to export: target layer {pl.index + 1}'s first random layer "
                        f"was drawn as its block support only (--support-draw-above; dense it would hold "
                        f"{pl.hidden * pl.p:,} entries); load it with api.load_run / masked_model / export_pruned")
    paths = [run_path / rf.RANDOM_NET, run_path / rf.MASKS]
    with manifest.session(run_path):
        writer = manifest.open_folder(run_path, "approximate", need_bytes=int(gstore.dense_entries(run.plans) * 5 * 1.05))
        meta = {"format": "run", "seed": run.seed, "depth": len(run.plans)}
        gstore.write_dense(run_path, run.compact.pairs, run.plans, run.compact.cmasks, run.layout, meta)
        writer.finish()
    return paths
