"""Solver backends for subsetsum-lth, installed as ``subsetsum_lth.solvers`` (the folder lies at
the repository's top level, ``solvers/``; setup.cfg maps it with ``package_dir``).

A leaf layer: it depends on numpy (and, lazily, the optional backends' own packages) only and
imports nothing from the rest of ``subsetsum_lth`` (tests/test_layers.py checks this). The
instance contract every backend and the driver share lives in :mod:`.instances`.

Every backend subclasses :class:`subsetsum_lth.solvers.base.SolverBackend`; the registry in
:mod:`subsetsum_lth.solvers.registry` finds them by name, including third-party backends
published under the entry-point group ``subsetsum_lth.solvers``.
"""
from .base import Capabilities, SolverBackend, SolverUnavailable
from .registry import available_backends, backend_info, get_backend, list_backends

__all__ = [
    "Capabilities", "SolverBackend", "SolverUnavailable",
    "available_backends", "backend_info", "get_backend", "list_backends",
]
