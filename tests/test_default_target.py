"""The built-in default target of `approximate`: MNIST when found, else synthetic, said so."""
from __future__ import annotations

import numpy as np

from subsetsum_lth import default_target as dt
from subsetsum_lth.cli import main
from subsetsum_lth.errors import DataError
from subsetsum_lth.target import random_target, save_target


def test_synthetic_when_mnist_is_missing(monkeypatch):
    def missing(*a, **k):
        raise DataError("MNIST files missing")
    monkeypatch.setattr("subsetsum_lth.default_target.resolve_data_dir", missing)
    got = dt.default_target(seed=3)
    assert got.kind == "synthetic" and "could not be downloaded" in got.description
    assert got.target.sizes == list(dt.SYNTHETIC_SIZES) and got.target.has_bias
    norms = [np.linalg.norm(L.weight, 2) for L in got.target.layers]
    assert max(norms) <= 1.0 + 1e-9                      # inside Theorem 1's class
    again = dt.default_target(seed=3)
    assert all(np.array_equal(a.weight, b.weight) for a, b in zip(got.target.layers, again.target.layers))


def test_mnist_default_is_trained_once_and_cached(mnist_dir, tmp_path, monkeypatch):
    folder = tmp_path / "mnist-784-500-10-seed0"
    cached = random_target((784, 6, 10), bias=True, seed=1)
    folder.mkdir()
    save_target(cached, folder / "target.safetensors")

    def no_training(*a, **k):
        raise AssertionError("a cached default target must not be trained again")
    monkeypatch.setattr("subsetsum_lth.default_target.train_target", no_training)
    got = dt.default_target(seed=0, data_dir=mnist_dir, cache_dir=tmp_path)
    assert got.kind == "mnist" and str(folder) in got.description
    assert np.array_equal(got.target.layers[0].weight, cached.layers[0].weight)
    assert got.data_dir is not None


def test_synthetic_flag(tmp_path):
    got = dt.default_target(seed=0, synthetic=True)
    assert got.kind == "synthetic"
    assert got.description.startswith("no --target given, --synthetic: using a seeded synthetic 784-300-10")
    assert "no MNIST" not in got.description          # MNIST may well be there: it was not asked for


def test_synthetic_and_target_exclude_each_other(tmp_path, capsys):
    save_target(random_target((3, 2), seed=0), tmp_path / "t.safetensors")
    rc = main(["approximate", "--target", str(tmp_path / "t.safetensors"), "--synthetic",
               "--out", str(tmp_path / "run")])
    assert rc == 2 and "--synthetic" in capsys.readouterr().err
    assert not (tmp_path / "run" / "report.json").exists()


def test_bad_out_is_refused_before_the_default_target_is_trained(tmp_path, capsys, monkeypatch):
    """A first run takes minutes to train the default target: a --out that approximate will refuse,
    or an executor it cannot use, is refused before that, not after; nothing changes on disk."""
    def no_training(*a, **k):
        raise AssertionError("the default target was built before --out was checked")
    monkeypatch.setattr("subsetsum_lth.commands.approximate.default_target", no_training)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    assert main(["approximate", "--out", str(mine)]) == 2
    assert capsys.readouterr().err == (
        f"error: {mine} is not empty and has no manifest.json, so subsetsum-lth did not write it (or an "
        "older version did): it holds notes.txt; nothing was changed. Choose a new or empty folder for --out\n")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    assert main(["approximate", "--out", str(tmp_path / "file")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert main(["approximate", "--out", str(tmp_path / "new"), "--executor", "dask"]) == 2
    err = capsys.readouterr().err                  # no --scheduler (or no dask extra): the fix is named
    assert err.startswith("error: --executor dask needs --scheduler") or "pip install" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine"]
