"""The one reader of the command line (a package: generate.py, target_file.py and one module
per group of commands): parsed flags -> a frozen, checked request per command.

Two halves:

* :func:`add_options` generates argparse options from dataclass fields made with
  :func:`subsetsum_lth.options.option` (flag, help, choices, metavar in the field's metadata; the
  value's type from its annotation; the default from the field) — the library's config classes
  (ConstructionConfig, SolveConfig, ApproximateConfig, BoxConfig, EdgePopupConfig, TrainConfig,
  SolverBenchConfig, ApproximateBenchConfig) and the request classes below declare their flags
  that way. A command lists its options in the order --help shows them; :func:`add_remaining`
  then adds any flagged field it did not list, so a new config field is a flag at once. (The
  target-file options --layers, --arch, --input-normalize/--input-scale, --expected-accuracy,
  whose help differs per command, are still written out in commands/_target_args.py.)
* ``XRequest.from_args(namespace)`` is the only place an ``argparse.Namespace`` is read: it builds
  the command's configs (whose ``__post_init__`` checks every number), runs every check that
  involves more than one flag, and returns a frozen request. The command's ``run(request)``
  never sees the namespace (tests/test_request.py holds every other module to that).

The library config classes are imported inside the functions, as the commands did: building the
parser of ``subsetsum-lth solvers`` must not import torch.
"""
from __future__ import annotations

from subsetsum_lth.request.approximate import ApproximateRequest
from subsetsum_lth.request.bench import BenchRequest
from subsetsum_lth.request.generate import add_option, add_options, add_remaining
from subsetsum_lth.request.runs import (CertifyRequest, CompareRequest, ExportDenseRequest, InspectRequest,
                                        SolversRequest)
from subsetsum_lth.request.training import EdgePopupRequest, TrainTargetRequest

__all__ = ["ApproximateRequest", "BenchRequest", "CertifyRequest", "CompareRequest", "EdgePopupRequest",
           "ExportDenseRequest", "InspectRequest", "SolversRequest", "TrainTargetRequest", "add_option",
           "add_options", "add_remaining"]
