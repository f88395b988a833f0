"""The resume store: finished solver batches as .npz files in a run folder's partial/, found
again by a content hash of their inputs (:class:`ResumeStore`)."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from subsetsum_lth.executors import deferred_signals
from subsetsum_lth.runfolder import _atomic_write_bytes
from subsetsum_lth.solvers.instances import BatchResult, InstanceBatch, Status, recompute_errors, row_engines
from subsetsum_lth.solvers.portfolio import LEGACY_NAMES, route

log = logging.getLogger(__name__)


#: the name a backend's batches are hashed under, where it is not its own: ``auto`` is the routing
#: that was called ``ortools`` before (so the finished batches of an old run folder are found
#: again on --resume), and today's OR-Tools-only ``ortools`` must not find those
_DIGEST_NAMES = {"auto": "ortools", "ortools": "ortools-only"}


def batch_digest(solver: str, batch: InstanceBatch) -> str:
    """sha256 of everything that decides a batch's answer: solver, objective, ids, targets,
    coefficients, counts and tolerances (τ)."""
    h = hashlib.sha256()
    h.update(f"{_DIGEST_NAMES.get(solver, solver)}|{batch.objective}|".encode())
    for a in (batch.ids, batch.targets, batch.coefficients, batch.counts, batch.tolerances):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def batch_key(solver: str, batch: InstanceBatch) -> str:
    return batch_digest(solver, batch)[:32]


def stored_engines(solver: str, batch: InstanceBatch) -> np.ndarray:
    """The engines of a stored batch written before rows recorded theirs: the engine its routing
    table gives each row for a portfolio (``auto``, or ``ortools`` as old folders name it),
    else the backend's own name."""
    if LEGACY_NAMES.get(solver, solver) == "auto":
        return np.array([route(batch.objective, int(n)).engine for n in batch.counts], dtype=str)
    return np.full(len(batch), solver, dtype=object).astype(str)


def _result_digest(ids, selections, status) -> str:
    h = hashlib.sha256()
    for a in (ids, selections, status):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class ResumeStore:
    """Finished batches as .npz files in a folder; a batch is found again by a content hash of
    its inputs, so resuming reuses exactly the work whose inputs are unchanged.

    A stored batch only saves solver time, it never decides an answer: on load the hash of the
    batch's inputs and a checksum of the stored result must match, every error is recomputed
    from the stored selections, and a batch whose status claims contradict the recomputed errors
    (within τ claimed but outside it, or INFEASIBLE claimed but within it) is discarded with a
    warning and solved again. Instances stored as INFEASIBLE, TIMEOUT or ERROR (claims no stored
    selection can prove) are solved again by :func:`solve_all`; only the instances within τ are
    reused. Unreadable or malformed files are discarded."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def get(self, key: str, batch: InstanceBatch, solver: str | None = None) -> BatchResult | None:
        import stat as _stat
        path = self._path(key)
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not _stat.S_ISREG(st.st_mode):
            log.warning("ignoring %s: not a regular file; the batch is solved again", path)
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                ids, sel, status = z["ids"], z["selections"], z["status"]
                stored_solver, seconds = str(z["solver"]), float(z["seconds"])
                inputs, checksum = str(z["inputs_sha256"]), str(z["result_sha256"])
                engines = z["engines"] if "engines" in z.files else None
        except Exception as exc:  # a corrupt, truncated or old-format partial file is recomputed, not trusted
            log.warning("ignoring unreadable partial result %s (%s); the batch is solved again", path,
                        str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)
            return None
        want = batch_digest(solver or stored_solver, batch)
        problem = None
        if inputs != want or key != want[:32]:
            problem = "its inputs hash does not match this batch (other targets, coefficients, τ, objective or solver)"
        elif checksum != _result_digest(ids, sel, status):
            problem = "its result checksum does not match (the file was changed)"
        elif (ids.dtype != np.int64 or not np.array_equal(ids, batch.ids) or sel.dtype != np.bool_
              or sel.shape != batch.coefficients.shape or status.dtype != np.int8 or status.shape != (len(batch),)
              or not np.isin(status, [int(v) for v in Status]).all()):
            problem = "its arrays do not have this batch's ids, shapes or types"
        elif engines is not None and (engines.dtype.kind != "U" or engines.shape != (len(batch),)):
            problem = "its engines are not one name per instance"
        if problem is None:
            sel = sel & batch.live_mask()
            errors = recompute_errors(batch, sel)          # never the stored errors
            slack = 1e-9 * (1.0 + np.abs(batch.targets) + np.abs(batch.coefficients).sum(axis=1))
            within = errors <= batch.tolerances + slack
            claimed_ok = (status == Status.OPTIMAL) | (status == Status.FEASIBLE)
            bad = (claimed_ok & ~within) | ((status == Status.INFEASIBLE) & within)
            if bad.any():
                problem = (f"{int(bad.sum())} of its statuses contradict the errors recomputed from its "
                           f"selections (e.g. recomputed error {errors[bad][0]:.3g}, τ {batch.tolerances[bad][0]:.3g})")
        if problem is not None:
            log.warning("discarding stored batch %s: %s; solving it again", path.name, problem)
            return None
        if engines is None:     # written before rows recorded their engine
            engines = stored_engines(stored_solver, batch)
        return BatchResult(ids.copy(), sel, errors, status.copy(), stored_solver, seconds, {}, engines.copy())

    def put(self, key: str, res: BatchResult, batch: InstanceBatch | None = None,
            solver: str | None = None) -> None:
        """Store one finished batch. SIGINT/SIGTERM are held while it is serialised and written and
        take their effect right after: a handler that raises inside numpy's zip writer left it
        half-closed and replaced the interruption by a ValueError (exit 1 with a traceback)."""
        with deferred_signals():
            self._put(key, res, batch, solver)

    def _put(self, key: str, res: BatchResult, batch: InstanceBatch | None, solver: str | None) -> None:
        import io
        ids = np.ascontiguousarray(res.ids, dtype=np.int64)
        sel = np.ascontiguousarray(res.selections, dtype=bool)
        status = np.ascontiguousarray(res.status, dtype=np.int8)
        inputs = batch_digest(solver or res.solver, batch) if batch is not None else ""
        buf = io.BytesIO()
        np.savez(buf, ids=ids, selections=sel, errors=res.errors, status=status,
                 solver=np.array(res.solver), seconds=np.array(res.seconds), engines=row_engines(res),
                 inputs_sha256=np.array(inputs), result_sha256=np.array(_result_digest(ids, sel, status)))
        _atomic_write_bytes(self._path(key), buf.getvalue())

    def count(self) -> int:
        return len(list(self.folder.glob("*.npz")))
