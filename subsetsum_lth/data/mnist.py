"""MNIST and Fashion-MNIST from the standard IDX files: parsing, locating, checked download, loading.

Both data sets have the same four file names and sizes; ``dataset`` ("mnist", the default, or
"fashion-mnist") selects which one. Where the files are looked for (the first source that
applies is the only one used):

1. an explicit ``data_dir`` (the CLI's ``--data-dir``),
2. else the directory in ``$SUBSETSUM_LTH_DATA`` (MNIST) or ``$SUBSETSUM_LTH_FASHION_DATA``
   (Fashion-MNIST),
3. else the user cache ``$XDG_CACHE_HOME/subsetsum-lth/mnist`` (``.../fashion-mnist``;
   ``~/.cache/...`` by default).

Inside that directory each file may be gzipped (``train-images-idx3-ubyte.gz``) or raw
(``train-images-idx3-ubyte``), directly or in a ``mnist/`` (``fashion-mnist/``) subfolder. When files are missing
and downloading is allowed, the missing ones are fetched from :data:`MIRRORS` into that
directory, written to a temporary file, checked against the official MD5 and only then
renamed into place. Without network (or with ``download=False``) one :class:`DataError`
says which files are missing and where to put them.

Images are returned as float32 in [0, 1] (pixel / 255): a non-negative input domain, flat
``[N, 784]`` or, with ``as_images=True`` (for CNNs), ``[N, 1, 28, 28]``.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import struct
import tempfile
import threading
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from subsetsum_lth.errors import DataError, UserError

log = logging.getLogger(__name__)

#: environment variable naming a directory that holds the four MNIST files
ENV_VAR = "SUBSETSUM_LTH_DATA"

#: download mirrors, tried in order; each serves the four official ``.gz`` files
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

#: seconds before a stalled download connection is given up
DOWNLOAD_TIMEOUT = 60.0


class MnistFile(NamedTuple):
    filename: str          #: official (gzipped) file name
    md5: str               #: MD5 of the official .gz file
    shape: tuple           #: array shape once parsed

    @property
    def raw_name(self) -> str:
        """The un-gzipped file name (also accepted on disk)."""
        return self.filename[:-3] if self.filename.endswith(".gz") else self.filename


#: name -> (filename, md5 of the .gz, expected shape). MD5s: the official list of the
#: original distribution's files.
MNIST_FILES: dict[str, MnistFile] = {
    "train-images": MnistFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                              (60000, 28, 28)),
    "train-labels": MnistFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432",
                              (60000,)),
    "test-images": MnistFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3",
                             (10000, 28, 28)),
    "test-labels": MnistFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c",
                             (10000,)),
}

#: environment variable naming a directory that holds the four Fashion-MNIST files
FASHION_ENV_VAR = "SUBSETSUM_LTH_FASHION_DATA"

#: Fashion-MNIST download locations (Zalando Research's: the GitHub repository's data folder and
#: the S3 bucket its README links), tried in order; the MD5 check guards both
FASHION_MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)

#: Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): the same file names and shapes as MNIST; MD5s of
#: the upstream .gz files (zalandoresearch/fashion-mnist's README), checked on download
FASHION_FILES: dict[str, MnistFile] = {
    "train-images": MnistFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                              (60000, 28, 28)),
    "train-labels": MnistFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe",
                              (60000,)),
    "test-images": MnistFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79",
                             (10000, 28, 28)),
    "test-labels": MnistFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310",
                             (10000,)),
}

#: the data sets this module reads (the CLI's --data)
DATASETS = ("mnist", "fashion-mnist")

SPLITS = ("train", "test")


@dataclass(frozen=True)
class _Dataset:
    name: str          #: "mnist" or "fashion-mnist" (also the cache and sub-folder name)
    title: str         #: for messages
    files: dict        #: name -> MnistFile
    mirrors: tuple
    env_var: str


def _dataset(name: str = "mnist") -> _Dataset:
    """The description of data set ``name``, read from the module globals at call time."""
    if name == "mnist":
        return _Dataset("mnist", "MNIST", MNIST_FILES, MIRRORS, ENV_VAR)
    if name == "fashion-mnist":
        return _Dataset("fashion-mnist", "Fashion-MNIST", FASHION_FILES, FASHION_MIRRORS, FASHION_ENV_VAR)
    raise UserError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")

# IDX: magic = 0x00 0x00 <dtype code> <ndim>, then ndim big-endian uint32 sizes, then data.
_IDX_DTYPES = {0x08: np.dtype(np.uint8)}
_IDX_EXPECTED_NDIM = {1: "labels", 3: "images"}  # 0x00000801 labels, 0x00000803 images


# --------------------------------------------------------------------------------------------
# IDX parsing
# --------------------------------------------------------------------------------------------

#: largest IDX payload accepted (bytes); the MNIST training images are 47,040,000
MAX_IDX_BYTES = 64 * 2**20


def _open_idx(path: Path, fh):
    """The decompressed stream of an open IDX file (gzip or raw); nothing is read ahead."""
    head = fh.read(2)
    fh.seek(0)
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=fh)
    if path.name.endswith(".gz"):
        raise DataError(f"{path}: the name ends in .gz but the file is not gzip data "
                        f"(first bytes {head!r}); delete it and download it again")
    return fh


def _read_idx(path: Path, expected_shape: tuple | None = None) -> tuple[tuple, bytes]:
    """(dims, payload) of an IDX file, reading the header first and then at most the declared
    payload + 1 byte, so a file whose header is absurd, not the expected one, or that holds more
    data than declared (a decompression bomb) is refused before its data is read."""
    try:
        with open(path, "rb") as fh:
            try:
                stream = _open_idx(path, fh)
                head = stream.read(4)
                if len(head) < 4:
                    raise DataError(f"{path}: only {len(head)} bytes, too short for an IDX header "
                                    f"(truncated or not an IDX file)")
                magic = struct.unpack(">I", head)[0]
                zero, dtype_code, ndim = head[0:2], head[2], head[3]
                if zero != b"\x00\x00" or dtype_code not in _IDX_DTYPES or ndim not in _IDX_EXPECTED_NDIM:
                    raise DataError(f"{path}: bad IDX magic number 0x{magic:08x} (expected 0x00000801 "
                                    f"for labels or 0x00000803 for images); not an MNIST IDX file")
                raw_dims = stream.read(4 * ndim)
                if len(raw_dims) < 4 * ndim:
                    raise DataError(f"{path}: truncated IDX header ({4 + len(raw_dims)} bytes, "
                                    f"{4 + 4 * ndim} needed)")
                dims = struct.unpack(f">{ndim}I", raw_dims)
                if any(d == 0 for d in dims):
                    raise DataError(f"{path}: IDX header declares an empty dimension {dims}")
                if expected_shape is not None and tuple(dims) != tuple(expected_shape):
                    raise DataError(f"{path}: the IDX header declares shape {tuple(dims)}, expected "
                                    f"{tuple(expected_shape)} for this MNIST file; delete it and "
                                    f"download it again")
                expected = math.prod(dims) * _IDX_DTYPES[dtype_code].itemsize
                if expected > MAX_IDX_BYTES:
                    raise DataError(f"{path}: the IDX header declares shape {tuple(dims)} "
                                    f"({expected:,} data bytes), more than any MNIST file "
                                    f"({MAX_IDX_BYTES:,} bytes at most); not an MNIST IDX file")
                payload = stream.read(expected + 1)
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                raise DataError(
                    f"{path}: corrupt or truncated gzip data ({exc or type(exc).__name__}); "
                    f"delete the file and download it again") from exc
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    if len(payload) != expected:
        if len(payload) < expected:
            raise DataError(f"{path}: file truncated: the header declares shape {tuple(dims)} "
                            f"({expected} data bytes) but the file holds {len(payload)} data bytes")
        raise DataError(f"{path}: file has trailing bytes: the header declares shape {tuple(dims)} "
                        f"({expected} data bytes) but the file holds more; delete it and download "
                        f"it again")
    return dims, payload


def parse_idx(path, expected_shape: tuple | None = None) -> np.ndarray:
    """Read one IDX file (gzipped or raw) into a uint8 array of the shape its header declares.

    Only the two MNIST kinds are accepted: magic ``0x00000801`` (1-d, uint8 labels) and
    ``0x00000803`` (3-d, uint8 images). The payload must have exactly the declared size, at most
    :data:`MAX_IDX_BYTES`, and the shape must be ``expected_shape`` when given; the header is
    checked before the data is read, and no more than the declared size (+1 byte) is ever read
    or decompressed. Anything else raises :class:`DataError` naming the file and what is wrong.
    """
    path = Path(path)
    dims, payload = _read_idx(path, expected_shape)
    arr = np.frombuffer(payload, dtype=np.uint8).reshape(dims)
    return arr.copy()  # own, writeable memory (frombuffer over bytes is read-only)


# --------------------------------------------------------------------------------------------
# Locating and downloading
# --------------------------------------------------------------------------------------------

def default_cache_dir(dataset: str = "mnist") -> Path:
    """``$XDG_CACHE_HOME/subsetsum-lth/mnist``, ``~/.cache/subsetsum-lth/mnist`` by default
    (``.../fashion-mnist`` for Fashion-MNIST)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "subsetsum-lth" / _dataset(dataset).name


