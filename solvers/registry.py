"""One registry of solver backends: the built-ins listed here (the only list of them) plus
third-party backends discovered through the entry-point group ``subsetsum_lth.solvers``."""
from __future__ import annotations

import importlib
import logging
from importlib import metadata

from .base import SolverBackend, SolverUnavailable

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "subsetsum_lth.solvers"

#: name -> "module:Class" of the built-in backends (module relative to this package); imported
#: lazily so that listing costs nothing. setup.cfg lists no entry points for these.
BUILTIN = {
    "auto": ".portfolio:AutoSolver",
    "mitm": ".mitm:MeetInTheMiddleSolver",
    "ortools": ".ortools_knapsack:OrToolsKnapsackSolver",
    "cpsat": ".cpsat:CpSatSolver",
    "gurobi": ".gurobi:GurobiSolver",
    "torch-mitm": ".torch_mitm:TorchMitmSolver",
}

DEFAULT_SOLVER = "auto"

_extra: dict[str, str | type[SolverBackend]] = {}


def register(name: str, target: str | type[SolverBackend]) -> None:
    """Register a backend class (or 'module:Class' path) under ``name``."""
    _extra[name] = target


def _entry_points() -> dict[str, str]:
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # pragma: no cover - broken metadata
        return {}
    return {ep.name: ep.value for ep in eps}


def list_backends() -> list[str]:
    names = dict(_entry_points())
    names.update(BUILTIN)
    names.update(_extra)
    return sorted(names)


def _resolve(name: str) -> type[SolverBackend]:
    target = _extra.get(name) or BUILTIN.get(name) or _entry_points().get(name)
    if target is None:
        raise KeyError(f"unknown solver {name!r}; known solvers: {', '.join(list_backends())}")
    if isinstance(target, type):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module, __package__), attr)


def get_backend_class(name: str) -> type[SolverBackend]:
    return _resolve(name)


def get_backend(name: str, **options) -> SolverBackend:
    """Instantiate backend ``name``; raises SolverUnavailable (with the fix) if it cannot run."""
    cls = _resolve(name)
    ok, reason = cls.is_available()
    if not ok:
        raise SolverUnavailable(f"solver {name!r} is not available: {reason}")
    return cls(**options)


def backend_info(name: str) -> dict:
    try:
        cls = _resolve(name)
    except Exception as exc:  # a broken third-party plug-in must not break listing
        return {"name": name, "available": False, "exact": False, "objectives": [],
                "reason": f"cannot load plug-in: {exc}"}
    ok, reason = cls.is_available()
    info = {
        "name": name,
        "available": bool(ok),
        "exact": cls.capabilities.exact,
        "objectives": list(cls.capabilities.objectives),
        "float_coefficients": cls.capabilities.float_coefficients,
        "max_n": cls.capabilities.max_n,
        "reach": getattr(cls.capabilities, "reach", None),
        "description": cls.description,
    }
    if not ok:
        info["reason"] = reason
    return info


def available_backends() -> list[str]:
    return [n for n in list_backends() if backend_info(n)["available"]]
