"""Exceptions that carry a message meant for the user: what is wrong and how to fix it."""


class UserError(Exception):
    """Bad input or environment; the CLI prints the message and exits with status 2."""

    exit_code = 2


class TargetError(UserError):
    """The target network cannot be used (format, layer types, shapes, values)."""


class DataError(UserError):
    """Data set files are missing, corrupt or cannot be downloaded."""


class RunFolderError(UserError):
    """A run folder is missing, incomplete, or cannot be written."""


class IncompleteRun(Exception):
    """Some instances are infeasible or failed; everything computed was written."""

    exit_code = 3
    run_written = True      #: the run folder is complete (overwrite.staged_overwrite swaps it in)


class DiskFull(RunFolderError):
    """The disk (or a file size or quota limit) ran out while a file was written; the message
    names the file, the bytes needed and the bytes free. Exit 2, nothing already finished lost."""


#: exit status of `certify` when report.json states a figure the run's files do not give
REPORT_MISMATCH_EXIT = 5


class CertificateViolation(AssertionError):
    """An empirical error exceeded the certified bound: a bug, never expected."""

    exit_code = 4
