"""Torch files that torch.load(weights_only=True) refuses, read without unpickling anything.

:func:`_scan_pickle` tokenises a file's pickle with :mod:`pickletools` (never executes it) into a
:class:`PickleScan` (the top-level object and every global it would import);
:func:`pickled_refusal` turns that into the one-line refusal naming what the file holds and how
to save a plain state_dict from it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from subsetsum_lth.errors import TargetError
from subsetsum_lth.safetext import escape

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def clean_message(text: str) -> str:
    """First sentence of an exception message, without ANSI escapes."""
    text = _ANSI.sub("", str(text)).strip()
    line = text.splitlines()[0].strip() if text else ""
    return line.split(". ", 1)[0].rstrip(".")


def _unpickler_reason(text: str) -> str:
    """torch's 'WeightsUnpickler error: ...' reason, on one line."""
    found = re.search(r"WeightsUnpickler error:(.*?)(?:Check the documentation|$)", _ANSI.sub("", text), re.S)
    return " ".join(found.group(1).split()).rstrip(".") if found else ""


#: the pickle of a torch file may import these without that being a reason for suspicion: torch's
#: tensor rebuild functions, storages, dtypes and nn module classes, and the containers torch.save writes
_TORCH_REBUILD = {"torch._utils", "torch._tensor"}
_PLAIN_GLOBALS = {"collections.OrderedDict", "collections.defaultdict", "builtins.set", "builtins.frozenset",
                  "builtins.bytearray", "builtins.object", "__builtin__.set", "__builtin__.frozenset",
                  "__builtin__.bytearray", "__builtin__.object", "copyreg._reconstructor",
                  "copy_reg._reconstructor", "_codecs.encode", "torch.Size", "torch.device",
                  "torch.serialization._get_layout", "torch.nn.parameter.Parameter"}
#: modules and names whose import in a pickle means code execution, not a model
_CODE_MODULES = {"os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty",
                 "ctypes", "pickle", "_pickle", "marshal", "code", "codeop", "webbrowser", "builtins",
                 "__builtin__", "io", "pathlib", "tempfile", "multiprocessing", "threading", "signal",
                 "types", "functools", "operator", "numpy.testing", "timeit", "pdb", "commands"}
_CODE_NAMES = {"eval", "exec", "system", "popen", "spawn", "__import__", "getattr", "setattr", "compile",
               "open", "call", "run", "check_output", "Popen", "execv", "execve", "fork", "load", "loads",
               "import_module", "attrgetter", "methodcaller", "partial", "apply"}
_SCAN_LIMIT = 64 << 20      #: bytes of a (non-zip) pickle file scanned at most
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C   #: the first pickle of torch's legacy (non-zip) format


def _is_torch_global(name: str) -> bool:
    """Whether the pickle global ``module.name`` is one a plain torch model file imports."""
    import sys
    if name in _PLAIN_GLOBALS:
        return True
    module, _, attr = name.rpartition(".")
    if module in _TORCH_REBUILD and attr.startswith("_rebuild_"):
        return True
    if module == "torch":   # storages and dtypes (torch.FloatStorage, torch.float32)
        return attr.endswith("Storage") or isinstance(getattr(torch, attr, None), torch.dtype)
    if module.startswith("torch.nn.modules."):   # an nn module class, looked up without importing anything
        cls = getattr(sys.modules.get(module), attr, None)
        return isinstance(cls, type) and issubclass(cls, torch.nn.Module)
    return False


