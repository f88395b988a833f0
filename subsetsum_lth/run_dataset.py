"""The data set a run was made on (:func:`recorded_dataset`) and the one a command that reads a
run or a target uses (:func:`choose_dataset`: ``--data``, else the recorded one).
"""
from __future__ import annotations

import logging

from subsetsum_lth.data.mnist import DATASETS
from subsetsum_lth.errors import RunFolderError, UserError
from subsetsum_lth.report_fields import short
from subsetsum_lth.runfolder import RECREATE

log = logging.getLogger("subsetsum_lth.runcheck")     # the logger of the module it came from (runcheck)


def recorded_dataset(report: dict, target=None, where: str = "report.json") -> tuple[str | None, str]:
    """(data set, where it is recorded) of a run: report.json's ``data``, else the ``dataset`` its
    target's metadata records (train-target writes it), else (None, 'none') for a run whose
    report says ``"data": null`` (made without data), else (None, 'unrecorded') for a folder
    written before runs recorded it."""
    value = report.get("data")
    if value is not None and value not in DATASETS:
        raise RunFolderError(f"{where}: field 'data' must be one of {', '.join(DATASETS)} or null, got "
                             f"{short(value)}; {RECREATE}")
    if value is not None:
        return value, "report.json"
    meta = getattr(target, "metadata", None) or {}
    if meta.get("dataset") in DATASETS:
        return meta["dataset"], "the target's metadata"
    return None, "none" if "data" in report else "unrecorded"


def choose_dataset(given: str | None, recorded: str | None, source: str, what: str,
                   other: str = "pass another run") -> str:
    """The data set a command that reads ``what`` (a run folder, a target) uses: ``given``
    (``--data``) or else the recorded one; a ``given`` that contradicts the record is refused
    (UserError, exit 2) naming both and the fix. With nothing recorded: ``given``, else MNIST,
    with a logged note saying why."""
    if recorded is not None:
        if given is not None and given != recorded:
            raise UserError(f"--data {given} contradicts {what}, which was made on {recorded} (recorded in "
                            f"{source}); drop --data to use {recorded}, or {other}")
        if given is None:
            log.info("using %s, the data set %s was made on (recorded in %s)", recorded, what, source)
        return recorded
    if given is not None:
        return given
    if source == "none":
        log.warning("%s was made without data (a synthetic target, or approximate without --data); "
                    "using MNIST (choose with --data)", what)
    else:
        log.warning("%s records no data set (written before runs recorded it); using MNIST (pass --data "
                    "fashion-mnist if it was made on Fashion-MNIST)", what)
    return "mnist"
