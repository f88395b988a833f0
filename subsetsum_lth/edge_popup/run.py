"""``run_edge_popup``: load the random network and the data, train the scores, evaluate, write
the run folder. Each step lives in its own module; this one only calls them in order."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import torch

from subsetsum_lth import limits, manifest
from subsetsum_lth.edge_popup.config import EdgePopupConfig
from subsetsum_lth.edge_popup.evaluate import final_test_accuracy
from subsetsum_lth.edge_popup.folder import (build_report, header, model_input_dim, network_sizes, prepare_out,
                                             write_run)
from subsetsum_lth.edge_popup.network import EdgePopupNet, relu_layout
from subsetsum_lth.edge_popup.sources import dataset_of, eligibility, input_op_of, load_random_net
from subsetsum_lth.edge_popup.train import (Progress, device_description, load_data, resolve_device,
                                            train_scores)
from subsetsum_lth.netdigest import weights_digest

log = logging.getLogger(__name__)


def run_edge_popup(config: EdgePopupConfig, out: str | Path, progress: Progress | None = None,
                   data: dict | None = None, on_start: Callable[[dict], None] | None = None,
                   on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Search masks on the random network by edge-popup and write a run folder (locked and listed
    in its manifest while this runs; see :mod:`subsetsum_lth.manifest`). See :func:`_run_edge_popup`."""
    with manifest.session(out):
        return _run_edge_popup(config, out, progress, data, on_start, on_epoch)


def _run_edge_popup(config: EdgePopupConfig, out: str | Path, progress: Progress | None = None,
                    data: dict | None = None, on_start: Callable[[dict], None] | None = None,
                    on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Search masks on the random network by edge-popup and write a run folder. Returns the report.

    Args:
        progress: factory ``progress(total_steps, desc) -> bar``; see :mod:`subsetsum_lth.progress`.
        on_start: called once before the first training step with the run's header (network,
            parameters, keep fraction, per-layer kept counts, steps, device, weight scales).
        on_epoch: called after every epoch with that epoch's curve point (loss, accuracies, seconds).
        data: optional ``{"x_train", "y_train", "x_test", "y_test"}`` arrays (default: MNIST
            from ``config.data_dir``, pixels / 255).
    """
    t_start = time.perf_counter()
    config.validate()
    out = Path(out)
    timings: dict[str, float] = {}
    device = resolve_device(config.device)
    old_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(limits.cap_threads(int(config.threads)))
    threads, device_name = torch.get_num_threads(), device_description(device)
    try:
        t = time.perf_counter()
        net = load_random_net(config)
        # the run's (or target's) recorded data set, or --data; a contradiction is refused here,
        # before the output folder is touched
        dataset = dataset_of(net, config) if data is None else config.data
        prepare_out(out, config.overwrite, [net.copy_from], net.state)
        allowed = eligibility(net, config.structure, config.inner_relu)
        digest = weights_digest(net.state)
        timings["load"] = time.perf_counter() - t

        t = time.perf_counter()
        xs, ys = load_data(config, net.state, device, data, net.layout, dataset or "mnist")
        timings["data"] = time.perf_counter() - t

        if net.layout is not None and net.layout.graph is not None:
            # a residual g: the ReLUs inside its pairs are those layout.inner_relus() flags
            relu_after = [config.inner_relu or not inner for inner in net.layout.inner_relus()]
        else:
            relu_after = relu_layout(len([k for k in net.state if k.endswith(".weight")]), config.inner_relu)
        t = time.perf_counter()
        model = EdgePopupNet(net.state, allowed, config.keep, config.scope, config.seed, device,
                             config.selection, relu_after, ops=net.ops(), input_shape=net.input_shape,
                             input_op=input_op_of(net))
        timings["setup"] = time.perf_counter() - t
        log.info("edge-popup on %s: %s scored entries, keep %.4g (%s, %s), device %s",
                 "-".join(map(str, network_sizes(model))),
                 f"{model.n_eligible:,}", config.keep, config.scope, config.structure, device)

        n_train, n_test = int(xs[0].shape[0]), int(xs[1].shape[0])
        if on_start is not None:
            on_start({**header(model, net, config, device_name, n_train, n_test), "data": dataset})
        t = time.perf_counter()
        with_target = net.target is not None and net.target.input_dim == model_input_dim(model)
        # with a target and no per-epoch evaluation, the final test accuracy comes from the same
        # pass as the agreement with the target (one forward pass over the test set, not two)
        eval_in_training = config.eval_every_epoch or not with_target
        trained = train_scores(model, xs[0], ys[0], config, xs[1] if eval_in_training else None,
                               ys[1] if eval_in_training else None, progress, on_epoch)
        timings["train"] = time.perf_counter() - t

        t = time.perf_counter()
        masks = model.final_masks()
        test_acc, evaluation = final_test_accuracy(model, net.target if with_target else None,
                                                   trained["final"], xs[1], ys[1])
        timings["evaluate"] = time.perf_counter() - t
        # the weights were never touched
        for key, w in model.frozen_weights().items():
            if w.requires_grad:
                raise AssertionError(f"weight {key} requires grad")
    finally:
        torch.set_num_threads(old_threads)

    report, metrics = build_report(config, net, model, masks, trained, evaluation, test_acc,
                                   device_type=device.type, device_name=device_name, threads=threads,
                                   relu_after=relu_after, digest=digest, n_train=n_train, n_test=n_test,
                                   timings=timings)
    if dataset is not None:
        report["data"] = dataset
    write_run(out, config, net, masks, report, metrics, digest, timings, t_start)
    return report
