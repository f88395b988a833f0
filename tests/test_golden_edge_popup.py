"""Golden test for edge-popup: fixed tiny runs on synthetic data must keep producing
byte-identical masks and random networks (issue 12: the split of ``edge_popup.py`` into a
package must not change what a seed gives). Three runs: a wide MLP (free, per-layer top-k), a
network allocated from a target (structured, global top-k) and a ``--from-run`` of the latter
without the inner ReLU. A change that alters these literals changes what users get for a given
seed and must say so (and re-record them) on purpose.

The literals were recorded from commit d4aa85a (before the split) with
``python tests/test_golden_edge_popup.py`` (which prints them).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

#: shared by every run: CPU, one thread, synthetic 20-pixel "images" in 5 classes
COMMON = dict(epochs=2, batch_size=16, train_subset=None, sync_every=3, device="cpu", threads=1,
              plots=False, selection="auto")

CASES = {
    "wide_free_layer": dict(wide="20,H,5", param_budget=400, keep=0.3, seed=11),
    "target_structured_global": dict(from_target="TARGET", block_width=4, keep=0.5, scope="global",
                                     structure="structured", seed=12),
    "from_run_no_inner_relu": dict(from_run="target_structured_global", keep=0.4, structure="structured",
                                   inner_relu=False, seed=13, temperature="batch"),
}

GOLDEN = {  # recorded from commit d4aa85a by ``python tests/test_golden_edge_popup.py``
    "from_run_no_inner_relu": {
        "masks": "6e024efee51558c6b92b4c535471b52a676002be508e88f86109fe7208cf008c",
        "random_net": "99dcbf862ad33bf7294dca60218fa69c4780b487f8018696ada6fca5ac9d4dea",
        "kept_parameters": 304, "test_accuracy": 0.225},
    "target_structured_global": {
        "masks": "3f7569207844063ec2719f805ac74372a9601250e2b343214bb4d989553225ab",
        "random_net": "99dcbf862ad33bf7294dca60218fa69c4780b487f8018696ada6fca5ac9d4dea",
        "kept_parameters": 207, "test_accuracy": 0.15},
    "wide_free_layer": {
        "masks": "b441e1124d31cf384414b6a6475f5f4e32af4c5b597886c44a56029390b77983",
        "random_net": "0ba8b96d20e5caefdca3bc288a67ec158c5d59a2b00d3ef161bcee34829783f9",
        "kept_parameters": 120, "test_accuracy": 0.575},
}


def synthetic_data() -> dict:
    rng = np.random.default_rng(2012)
    x = rng.uniform(0, 1, (160, 20)).astype(np.float32)
    w = rng.standard_normal((20, 5))
    y = np.argmax(x @ w, axis=1).astype(np.int64)
    return {"x_train": x[:120], "y_train": y[:120], "x_test": x[120:], "y_test": y[120:]}


def write_target(path: Path) -> Path:
    from subsetsum_lth.target import random_target, save_target
    save_target(random_target((20, 6, 5), bias=True, seed=3), path)
    return path


def file_digest(path: Path) -> str:
    """sha256 of a safetensors file's content: its tensors (sorted by name; dtype, shape and
    bytes) and its metadata (sorted). Not of the file's bytes: safetensors writes the metadata
    of its header in hash-map order, which changes from process to process."""
    from safetensors import safe_open
    h = hashlib.sha256()
    with safe_open(str(path), framework="numpy") as fh:
        h.update(json.dumps(fh.metadata() or {}, sort_keys=True).encode())
        for key in sorted(fh.keys()):
            a = np.ascontiguousarray(fh.get_tensor(key))
            h.update(f"{key}|{a.dtype}|{a.shape}|".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def run_case(name: str, tmp: Path) -> dict:
    from subsetsum_lth.edge_popup import EdgePopupConfig, run_edge_popup
    spec = dict(CASES[name])
    if spec.get("from_target") == "TARGET":
        spec["from_target"] = str(write_target(tmp / "target.safetensors"))
    if "from_run" in spec:
        (tmp / "source").mkdir()
        run_case(spec["from_run"], tmp / "source")
        spec["from_run"] = str(tmp / "source" / spec["from_run"])
    out = tmp / name
    report = run_edge_popup(EdgePopupConfig(**COMMON, **spec), out, data=synthetic_data())
    assert json.loads((out / "report.json").read_text())["kept_parameters"] == report["kept_parameters"]
    return {
        "masks": file_digest(out / "masks.safetensors"),
        "random_net": file_digest(out / "random_net.safetensors"),
        "kept_parameters": report["kept_parameters"],
        "test_accuracy": report["test_accuracy"],
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_edge_popup(name, tmp_path):
    assert run_case(name, tmp_path) == GOLDEN[name]


if __name__ == "__main__":      # print the literals for GOLDEN (re-record on purpose only)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        for n in sorted(CASES):
            (Path(d) / n).mkdir()
            print(f"    {n!r}: {run_case(n, Path(d) / n)!r},")