def _runs_code(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    return module.split(".")[0] in _CODE_MODULES or attr in _CODE_NAMES or not module


@dataclass
class PickleScan:
    """What a pickle would do, read with :mod:`pickletools` (never executed)."""

    kind: str | None = None                 #: top-level object: "dict" or "object"
    cls: str | None = None                  #: the class of a top-level object
    strings: list = field(default_factory=list)
    imports: list = field(default_factory=list)   #: every global it would import (module.name), in order

    @property
    def foreign(self) -> list[str]:
        """The globals that are not torch's rebuild functions, storages, dtypes or nn classes."""
        return [g for g in self.imports if not _is_torch_global(g)]


def _scan_one(ops, scan: PickleScan) -> bool:
    """Follow one pickle's opcodes on a symbolic stack (strings, memo and globals resolved) to find
    every global it imports, also those STACK_GLOBAL builds from memoised strings. False: no opcode."""
    import pickletools
    stack: list = []
    marks: list[int] = []
    memo: dict = {}
    seen = False
    for op, arg, _ in ops:
        seen = True
        name = op.name
        if name in ("GLOBAL", "INST"):
            glob = str(arg).replace(" ", ".")
            scan.imports.append(glob)
            if scan.kind is None:
                scan.kind, scan.cls = ("dict", None) if glob == "collections.OrderedDict" else ("object", glob)
            if name == "INST":
                stack = stack[:marks.pop()] if marks else []
            stack.append(("global", glob))
            continue
        if name == "STACK_GLOBAL":
            attr = stack.pop() if stack else None
            module = stack.pop() if stack else None
            glob = (f"{module}.{attr}" if isinstance(module, str) and isinstance(attr, str)
                    else "<a global built at load time>")
            scan.imports.append(glob)
            if scan.kind is None:
                scan.kind, scan.cls = ("dict", None) if glob == "collections.OrderedDict" else ("object", glob)
            stack.append(("global", glob))
            continue
        if name in ("EXT1", "EXT2", "EXT4"):
            scan.imports.append(f"<copyreg extension {arg}>")
        if isinstance(arg, str) and "UNICODE" in name or name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
            scan.strings.append(str(arg))
            stack.append(str(arg))
            continue
        if name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else None
            continue
        if name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1] if stack else None
            continue
        if name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg))
            continue
        if name == "MARK":
            marks.append(len(stack))
            continue
        if scan.kind is None and name in ("EMPTY_DICT", "DICT"):
            scan.kind = "dict"
        before = op.stack_before
        if pickletools.markobject in before:
            stack = stack[:marks.pop()] if marks else []
            del stack[len(stack) - before.index(pickletools.markobject):]
        elif before:
            del stack[max(0, len(stack) - len(before)):]
        stack.extend([None] * len(op.stack_after))
        if name == "STOP":
            break
    return seen


def _scan_pickle(path: Path) -> PickleScan | None:
    """Tokenise (never execute) the pickle of a torch file: a zip's data.pkl, or the pickles of a
    legacy/plain pickle file (at most the first 64 MB). None when nothing could be read."""
    import io
    import pickletools
    import zipfile
    scan = PickleScan()
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next(n for n in z.namelist() if n.endswith("data.pkl"))
                if z.getinfo(name).file_size > _SCAN_LIMIT:
                    return None
                data = z.read(name)
        else:
            with open(path, "rb") as fh:
                data = fh.read(_SCAN_LIMIT)
    except Exception:
        return None
    fh = io.BytesIO(data)
    for i in range(6):      # torch's legacy format: magic number, protocol, sys info, the object, keys
        start = fh.tell()
        try:
            first = next(pickletools.genops(fh), None)
        except Exception:
            break
        if first is None:
            break
        fh.seek(start)
        if i == 0:   # the legacy format's magic number: skip its three header pickles
            try:
                ops = list(pickletools.genops(fh))
            except Exception:
                break
            if any(arg == _TORCH_MAGIC for _, arg, _ in ops):
                for _ in range(2):
                    try:
                        list(pickletools.genops(fh))
                    except Exception:
                        break
                continue
            fh.seek(start)
        try:
            _scan_one(pickletools.genops(fh), scan)
        except Exception:
            pass
        break       # the object's pickle (what follows it is the legacy format's storage keys)
    return scan if (scan.kind or scan.imports) else None


def _names(globs: list[str], most: int = 4) -> str:
    """Pickle globals for a message: distinct, escaped (they come from the file), at most ``most``."""
    uniq = list(dict.fromkeys(globs))
    text = ", ".join(escape(g) for g in uniq[:most])
    return text + (f" and {len(uniq) - most} more" if len(uniq) > most else "")


def _where_class(cls: str | None) -> str:
    """Where the code that can save a pickled model's state_dict lives."""
    cls = escape(cls or "")
    if cls.startswith("__main__."):   # saved from a script: only that script defines it
        return f"in the script that defines {cls[len('__main__.'):]} (it was saved from __main__)"
    return f"in the code that defines {cls}"


