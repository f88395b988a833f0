"""MNIST IDX parsing, locating, checked download (no network: the URL opener is replaced)."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from subsetsum_lth.data import mnist
from subsetsum_lth.data.mnist import (
    MNIST_FILES, clear_cache, input_radius, load_mnist, parse_idx, resolve_data_dir,
)
from subsetsum_lth.errors import DataError, UserError

from tests.helpers import NO_MNIST_REASON, shared_mnist_dir


DATA = shared_mnist_dir()
needs_data = pytest.mark.skipif(DATA is None, reason=NO_MNIST_REASON)


def _path(name: str) -> Path:
    spec = MNIST_FILES[name]
    p = DATA / spec.filename
    return p if p.is_file() else DATA / spec.raw_name


def _raw_bytes(name: str) -> bytes:
    p = _path(name)
    data = p.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test sees the real user cache or an inherited SUBSETSUM_LTH_DATA unless it sets one."""
    monkeypatch.delenv("SUBSETSUM_LTH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))

    def no_network(url, timeout):
        raise AssertionError(f"test tried to reach the network: {url}")
    monkeypatch.setattr(mnist, "_urlopen", no_network)


# ---------------------------------------------------------------------------- parse_idx

def test_official_md5s():
    assert {n: s.md5 for n, s in MNIST_FILES.items()} == {
        "train-images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels": "d53e105ee54ea40749a09fcbcd1e9432",
        "test-images": "9fb629c4189551a2d022fa330f9573f3",
        "test-labels": "ec29112dd5afa0611ce80d1b7f02629c",
    }


@needs_data
def test_parse_shared_files():
    train_x = parse_idx(_path("train-images"))
    test_x = parse_idx(_path("test-images"))
    train_y = parse_idx(_path("train-labels"))
    test_y = parse_idx(_path("test-labels"))
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (10000, 28, 28) and test_x.dtype == np.uint8
    assert train_y.shape == (60000,) and test_y.shape == (10000,)
    train_counts = np.bincount(train_y, minlength=10)
    test_counts = np.bincount(test_y, minlength=10)
    assert train_counts.sum() == 60000 and test_counts.sum() == 10000
    assert train_counts[1] == 6742 and test_counts[1] == 1135
    assert train_counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert abs(train_x.mean() - 33.318421) < 1e-5


@needs_data
def test_raw_copies_work(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    # raw (un-gzipped) test files; the training files as links to the .gz originals
    for name in ("test-images", "test-labels"):
        (d / MNIST_FILES[name].raw_name).write_bytes(_raw_bytes(name))
    for name in ("train-images", "train-labels"):
        os.symlink(_path(name).resolve(), d / _path(name).name)
    y = parse_idx(d / MNIST_FILES["test-labels"].raw_name)
    assert y.shape == (10000,) and np.bincount(y)[1] == 1135
    assert resolve_data_dir(d, download=False) == d
    x, y2 = load_mnist("test", data_dir=d, download=False)
    assert x.shape == (10000, 784) and np.array_equal(y, y2)


def _write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_truncated_raw_file(tmp_path):
    header = struct.pack(">IIII", 0x803, 10, 28, 28)
    p = _write(tmp_path / "imgs-idx3-ubyte", header + bytes(28 * 28 * 10 - 5))
    with pytest.raises(DataError, match="imgs-idx3-ubyte.*truncated"):
        parse_idx(p)


def test_trailing_bytes(tmp_path):
    p = _write(tmp_path / "lbl-idx1-ubyte", struct.pack(">II", 0x801, 3) + bytes(4))
    with pytest.raises(DataError, match="lbl-idx1-ubyte.*trailing"):
        parse_idx(p)


def test_valid_synthetic_files(tmp_path):
    labels = np.arange(7, dtype=np.uint8)
    p = _write(tmp_path / "l.gz", struct.pack(">II", 0x801, 7) + labels.tobytes(), gz=True)
    assert parse_idx(p).tolist() == labels.tolist()
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = _write(tmp_path / "i", struct.pack(">IIII", 0x803, 2, 3, 4) + imgs.tobytes())
    out = parse_idx(p)
    assert out.shape == (2, 3, 4) and np.array_equal(out, imgs) and out.flags.writeable


@needs_data
def test_truncated_gzip(tmp_path):
    data = _path("train-labels").read_bytes()
    if data[:2] != b"\x1f\x8b":
        data = gzip.compress(data)
    p = _write(tmp_path / "train-labels-idx1-ubyte.gz", data[: len(data) // 2])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        parse_idx(p)


@pytest.mark.parametrize("magic", [0x804, 0x901, 0x0D03, 0x802, 0x12345678])
def test_wrong_magic(tmp_path, magic):
    p = _write(tmp_path / "bad-magic-idx3-ubyte.gz",
               struct.pack(">IIII", magic, 1, 2, 2) + bytes(4), gz=True)
    with pytest.raises(DataError, match=r"bad-magic-idx3-ubyte\.gz.*magic"):
        parse_idx(p)


def test_bad_gzip(tmp_path):
    p = _write(tmp_path / "garbage-idx1-ubyte.gz", b"\x1f\x8b\x08\x00" + b"not really gzip" * 10)
    with pytest.raises(DataError, match=r"garbage-idx1-ubyte\.gz.*gzip"):
        parse_idx(p)
    p = _write(tmp_path / "plain-idx1-ubyte.gz", b"this is not gzip at all")
    with pytest.raises(DataError, match=r"plain-idx1-ubyte\.gz.*not gzip"):
        parse_idx(p)


def test_empty_and_missing_file(tmp_path):
    p = _write(tmp_path / "empty-idx1-ubyte", b"")
    with pytest.raises(DataError, match="empty-idx1-ubyte"):
        parse_idx(p)
    with pytest.raises(DataError, match="nope-idx1-ubyte"):
        parse_idx(tmp_path / "nope-idx1-ubyte")


def test_data_error_is_user_error():
    assert issubclass(DataError, UserError)


@needs_data
def test_load_rejects_wrong_shape(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for name in MNIST_FILES:
        os.symlink(_path(name).resolve(), d / _path(name).name)
    (d / _path("test-labels").name).unlink()
    # 9999 labels instead of 10000: a valid IDX file of the wrong size
    _write(d / MNIST_FILES["test-labels"].raw_name,
           struct.pack(">II", 0x801, 9999) + bytes(9999))
    with pytest.raises(DataError, match="expected"):
        load_mnist("test", data_dir=d, download=False)


# ------------------------------------------------------------------ resolve_data_dir

def test_nothing_found_offline_lists_missing_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        resolve_data_dir(empty, download=False)
    msg = str(info.value)
    for spec in MNIST_FILES.values():
        assert spec.filename in msg
    assert str(empty) in msg and str(empty / "mnist") in msg
    assert "--data-dir" in msg and "SUBSETSUM_LTH_DATA" in msg


def test_nothing_found_default_cache(tmp_path):
    with pytest.raises(DataError) as info:
        resolve_data_dir(download=False)
    msg = str(info.value)
    assert str(tmp_path / "xdg-cache" / "subsetsum-lth" / "mnist") in msg
    assert "t10k-labels-idx1-ubyte.gz" in msg


def test_partial_dir_lists_only_missing(tmp_path):
    d = tmp_path / "partial"
    d.mkdir()
    (d / "train-labels-idx1-ubyte").write_bytes(b"x")
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"x")
    with pytest.raises(DataError) as info:
        resolve_data_dir(d, download=False)
    missing_line = str(info.value).splitlines()[0]
    assert "train-images-idx3-ubyte.gz" in missing_line and "t10k-images-idx3-ubyte.gz" in missing_line
    assert "labels" not in missing_line


def _link_all(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        os.symlink(_path(name).resolve(), dest / _path(name).name)
    return dest


@needs_data
def test_env_var_honoured(tmp_path, monkeypatch):
    d = _link_all(tmp_path / "from-env")
    monkeypatch.setenv("SUBSETSUM_LTH_DATA", str(d))
    assert resolve_data_dir(download=False) == d
    x, y = load_mnist("test", download=False)
    assert x.shape == (10000, 784)
    # an explicit directory wins over the environment variable
    other = _link_all(tmp_path / "explicit")
    assert resolve_data_dir(other, download=False) == other


@needs_data
def test_mnist_subfolder_and_xdg_cache(tmp_path):
    d = _link_all(tmp_path / "xdg-cache" / "subsetsum-lth" / "mnist" / "mnist")
    assert resolve_data_dir(download=False) == d


@needs_data
def test_shared_dir_via_env(monkeypatch):
    monkeypatch.setenv("SUBSETSUM_LTH_DATA", str(DATA))
    assert resolve_data_dir(download=False) == DATA


# ---------------------------------------------------------------------------- download

class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def _serve(monkeypatch, files: dict[str, bytes], calls: list | None = None, fail_hosts=()):
    def fake_urlopen(url, timeout):
        if calls is not None:
            calls.append(url)
        if any(h in url for h in fail_hosts):
            raise urllib.error.URLError("simulated outage")
        name = url.rsplit("/", 1)[-1]
        if name not in files:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        return _FakeResponse(files[name])
    monkeypatch.setattr(mnist, "_urlopen", fake_urlopen)


def _fake_mirror(monkeypatch, files: dict[str, bytes]):
    """Pretend the official MD5s are those of ``files`` (so small fake files 'verify')."""
    specs = {}
    for name, spec in MNIST_FILES.items():
        data = files.get(spec.filename)
        md5 = hashlib.md5(data).hexdigest() if data is not None else spec.md5
        specs[name] = spec._replace(md5=md5)
    monkeypatch.setattr(mnist, "MNIST_FILES", specs)


def _tiny_files() -> dict[str, bytes]:
    out = {}
    for name, spec in MNIST_FILES.items():
        n = 3
        if name.endswith("images"):
            raw = struct.pack(">IIII", 0x803, n, 28, 28) + bytes(range(256)) * 9 + bytes(n * 784 - 256 * 9)
        else:
            raw = struct.pack(">II", 0x801, n) + bytes([1, 2, 3])
        out[spec.filename] = gzip.compress(raw)
    return out


def test_download_ok_into_cache(tmp_path, monkeypatch):
    files = _tiny_files()
    _fake_mirror(monkeypatch, files)
    calls = []
    _serve(monkeypatch, files, calls)
    d = resolve_data_dir(download=True)
    assert d == tmp_path / "xdg-cache" / "subsetsum-lth" / "mnist"
    assert sorted(p.name for p in d.iterdir()) == sorted(files)  # no temp files left
    for name, data in files.items():
        assert (d / name).read_bytes() == data
    assert len(calls) == 4 and all(c.startswith(mnist.MIRRORS[0]) for c in calls)
    # second call: found, no network
    _serve(monkeypatch, {}, calls)
    assert resolve_data_dir(download=True) == d and len(calls) == 4


def test_download_falls_back_to_second_mirror(tmp_path, monkeypatch):
    files = _tiny_files()
    _fake_mirror(monkeypatch, files)
    calls = []
    _serve(monkeypatch, files, calls, fail_hosts=("amazonaws",))
    d = resolve_data_dir(tmp_path / "dl", download=True, progress=True)
    assert all((d / n).is_file() for n in files)
    assert sum(mnist.MIRRORS[1] in c for c in calls) == 4


def test_download_only_missing_files(tmp_path, monkeypatch):
    files = _tiny_files()
    _fake_mirror(monkeypatch, files)
    d = tmp_path / "some"
    d.mkdir()
    (d / "train-labels-idx1-ubyte").write_bytes(gzip.decompress(files["train-labels-idx1-ubyte.gz"]))
    calls = []
    _serve(monkeypatch, files, calls)
    assert resolve_data_dir(d) == d
    assert len(calls) == 3 and not any("train-labels" in c for c in calls)


@needs_data
def test_download_real_bytes_md5_checked(tmp_path, monkeypatch):
    """The official MD5s, served the official bytes (from the local copies)."""
    files = {}
    for name, spec in MNIST_FILES.items():
        data = _path(name).read_bytes()
        files[spec.filename] = data if data[:2] == b"\x1f\x8b" else None
    if any(v is None for v in files.values()):
        pytest.skip("the local MNIST copies are not the gzipped originals")
    _serve(monkeypatch, files)
    d = resolve_data_dir(tmp_path / "real", download=True)
    clear_cache()
    x, y = load_mnist("test", data_dir=d, download=False)
    assert x.shape == (10000, 784) and np.bincount(y)[1] == 1135


def test_md5_mismatch_deletes_and_raises(tmp_path, monkeypatch):
    files = _tiny_files()
    _fake_mirror(monkeypatch, files)
    tampered = dict(files)
    victim = "t10k-images-idx3-ubyte.gz"
    tampered[victim] = files[victim][:-1] + bytes([files[victim][-1] ^ 0xFF])
    _serve(monkeypatch, tampered)
    d = tmp_path / "tampered"
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*MD5 mismatch"):
        resolve_data_dir(d, download=True)
    assert not (d / victim).exists()
    assert not any(p.name.startswith(".") for p in d.iterdir())  # no temp file left behind


def test_offline_download_one_clear_error(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError(OSError("Name or service not known"))
    monkeypatch.setattr(mnist, "_urlopen", offline)
    d = tmp_path / "offline"
    with pytest.raises(DataError) as info:
        resolve_data_dir(d, download=True)
    msg = str(info.value)
    for spec in MNIST_FILES.values():
        assert spec.filename in msg
    assert str(d) in msg and "--data-dir" in msg and "SUBSETSUM_LTH_DATA" in msg
    assert "Name or service not known" in msg
    assert list(d.iterdir()) == []


# ------------------------------------------------------------------------- load_mnist

@needs_data
def test_load_mnist_and_cache():
    clear_cache()
    x, y = load_mnist("train", data_dir=DATA, download=False)
    assert x.shape == (60000, 784) and x.dtype == np.float32
    assert y.shape == (60000,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    x2, y2 = load_mnist("train", data_dir=DATA, download=False)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x2[0, 0] = 5.0  # callers own their arrays: the cache is not affected
    x3, _ = load_mnist("train", data_dir=DATA, download=False)
    assert x3[0, 0] == 0.0 and x3.flags.writeable
    with pytest.raises(ValueError):
        load_mnist("valid", data_dir=DATA)


@needs_data
def test_input_radius():
    r = input_radius(DATA)
    norms = [np.linalg.norm(load_mnist(s, DATA, download=False)[0].astype(np.float64), axis=1).max()
             for s in ("train", "test")]
    assert max(norms) <= r <= max(norms) * (1 + 1e-12)
    assert 10 < r < 28
