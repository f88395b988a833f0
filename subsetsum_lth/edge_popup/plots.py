"""The training-curve figure of an edge-popup run folder."""
from __future__ import annotations

from pathlib import Path

from subsetsum_lth import runfolder as rf

CURVE_PNG = "training_curve.png"


def plot_curve(out: Path, curve: list[dict], title: str) -> str:
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    steps = [c for c in curve if "train_loss" in c]
    epochs = [c for c in curve if "test_accuracy" in c]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.plot([c["step"] for c in steps], [c["train_loss"] for c in steps], color="#4477aa")
    a1.set_xlabel("step")
    a1.set_ylabel("CE(logits / T), window mean")
    a1.set_yscale("log")
    a2.plot([c["step"] for c in steps], [100 * c["train_accuracy"] for c in steps], color="#4477aa",
            label="train (window)")
    if epochs:
        a2.plot([c["step"] for c in epochs], [100 * c["test_accuracy"] for c in epochs], "o-",
                color="#ee6677", label="test (end of epoch)")
    a2.axhline(10, color="#999999", ls=":", lw=1, label="chance (10 classes)")
    a2.set_xlabel("step")
    a2.set_ylabel("accuracy (%)")
    a2.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(out) / CURVE_PNG
    rf.atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path.name
