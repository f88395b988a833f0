"""Fashion-MNIST: found like MNIST (--data-dir, $SUBSETSUM_LTH_FASHION_DATA, its own user cache),
MD5-checked download from its own mirrors (no network: the URL opener is replaced), and the
image layout for CNNs."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from subsetsum_lth.data import mnist
from subsetsum_lth.data.mnist import (
    FASHION_ENV_VAR, FASHION_FILES, MNIST_FILES, clear_cache, load_dataset, load_mnist, resolve_data_dir,
)
from subsetsum_lth.errors import DataError, UserError


def _shared_fashion_dir() -> Path | None:
    env = os.environ.get(FASHION_ENV_VAR)
    candidates = ([Path(env)] if env else []) + [mnist.default_cache_dir("fashion-mnist")]
    for d in candidates:
        if all((d / s.filename).is_file() or (d / s.raw_name).is_file() for s in FASHION_FILES.values()):
            return d
    return None


FASHION = _shared_fashion_dir()
needs_fashion = pytest.mark.skipif(FASHION is None, reason=(
    f"Fashion-MNIST IDX files not found: set {FASHION_ENV_VAR} to a folder holding the four files"))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SUBSETSUM_LTH_DATA", raising=False)
    monkeypatch.delenv(FASHION_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))

    def no_network(url, timeout):
        raise AssertionError(f"test tried to reach the network: {url}")
    monkeypatch.setattr(mnist, "_urlopen", no_network)


def test_upstream_md5s_and_names():
    assert {n: s.md5 for n, s in FASHION_FILES.items()} == {
        "train-images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels": "25c81989df183df01b3e8a0aad5dffbe",
        "test-images": "bef4ecab320f06d8554ea6380940ec79",
        "test-labels": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    assert [s.filename for s in FASHION_FILES.values()] == [s.filename for s in MNIST_FILES.values()]
    assert all("zalandoresearch" in m or "fashion-mnist" in m for m in mnist.FASHION_MIRRORS)


@needs_fashion
def test_shared_files_via_env_var(monkeypatch):
    monkeypatch.setenv(FASHION_ENV_VAR, str(FASHION))
    clear_cache()
    x, y = load_mnist("train", dataset="fashion-mnist")
    xt, yt = load_dataset("fashion-mnist", "test", as_images=True)
    assert x.shape == (60000, 784) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert xt.shape == (10000, 1, 28, 28) and xt.dtype == np.float32
    # exactly 6000 / 1000 images per class (SOURCES), unlike MNIST
    assert np.bincount(y, minlength=10).tolist() == [6000] * 10
    assert np.bincount(yt, minlength=10).tolist() == [1000] * 10
    # the image layout is the flat layout reshaped (row-major pixels)
    flat, _ = load_mnist("test", dataset="fashion-mnist")
    assert np.array_equal(xt.reshape(10000, -1), flat)
    # $SUBSETSUM_LTH_DATA does not count for Fashion-MNIST, nor the reverse
    monkeypatch.delenv(FASHION_ENV_VAR)
    monkeypatch.setenv("SUBSETSUM_LTH_DATA", str(FASHION))
    with pytest.raises(DataError) as info:
        resolve_data_dir(download=False, dataset="fashion-mnist")
    msg = str(info.value)
    assert "Fashion-MNIST files missing" in msg and FASHION_ENV_VAR in msg
    assert "fashion-mnist" in msg and "--data-dir" in msg


@needs_fashion
def test_data_dir_and_subfolder(tmp_path):
    d = tmp_path / "root" / "fashion-mnist"
    d.mkdir(parents=True)
    for spec in FASHION_FILES.values():
        (d / spec.filename).symlink_to(FASHION / spec.filename)
    assert resolve_data_dir(tmp_path / "root", download=False, dataset="fashion-mnist") == d


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown data set 'cifar10'"):
        resolve_data_dir(download=False, dataset="cifar10")


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def _tiny_files(first_label: int) -> dict[str, bytes]:
    out = {}
    for name, spec in FASHION_FILES.items():
        if name.endswith("images"):
            raw = struct.pack(">IIII", 0x803, 2, 28, 28) + bytes(2 * 784)
        else:
            raw = struct.pack(">II", 0x801, 2) + bytes([first_label, 9])
        out[spec.filename] = gzip.compress(raw)
    return out


def test_download_into_its_own_cache_from_its_mirrors_md5_checked(tmp_path, monkeypatch):
    files = _tiny_files(7)
    specs = {n: s._replace(md5=hashlib.md5(files[s.filename]).hexdigest()) for n, s in FASHION_FILES.items()}
    monkeypatch.setattr(mnist, "FASHION_FILES", specs)
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return _FakeResponse(files[url.rsplit("/", 1)[-1]])
    monkeypatch.setattr(mnist, "_urlopen", fake_urlopen)
    d = resolve_data_dir(download=True, dataset="fashion-mnist")
    assert d == tmp_path / "xdg-cache" / "subsetsum-lth" / "fashion-mnist"
    assert len(calls) == 4 and all(c.startswith(mnist.FASHION_MIRRORS[0]) for c in calls)
    assert sorted(p.name for p in d.iterdir()) == sorted(files)
    # MNIST's cache is another folder: still missing there
    with pytest.raises(DataError, match="MNIST files missing"):
        resolve_data_dir(download=False)

    # a mirror serving other bytes: refused by the MD5, nothing left behind
    d2 = tmp_path / "other"
    monkeypatch.setattr(mnist, "_urlopen", lambda url, timeout: _FakeResponse(b"tampered"))
    with pytest.raises(DataError) as info:
        resolve_data_dir(d2, download=True, dataset="fashion-mnist")
    assert "MD5 mismatch" in str(info.value) and "official Fashion-MNIST" in str(info.value)
    assert FASHION_ENV_VAR in str(info.value)
    assert not any(d2.iterdir())


def test_offline_message_names_the_fashion_env_var(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise OSError("network unreachable")
    monkeypatch.setattr(mnist, "_urlopen", offline)
    with pytest.raises(DataError) as info:
        resolve_data_dir(tmp_path / "none", download=True, dataset="fashion-mnist")
    msg = str(info.value)
    assert "Fashion-MNIST files missing" in msg and FASHION_ENV_VAR in msg
    assert mnist.FASHION_MIRRORS[1] + "t10k-labels-idx1-ubyte.gz" in msg or "network unreachable" in msg


@needs_fashion
def test_train_target_on_fashion_records_the_data_set(tmp_path):
    from safetensors import safe_open

    from subsetsum_lth.train import TrainConfig, train_target
    s = train_target(TrainConfig(data_dir=str(FASHION), dataset="fashion-mnist", hidden=(16,),
                                 train_subset=2000, epochs=2, batch_size=32, lr=0.02, threads=1), tmp_path)
    assert s["dataset"] == "fashion-mnist" and s["n_train"] == 2000
    assert s["test_accuracy"] > 0.6        # 0.69-0.70 over seeds 0-4; chance is 0.1
    with safe_open(str(tmp_path / "target.safetensors"), framework="pt") as f:
        assert f.metadata()["dataset"] == "fashion-mnist"
