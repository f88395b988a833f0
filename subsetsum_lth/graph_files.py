"""Networks given as graphs: a live ``nn.Module`` with an example input (Python API), a
``torch.export`` archive (``.pt2``) and a TorchScript file (``torch.jit.save``: ``.ts``/``.pt``).
Each becomes an ``ExportedProgram`` whose graph :mod:`subsetsum_lth.graph_reader` reads.

Loading a graph file loads a graph, not Python code, and nothing here unpickles arbitrary
objects: a ``.pt2`` is checked to be a zip with torch.export's layout and read by
``torch.export.load`` with every tensor payload restricted to ``torch.load(weights_only=True)``
and its other pickles (opaque/custom objects) refused; a TorchScript file is read by
``torch.jit.load`` (TorchScript's own reader: tensors and TorchScript code, no Python classes)
and converted to an ``ExportedProgram``. Neither file's forward is run by the loader.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
import zipfile
from pathlib import Path

import torch

from subsetsum_lth import preprocess
from subsetsum_lth.errors import TargetError
from subsetsum_lth.graph_reader import read_exported
from subsetsum_lth.pickle_scan import clean_message
from subsetsum_lth.safetext import escape

log = logging.getLogger(__name__)

EXPORT_SUFFIXES = (".pt2",)
TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript")
#: the input shapes tried for a TorchScript file (which records none): the data sets' images
IMAGE_SHAPE = (1, 28, 28)
IMAGE_SIDES = (28, 32)


def graph_file_kind(path: Path) -> str | None:
    """'export' for a torch.export archive, 'torchscript' for a TorchScript zip, None otherwise
    (a state_dict file, or not a regular file: the checkpoint reader says why)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
    except OSError:
        return None
    suffix = path.suffix.lower()
    try:
        is_zip = zipfile.is_zipfile(path)
        names = zipfile.ZipFile(path).namelist() if is_zip else []
    except (OSError, zipfile.BadZipFile):
        is_zip, names = False, []
    if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
        return "export"
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if suffix in EXPORT_SUFFIXES:
        raise TargetError(f"{escape(path)} is not a torch.export archive (no zip with a models/model.json): "
                          "save it with torch.export.save(torch.export.export(model.eval(), (x,)), path)")
    if suffix in TORCHSCRIPT_SUFFIXES:
        raise TargetError(f"{escape(path)} is not a TorchScript archive: save it with "
                          "torch.jit.script(model).save(path) or torch.jit.trace(model, x).save(path)")
    return None


@contextlib.contextmanager
def _weights_only():
    """While torch.export.load runs: torch.load is weights_only=True whatever its caller asks, and
    the archive's other pickles (opaque/custom objects) are refused."""
    from torch.export.pt2_archive import _package
    real_load, real_pickle, real_obj = torch.load, _package.pickle, torch._C._pickle_load_obj

    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        return real_load(f, *args, **kwargs)

    class _NoPickle:
        def __getattr__(self, name):
            def refuse(*_a, **_k):
                raise TargetError("the archive holds pickled Python objects, which are never unpickled here")
            return refuse

    def refuse_obj(*_a, **_k):
        raise TargetError("the archive holds pickled TorchScript objects, which are not read here")

    torch.load, _package.pickle, torch._C._pickle_load_obj = load, _NoPickle(), refuse_obj
    try:
        yield
    finally:
        torch.load, _package.pickle, torch._C._pickle_load_obj = real_load, real_pickle, real_obj


def load_exported(path: Path):
    """The ExportedProgram of a ``.pt2`` archive (read from memory: the bytes checked are the bytes read)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TargetError(f"cannot read {escape(path)}: {exc.strerror or exc}") from None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        raise TargetError(f"{escape(path)} is not a torch.export archive (not a zip file)") from None
    if not any(n.endswith("/models/model.json") for n in names):
        raise TargetError(f"{escape(path)} is a zip without torch.export's models/model.json; save it with "
                          "torch.export.save(torch.export.export(model.eval(), (x,)), path)")
    try:
        with _weights_only(), _quiet():
            ep = torch.export.load(io.BytesIO(data))
    except TargetError as exc:
        raise TargetError(f"{escape(path)}: {exc}") from None
    except Exception as exc:
        if "weights only load failed" in str(exc).lower() or "Unpickl" in type(exc).__name__:
            raise TargetError(f"{escape(path)} holds a pickled payload that is not plain tensors (torch.load "
                              "weights_only=True refuses it); it is never unpickled here: export the model "
                              "again with torch.export.save") from None
        raise TargetError(f"cannot read {escape(path)} with torch.export.load: {escape(clean_message(exc))}; "
                          "was it saved by torch.export.save of this torch version?") from None
    return ep


@contextlib.contextmanager
def _quiet():
    """torch's own warnings while reading a graph go to the log, not the user's terminal."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = ("torch._export", "torch.export", "torch._export.non_strict_utils")
        levels = [logging.getLogger(n).level for n in names]
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for n, lv in zip(names, levels):
                logging.getLogger(n).setLevel(lv)


