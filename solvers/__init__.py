"""Solver backends for subsetsum-lth.

Every backend subclasses :class:`solvers.base.SolverBackend`; the registry in
:mod:`solvers.registry` finds them by name, including third-party backends published
under the entry-point group ``subsetsum_lth.solvers``.
"""
from solvers.base import Capabilities, SolverBackend, SolverUnavailable
from solvers.registry import available_backends, backend_info, get_backend, list_backends

__all__ = [
    "Capabilities", "SolverBackend", "SolverUnavailable",
    "available_backends", "backend_info", "get_backend", "list_backends",
]
