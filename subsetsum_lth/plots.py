"""PNG plots of a run (matplotlib, Agg backend, never shown)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from subsetsum_lth.runfolder import atomic_savefig

log = logging.getLogger(__name__)


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def weight_error_histograms(out: Path, layers, results, tau: float) -> str:
    plt = _plt()
    n = len(layers)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, inst, res in zip(axes[0], layers, results):
        err = np.asarray(res.errors, dtype=float)
        err = err[np.isfinite(err)]
        floor = 1e-12
        bins = np.logspace(np.log10(max(floor, err.min(initial=1.0) if err.size else floor) + floor),
                           np.log10(max(err.max(initial=tau), tau) * 1.5), 50) if err.size else 10
        ax.hist(np.maximum(err, floor), bins=bins, color="#4477aa")
        ax.axvline(tau, color="#cc3311", ls="--", label=f"τ = {tau:.3g}")
        ax.set_xscale("log")
        ax.set_title(f"layer {inst.plan.index + 1}: {inst.plan.q}×{inst.plan.p}, m={inst.plan.m}")
        ax.set_xlabel("|w − ŵ| (weights and biases)")
        ax.set_ylabel("instances")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out) / "weight_error_hist.png"
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path.name


def kept_coefficients(out: Path, layers, results) -> str:
    plt = _plt()
    n = len(layers)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, inst, res in zip(axes[0], layers, results):
        k = res.selections.sum(axis=1)
        ax.hist(k, bins=np.arange(k.max(initial=0) + 2) - 0.5, color="#228833")
        ax.set_title(f"layer {inst.plan.index + 1}: mean {k.mean() if k.size else 0:.2f} kept / weight")
        ax.set_xlabel("kept coefficients per instance")
        ax.set_ylabel("instances")
    fig.tight_layout()
    path = Path(out) / "kept_coefficients.png"
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path.name


def accuracy_bars(out: Path, report: dict) -> str | None:
    if "target_accuracy" not in report:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    vals = [100 * report["target_accuracy"], 100 * report["pruned_accuracy"]]
    bars = ax.bar(["target f", "pruned ĝ"], vals, color=["#4477aa", "#ee6677"])
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}%", ha="center", va="bottom")
    lo = max(0.0, min(vals) - 5)
    ax.set_ylim(lo, 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"agreement {100 * report['prediction_agreement']:.2f}%")
    fig.tight_layout()
    path = Path(out) / "accuracy.png"
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path.name


def run_plots(out: Path, layers, results, report: dict) -> list[str]:
    names = [weight_error_histograms(out, layers, results, report["weight_eps"]),
             kept_coefficients(out, layers, results)]
    acc = accuracy_bars(out, report)
    if acc:
        names.append(acc)
    return names