def _torchscript_inputs(ts) -> list[tuple]:
    """Input shapes to try for a TorchScript module, which records none (traced or scripted): from
    its first layer, a vector of its in_features, or images of the data sets' sizes (28×28, 32×32)."""
    first = next((p for _, p in ts.named_parameters() if p.dim() in (2, 4)), None)
    if first is None:
        return []
    if first.dim() == 4:
        return [(int(first.shape[1]), n, n) for n in IMAGE_SIDES]
    return list(dict.fromkeys([(int(first.shape[1]),), IMAGE_SHAPE]))


def _static_converter():
    """torch's TorchScript to torch.export converter, retracing with static shapes (its default
    marks every dimension dynamic, and the reader needs the sizes)."""
    import torch._export.converter as conv

    class StaticConverter(conv.TS2EPConverter):
        def retrace_as_exported_program(self, gm, name_to_constant):
            real = conv._tree_map_with_path
            conv._tree_map_with_path = lambda *a, **k: None     # dynamic_shapes=None: static
            try:
                return super().retrace_as_exported_program(gm, name_to_constant)
            finally:
                conv._tree_map_with_path = real
    return StaticConverter


def load_torchscript(path: Path):
    """The ExportedProgram of a TorchScript file (``torch.jit.load``, then torch's TorchScript to
    torch.export converter on an example input of a shape its first layer allows)."""
    try:
        ts = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise TargetError(f"cannot read {escape(path)} with torch.jit.load: {escape(clean_message(exc))}") from None
    ts.eval()
    shapes = _torchscript_inputs(ts)
    errors = []
    for shape in shapes:
        try:
            with _quiet():
                return _static_converter()(ts, (torch.zeros(1, *shape),)).convert()
        except Exception as exc:
            errors.append(f"{'×'.join(map(str, shape))} ({clean_message(exc).splitlines()[0][:120]})")
    raise TargetError(f"cannot read the TorchScript file {escape(path)}: TorchScript records no input shape "
                      f"and its graph does not run on inputs of shape {' or '.join(errors) or '(none found)'}; "
                      "save the model with torch.export.save(torch.export.export(model.eval(), (x,)), "
                      "'model.pt2'), which records it")


def export_module(model: torch.nn.Module, example_input: torch.Tensor):
    """``torch.export.export(model.eval(), (x,))`` (the model's mode is restored after)."""
    if not isinstance(model, torch.nn.Module):
        raise TargetError(f"expected an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise TargetError(f"the example input must be a tensor (a batch of inputs), got "
                          f"{type(example_input).__name__}")
    x = example_input.detach().to(torch.float32)
    if x.dim() in (1, 3):
        x = x.unsqueeze(0)
    was_training = model.training
    try:
        model.eval()
        with _quiet():
            return torch.export.export(model, (x,))
    except Exception as exc:
        first = _first_line(exc)
        log.info("torch.export failed on %s (%s); trying torch.fx.symbolic_trace, then exporting its graph",
                 type(model).__name__, first)
        try:     # a symbolic trace keeps only the tensor computation; data-dependent control flow fails it
            with _quiet():
                return torch.export.export(torch.fx.symbolic_trace(model).eval(), (x,))
        except Exception as exc2:
            raise TargetError(f"torch.export cannot trace {type(model).__name__} on an input of shape "
                              f"{list(x.shape)}: {first} (torch.fx.symbolic_trace: {_first_line(exc2)})") from None
    finally:
        model.train(was_training)


def _first_line(exc: Exception) -> str:
    return clean_message(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def graph_parts(ep, source: str, info: dict, kind: str) -> dict:
    """What :func:`subsetsum_lth.target.from_arch_state` needs to build the target of an
    ExportedProgram (its input preprocessing, if the graph has one, in the metadata)."""
    info["format"] = kind
    info["read_from"] = "graph"
    arch, state, input_shape, prep = read_exported(ep, info)
    metadata = {} if prep is None else prep.to_metadata()
    if prep is not None:
        info["graph_preprocessing"] = prep.describe()
    return {"state": state, "arch": arch, "input_shape": input_shape, "source": source, "metadata": metadata}


def graph_file_parts(path: Path, kind: str, info: dict) -> dict:
    """The target's parts of a ``.pt2`` (kind 'export') or TorchScript (kind 'torchscript') file."""
    info["file"] = str(path)
    ep = load_exported(path) if kind == "export" else load_torchscript(path)
    return graph_parts(ep, str(path), info, "torch.export archive" if kind == "export" else "TorchScript")


def module_parts(model: torch.nn.Module, example_input: torch.Tensor, info: dict) -> dict:
    """The target's parts of a live module, read from ``torch.export.export(model.eval(), (x,))``."""
    ep = export_module(model, example_input)
    return graph_parts(ep, type(model).__name__, info, "nn.Module")


def check_same(model, target, example_input, name: str) -> None:
    """f read from the graph must compute what the module computes (float32 tolerance)."""
    x = example_input.detach().to(torch.float32)
    x = x.unsqueeze(0) if x.dim() in (1, 3) else x
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = model(x).reshape(len(x), -1).double()
    finally:
        model.train(was_training)
    folded = preprocess.apply(target, None)
    got = folded.forward(x.double().reshape(len(x), -1) if folded.input_shape is None else x.double())
    scale = max(1.0, float(want.abs().max()))
    gap = float((got - want).abs().max())
    if gap > 1e-3 * scale:
        raise TargetError(f"the network read from the graph of {name} differs from the module's own output on "
                          f"the example input by {gap:.3g}; the graph was misread: please report it")
