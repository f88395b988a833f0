"""One call from a module to a ticket: :func:`ticket` (``from subsetsum_lth.notebook import ticket``).

    t = ticket(model, example_input, eps=0.5, data="mnist")
    t.module          # the pruned random network (nn.Module), same inputs as ``model``
    t.masks           # {"0.weight": bool tensor, ...} of the random network
    t.certificate     # {"bound": ..., "set": "‖x‖₂ ≤ r, x ≥ 0", ...}
    t.report          # report.json as a dict

The model is read from its graph (``torch.export.export(model.eval(), (example_input,))``, see
:mod:`subsetsum_lth.graph_reader`): exactly what it computes, or a one-line refusal naming the op
it cannot handle. The run is the CLI's ``approximate``; with ``out`` its run folder is written
there (``certify``, ``compare`` read it), else it lives in a temporary folder removed on return.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from subsetsum_lth import api, preprocess
from subsetsum_lth.approximate import ApproximateConfig, approximate
from subsetsum_lth.construction import ConstructionConfig
from subsetsum_lth.data.mnist import evaluation_inputs
from subsetsum_lth.errors import UserError
from subsetsum_lth.target import module_target
from subsetsum_lth.solve import SolveConfig
from subsetsum_lth.target import Target


@dataclass
class Ticket:
    """A strong lottery ticket of a module: the pruned random network and its certificate."""

    module: nn.Module                  #: the pruned random network ĝ, taking the model's inputs
    masks: dict                        #: state_dict key of g -> bool tensor (True: kept)
    certificate: dict                  #: the certified bound and the input set it holds on
    report: dict                       #: the run's report.json
    target: Target                     #: the network read from the model's graph (f)
    out: Path | None = None            #: the run folder (None: a temporary one, removed)
    graph: list = field(default_factory=list)   #: the graph's ops and what each was read as

    def __repr__(self) -> str:
        c = self.certificate
        return (f"Ticket(bound {c['bound']:.4g} on {c['set']}, kept {self.report['kept_parameters']:,} of "
                f"{self.report['total_parameters']:,} weights of g, out={str(self.out) if self.out else None})")


def ticket(model: nn.Module, example_input: torch.Tensor, eps: float | None = None, data: str | None = None,
           out: str | Path | None = None, *, weight_eps: float | None = None, seed: int = 0, workers: int = 1,
           input_radius: float | None = None, input_domain: str | None = None, data_dir=None,
           overwrite: bool = False, **construction) -> Ticket:
    """Prune a random network into an approximation of ``model`` with a certified error.

    ``example_input``: a batch of inputs (or one) of the shape ``model`` takes. ``eps``: the
    network-level bound to certify (else ``weight_eps``, the per-weight tolerance, default 0.01).
    ``data``: 'mnist' or 'fashion-mnist' to evaluate on its test images (and certify on the ball
    around them); ``out``: a folder for the run (else a temporary one). Other keyword arguments
    are ConstructionConfig fields (``width``, ``block_width``, ...). Raises TargetError for a model
    outside the supported ops (named), UserError for bad options."""
    info: dict = {}
    target = preprocess.apply(module_target(model, example_input, info), None)
    eval_data = emp_data = None
    radius, domain = input_radius, input_domain or target.metadata.get("input_domain")
    if data is not None:
        eval_data, emp_data, radius = evaluation_inputs(target.input_dim, data_dir, seed, radius=radius,
                                                        dataset=data)
        domain = domain or "nonnegative"
    try:
        cc = ConstructionConfig(input_domain=domain or "signed", seed=seed, **construction)
    except TypeError as exc:
        raise UserError(f"ticket(): {exc}") from None
    config = ApproximateConfig(construction=cc, solve=SolveConfig(workers=workers), eps=eps, weight_eps=weight_eps,
                               input_radius=ApproximateConfig.input_radius if radius is None else radius,
                               plots=False, overwrite=overwrite,
                               report_extra={"data": data, "target_read_from": "graph",
                                             "target_assumptions": []})
    if out is not None:
        return _finish(approximate(target, config, out, eval_data=eval_data, empirical_data=emp_data),
                       Path(out), target, example_input, info, keep=True)
    with tempfile.TemporaryDirectory(prefix="subsetsum-ticket-") as tmp:
        run_dir = Path(tmp) / "run"
        report = approximate(target, config, run_dir, eval_data=eval_data, empirical_data=emp_data)
        return _finish(report, run_dir, target, example_input, info, keep=False)


def _finish(report: dict, run_dir: Path, target: Target, example_input, info: dict, keep: bool) -> Ticket:
    """The Ticket of a finished run (everything read into memory: the folder may go next)."""
    run = api.load_run(run_dir)
    pruned = api.export_pruned(run)
    x = example_input if example_input.dim() not in (1, 3) else example_input.unsqueeze(0)
    if target.input_shape is None and x.dim() > 2:
        pruned = nn.Sequential(nn.Flatten(), *pruned)    # the model's inputs, flattened as its graph did
    masks = {k: torch.as_tensor(np.asarray(v).astype(bool)).clone() for k, v in run.masks.items()}
    certificate = {"bound": float(report["certified_bound"]), "set": report.get("certified_set"),
                   "input_radius": float(report["input_radius"]), "input_domain": report["input_domain"],
                   "meaning": report.get("certified_meaning")}
    return Ticket(pruned.eval(), masks, certificate, dict(report), target, run_dir if keep else None,
                  list(info.get("graph", [])))