def pickled_refusal(path: Path, exc: Exception, wrapper_keys) -> TargetError:
    """The one-line refusal of a torch file that torch.load(weights_only=True) refused: what the
    pickle would import (:func:`_scan_pickle`) and what to do; ``wrapper_keys``: the checkpoint
    dict keys that hold a state_dict (named in the fix)."""
    scan = _scan_pickle(path)
    where = escape(str(path))
    stem = str(path.with_name(path.stem + "_state.pt"))
    plain = ("pass the weights as a state_dict (torch.save(model.state_dict(), path)) or a .safetensors "
             "file instead")
    foreign = scan.foreign if scan is not None else []
    if scan is None or not scan.imports:
        reason = _unpickler_reason(str(exc)) or clean_message(exc)
        return TargetError(f"{where} holds pickled objects or code that torch.load(weights_only=True) refuses "
                           f"({escape(reason)}) and is never unpickled here; {plain}")
    if scan.kind == "object" and str(scan.cls).startswith("__torch__."):
        # a TorchScript archive (torch.jit.save / torch.jit.script / torch.jit.trace): no Python
        # class is needed, torch.jit.load reads it and its state_dict is what this tool reads
        cls = escape(re.sub(r"\.___torch_mangle_\d+", "", str(scan.cls)[len("__torch__."):]))
        return TargetError(
            f"{where} is a TorchScript archive (torch.jit.save of a {cls}), not a state_dict, and its code is "
            "not run here; only if you trust the file, save its weights once in Python (torch.jit.load "
            "needs no class definition), then pass that file:\n"
            f"    model = torch.jit.load({str(path)!r})  # runs the archive's TorchScript: only if you trust it\n"
            f"    torch.save(model.state_dict(), {stem!r})")
    if any(_runs_code(g) for g in foreign):
        code = [g for g in foreign if _runs_code(g)]
        return TargetError(
            f"{where} is not a model file: unpickling it would import and call {_names(code)}, which runs "
            f"code (torch.load weights_only=True refuses it too); do not load it with torch.load or pickle at all; {plain}")
    if foreign:
        if scan.kind == "object" and scan.cls in foreign:
            return TargetError(
                f"{where} holds a pickled {escape(scan.cls)} (a whole model object, not a state_dict); it is "
                f"not unpickled here: that would import and run {_names(foreign)}, which is not torch's code; "
                f"save the model's weights {_where_class(scan.cls)}: torch.save(model.state_dict(), path), "
                "and pass that file")
        return TargetError(
            f"{where} holds pickled objects besides tensors ({_names(foreign)}), which torch.load "
            "(weights_only=True) refuses and which are never unpickled here (that would run their code); "
            f"save only the weights where the file was made: torch.save(model.state_dict(), path) "
            "(for a checkpoint dict: its 'state_dict' entry), and pass that file")
    # only torch's own classes (a whole nn module): loading it still runs pickle, so only if trusted
    if scan.kind == "object":
        return TargetError(
            f"{where} holds a pickled {escape(scan.cls)} (a whole model object, not a state_dict), which is "
            "not unpickled here (torch.load weights_only=True refused it). Only if you trust the file, turn "
            "it into a state_dict once in Python (it imports only torch classes), then pass that file:\n"
            f"    model = torch.load({str(path)!r}, weights_only=False)  # only if you trust the file\n"
            f"    torch.save(model.state_dict(), {stem!r})")
    key = next((k for k in wrapper_keys if k in scan.strings), "state_dict")
    return TargetError(
        f"{where} is a checkpoint dict that also holds pickled torch objects (a whole module?), which are "
        "never unpickled here (torch.load weights_only=True refused it). Only if you trust the file, keep "
        "only the weights once in Python, then pass that file:\n"
        f"    ckpt = torch.load({str(path)!r}, weights_only=False)  # only if you trust the file\n"
        f"    w = ckpt[{key!r}]  # the entry that holds the model: its state_dict, or the module itself\n"
        f"    torch.save(w.state_dict() if isinstance(w, torch.nn.Module) else w, {stem!r})")