def _source_dir(data_dir, ds: _Dataset) -> tuple[Path, str]:
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser(), "--data-dir"
    env = os.environ.get(ds.env_var)
    if env:
        return Path(env).expanduser(), f"${ds.env_var}"
    return default_cache_dir(ds.name), "user cache"


def _find_file(directory: Path, spec: MnistFile) -> Path | None:
    for name in (spec.filename, spec.raw_name):
        p = directory / name
        if p.is_file():
            return p
    return None


def find_file(directory, name: str, dataset: str = "mnist") -> Path:
    """Path of MNIST (or ``dataset``) file ``name`` (a key of :data:`MNIST_FILES`) in
    ``directory``, .gz or raw."""
    spec = _dataset(dataset).files[name]
    p = _find_file(Path(directory), spec)
    if p is None:
        raise DataError(f"{spec.filename} (or {spec.raw_name}) not found in {directory}")
    return p


def _missing(directory: Path, ds: _Dataset) -> list[str]:
    return [name for name, spec in ds.files.items() if _find_file(directory, spec) is None]


def _urlopen(url: str, timeout: float):
    """Open a URL (the one network access of this module; tests replace it)."""
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (https mirrors only)


def _download_one(spec: MnistFile, dest_dir: Path, progress: bool, mirrors: tuple | None = None) -> Path:
    """Fetch one file from ``mirrors`` (default :data:`MIRRORS`) into ``dest_dir``; returns its path.

    Raises DataError when every mirror failed; an MD5 mismatch never leaves a file behind.
    """
    target = dest_dir / spec.filename
    failures = []
    for mirror in (MIRRORS if mirrors is None else mirrors):
        url = mirror + spec.filename
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=dest_dir)
        tmp = Path(tmp_name)
        try:
            h = hashlib.md5()
            log.info("downloading %s", url)
            with os.fdopen(fd, "wb") as out, _urlopen(url, DOWNLOAD_TIMEOUT) as resp:
                total = None
                headers = getattr(resp, "headers", None)
                if headers is not None:
                    try:
                        total = int(headers.get("Content-Length"))
                    except (TypeError, ValueError):
                        total = None
                bar = None
                if progress:
                    from tqdm.auto import tqdm
                    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                               desc=spec.filename, leave=False)
                try:
                    while True:
                        chunk = resp.read(1 << 16)
                        if not chunk:
                            break
                        out.write(chunk)
                        h.update(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                finally:
                    if bar is not None:
                        bar.close()
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            if digest != spec.md5:
                failures.append(f"{url}: MD5 mismatch (got {digest}, expected {spec.md5}); "
                                f"the downloaded file was deleted")
                log.warning("%s", failures[-1])
                tmp.unlink(missing_ok=True)
                continue
            os.replace(tmp, target)
            log.info("saved %s (md5 ok)", target)
            return target
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            failures.append(f"{url}: {reason}")
            log.warning("download failed: %s", failures[-1])
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            if tmp.exists():
                tmp.unlink(missing_ok=True)
    raise DataError(f"could not download {spec.filename}:\n  " + "\n  ".join(failures))


def _missing_message(searched: list[Path], missing: list[str], source: str,
                     download: bool, reasons: str = "", ds: _Dataset | None = None) -> str:
    ds = ds or _dataset("mnist")
    files = ", ".join(ds.files[n].filename for n in missing)
    dirs = "\n".join(f"  {d}" for d in searched)
    why = ("downloading is disabled" if not download
           else "the download failed" + (f":\n{reasons}" if reasons else ""))
    return (
        f"{ds.title} files missing: {files} (gzipped or not; {why}).\n"
        f"Searched ({source}):\n{dirs}\n"
        f"Put the four official IDX files (train-images-idx3-ubyte.gz, "
        f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in one "
        f"directory and pass it with --data-dir DIR or set {ds.env_var}=DIR, or put them in "
        f"{default_cache_dir(ds.name)}; with network access they are downloaded there automatically."
    )


def resolve_data_dir(data_dir=None, download: bool = True, progress: bool = False,
                     dataset: str = "mnist") -> Path:
    """Directory holding all four MNIST (or ``dataset``) files, downloading the missing ones if
    allowed.

    Order: explicit ``data_dir``, else ``$SUBSETSUM_LTH_DATA`` (``$SUBSETSUM_LTH_FASHION_DATA``),
    else the user cache; only the first that applies is searched (itself and its ``mnist/``
    (``fashion-mnist/``) subfolder). Missing files are downloaded into it (MD5-checked, atomic).
    Raises one DataError when files stay missing.
    """
    ds = _dataset(dataset)
    base, source = _source_dir(data_dir, ds)
    candidates = [base, base / ds.name]
    missing_in = {}
    for d in candidates:
        missing = _missing(d, ds) if d.is_dir() else list(ds.files)
        if not missing:
            log.debug("%s files found in %s (%s)", ds.title, d, source)
            return d
        missing_in[d] = missing
    # the candidate with the most files present receives the downloads (ties: the base)
    dest = min(candidates, key=lambda d: len(missing_in[d]))
    missing = missing_in[dest]
    if not download:
        raise DataError(_missing_message(candidates, missing, source, download, ds=ds))
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(_missing_message(candidates, missing, source, download,
                                         f"  cannot create {dest}: {exc.strerror or exc}", ds=ds)) from exc
    log.info("downloading %s (%s) into %s", ds.title, ", ".join(missing), dest)
    for i, name in enumerate(missing):
        try:
            _download_one(ds.files[name], dest, progress, ds.mirrors)
        except DataError as exc:
            still = missing[i:]
            if "MD5 mismatch" in str(exc):
                raise DataError(f"{exc}\nThe mirrors served a file that differs from the "
                                f"official {ds.title}; place the official files in {dest} "
                                f"(or pass --data-dir / set {ds.env_var}).") from exc
            raise DataError(_missing_message(candidates, still, source, download,
                                             "  " + str(exc).replace("\n", "\n  "), ds=ds)) from exc
    return dest


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 4


def _stat_key(p: Path) -> tuple:
    st = p.stat()
    return (str(p.resolve()), st.st_size, st.st_mtime_ns)


def _load_uint8(split: str, directory: Path, dataset: str = "mnist") -> tuple[np.ndarray, np.ndarray]:
    ds = _dataset(dataset)
    img_name, lbl_name = f"{split}-images", f"{split}-labels"
    img_path, lbl_path = find_file(directory, img_name, ds.name), find_file(directory, lbl_name, ds.name)
    key = (ds.name, split, _stat_key(img_path), _stat_key(lbl_path))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    images = parse_idx(img_path, ds.files[img_name].shape)
    labels = parse_idx(lbl_path, ds.files[lbl_name].shape)
    for path, arr, name in ((img_path, images, img_name), (lbl_path, labels, lbl_name)):
        want = ds.files[name].shape
        if arr.shape != want:
            raise DataError(f"{path}: shape {arr.shape}, expected {want} for {ds.title} {name}")
    if labels.max() > 9:
        raise DataError(f"{lbl_path}: label {int(labels.max())} out of range 0..9")
    images.flags.writeable = False
    labels.flags.writeable = False
    with _CACHE_LOCK:
        while len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = (images, labels)
    return images, labels


def clear_cache() -> None:
    """Forget the parsed files kept in memory."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _RADIUS.clear()


def load_mnist(split: str = "train", data_dir=None, download: bool = True,
               progress: bool = False, *, dataset: str = "mnist",
               as_images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """MNIST (or ``dataset``: "fashion-mnist") ``split`` ("train" or "test") as ``(x, y)``.

    ``x``: float32 ``[N, 784]`` (``[N, 1, 28, 28]`` with ``as_images``, for CNNs), pixel / 255
    in [0, 1]; ``y``: int64 ``[N]``. Both are fresh arrays owned by the caller (the parsed files
    are cached in-process, keyed by path, size and mtime).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    directory = resolve_data_dir(data_dir, download=download, progress=progress, dataset=dataset)
    images, labels = _load_uint8(split, directory, dataset)
    shape = (images.shape[0], 1, *images.shape[1:]) if as_images else (images.shape[0], -1)
    x = images.reshape(shape).astype(np.float32)
    x /= np.float32(255.0)
    return x, labels.astype(np.int64)


def load_dataset(dataset: str, split: str = "train", data_dir=None, download: bool = True,
                 progress: bool = False, as_images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """:func:`load_mnist` for data set ``dataset`` ("mnist" or "fashion-mnist")."""
    return load_mnist(split, data_dir, download, progress, dataset=dataset, as_images=as_images)


_RADIUS: dict[tuple, float] = {}


def input_radius(data_dir=None, download: bool = True, dataset: str = "mnist") -> float:
    """Largest L2 norm of a scaled MNIST (or ``dataset``) image (train and test), as fed to the
    networks.

    Computed in float64 from the exact float32 inputs, then rounded up by one ulp so that
    ``||x|| <= input_radius()`` holds for every image.
    """
    directory = resolve_data_dir(data_dir, download=download, dataset=dataset)
    key = tuple(_stat_key(find_file(directory, f"{split}-images", dataset)) for split in SPLITS)
    if key in _RADIUS:
        return _RADIUS[key]
    best = 0.0
    for split in SPLITS:
        images, _ = _load_uint8(split, directory, dataset)
        flat = images.reshape(images.shape[0], -1)
        for start in range(0, flat.shape[0], 10000):
            x = flat[start:start + 10000].astype(np.float32) / np.float32(255.0)
            x64 = x.astype(np.float64)
            best = max(best, float(np.sqrt(np.einsum("ij,ij->i", x64, x64).max())))
    radius = float(np.nextafter(best, np.inf))
    _RADIUS[key] = radius
    return radius


class EvaluationInputs(NamedTuple):
    """What `approximate` needs from MNIST: the test set, points for the empirical bound,
    and the input radius (max ‖x‖ over train and test)."""

    eval_data: dict          #: {"x": float32 (10000, 784), "y": int64 (10000,)}
    empirical_data: np.ndarray
    radius: float


def evaluation_inputs(n_inputs: int, data_dir=None, seed: int = 0, samples: int = 2048,
                      radius: float | None = None, dataset: str = "mnist") -> EvaluationInputs:
    """The test set, ``samples`` seeded test images for the empirical lower bound, and the input
    radius (``radius`` when given, else computed from the data); refuses a target whose input
    size is not MNIST's (``dataset``'s)."""

    x, y = load_mnist("test", data_dir=data_dir, dataset=dataset)
    if n_inputs != x.shape[1]:
        raise UserError(f"the target takes {n_inputs} inputs but {_dataset(dataset).title} images "
                        f"have {x.shape[1]}")
    pick = np.random.default_rng(seed).choice(len(x), size=min(samples, len(x)), replace=False)
    return EvaluationInputs({"x": x, "y": y}, x[pick],
                            radius if radius is not None else input_radius(data_dir, dataset=dataset))
