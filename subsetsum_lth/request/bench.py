"""The request of `subsetsum-lth bench solvers|approximate`."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from subsetsum_lth.bench import ApproximateBenchConfig, SolverBenchConfig
from subsetsum_lth.commands._common import integer
from subsetsum_lth.commands._help import HelpFormatter
from subsetsum_lth.options import option
from subsetsum_lth.request.generate import add_option, add_options, add_remaining, read_fields

def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(integer(x) for x in text.split(",") if x.strip())     # '1e6' too, as every integer flag
    except argparse.ArgumentTypeError:
        sizes = ()
    if not sizes or min(sizes) < 0:
        raise argparse.ArgumentTypeError(f"expected N or N,N,... (non-negative integers), got {text!r}")
    return sizes


def _solver_specs(text: str) -> tuple[str, ...]:
    """Split --solvers at commas outside brackets; options inside brackets may be separated by
    ';' or ','."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ";" if (ch == "," and depth > 0) else ch
    out.append(cur)
    return tuple(s.strip().replace(";", ",") for s in out if s.strip())


@dataclass(frozen=True, kw_only=True)
class BenchRequest:
    """`subsetsum-lth bench solvers|approximate`: which, its config (SolverBenchConfig or
    ApproximateBenchConfig) and the printing options."""

    what: str = "solvers"
    #: bench solvers: the sizes n of one table (``config.n`` is the first)
    sizes: tuple[int, ...] = ()
    no_progress: bool = option(False, flag="--no-progress", help="no progress output (bars or lines)")
    json: bool = option(False, flag="--json", help="print a JSON list, one object per backend")
    config: Any = None

    @classmethod
    def add_arguments(cls, p) -> None:
        A, B = ApproximateBenchConfig, SolverBenchConfig
        sub = p.add_subparsers(dest="bench_command", metavar="WHAT")
        sub.required = True

        s = sub.add_parser("solvers", help="throughput of every solver backend on one core",
                           formatter_class=HelpFormatter)
        add_options(s, B, "n", "eps", "count", "objective", "targets", "solvers", "baseline_count", "time_budget",
                    "batch_size", "seed", "clock", "time_limit", n={"type": _sizes, "default": (B.n,)})
        add_option(s, cls, "json")
        add_remaining(s, B)

        a = sub.add_parser("approximate", help="time one approximate run, stage by stage",
                           formatter_class=HelpFormatter)
        add_options(a, A, "target", "solver", "objective", "weight_eps", "width", "data", "data_dir", "workers",
                    "seed", "out", "plots")
        add_option(a, cls, "no_progress")
        add_option(a, cls, "json", help="print one JSON object")
        add_remaining(a, A)

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> BenchRequest:
        if ns.bench_command == "solvers":
            values = read_fields(ns, SolverBenchConfig)
            sizes = values.pop("n")
            values["solvers"] = _solver_specs(values["solvers"]) if values["solvers"] else None
            return cls(what="solvers", sizes=sizes, json=ns.json, config=SolverBenchConfig(n=sizes[0], **values))
        return cls(what="approximate", json=ns.json, no_progress=ns.no_progress,
                   config=ApproximateBenchConfig(**read_fields(ns, ApproximateBenchConfig)))
