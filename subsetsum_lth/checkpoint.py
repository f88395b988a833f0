"""Read the MLP checkpoints PyTorch users actually have, without unpickling code.

What is accepted (``read_checkpoint`` + ``order_layers``):

* files: ``.pt``/``.pth``/``.ckpt``/``.bin``/``.tar`` read with ``torch.load(weights_only=True)``,
  ``.safetensors`` read with safetensors;
* a plain state_dict, or a checkpoint dict holding one under ``state_dict``,
  ``model_state_dict``, ``model``, ``net``, ``network`` or ``model_state`` (other entries such as
  ``epoch`` or ``optimizer`` are ignored; scalar ones are kept as metadata);
* ``module.`` (DataParallel), ``model.`` (Lightning) and ``_orig_mod.`` (torch.compile) prefixes;
* Linear layers under any module names (``0``, ``fc1``, ``layers.0``, ``classifier.2``,
  ``fc_layers.0``, ``net.0``, …), with Flatten/Identity/Dropout/ReLU offsets between the indices of
  an ``nn.Sequential``; ``torch.nn.utils.prune``'s ``weight_orig``/``weight_mask`` pairs
  (weight = orig × mask).

Order: where every pair of layers is ordered by ``nn.Sequential`` indices (numerically) the order
is those indices. Otherwise named layers are taken in state_dict insertion order (module
registration order, the forward order of normal code) and must be the only order in which their
shapes chain (out of layer i == in of layer i + 1); when several orders fit, or the registration
order contradicts the shapes, the file is refused with the exact ``--layers a,b,c`` to pass.
Between consecutive layers a ReLU is assumed: a state_dict does not record activations.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from subsetsum_lth import resources
from subsetsum_lth.errors import TargetError
from subsetsum_lth.pickle_scan import clean_message, pickled_refusal
from subsetsum_lth.safetext import escape

log = logging.getLogger(__name__)

#: keys of a checkpoint dict that hold the model's state_dict, in order of preference
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "model_state")
#: prefixes that wrappers add to every key (stripped when all keys carry them)
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")   # .tar: PyTorch examples' checkpoint.pth.tar
_PARAM = re.compile(r"^(?:(?P<module>.+)\.)?(?P<kind>weight|bias)(?P<prune>_orig|_mask)?$")
ROOT = "(root)"   #: the name of a layer saved on its own (nn.Linear(...).state_dict(): 'weight', 'bias')
_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
_CHAIN_BUDGET = 200_000
#: an expanded tensor (stride 0: a file that stores 1 value and claims 10^10) is materialised up to
#: this many values (64 MB of float32); beyond, it is refused before any value is read
MAX_EXPANDED_ENTRIES = 1 << 24
#: bytes per value of the safetensors dtypes (others: 8)
_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


@dataclass
class RawCheckpoint:
    """What a file holds, before the layers are ordered."""

    state: dict                     #: name -> tensor, in the file's order
    metadata: dict = field(default_factory=dict)
    order_known: bool = True        #: False for safetensors (keys come back sorted)
    info: dict = field(default_factory=dict)


def read_checkpoint(path: Path) -> RawCheckpoint:
    """Read ``path`` (a file) into an ordered name -> tensor dict plus metadata."""
    import stat
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise TargetError(f"cannot read target file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        # a FIFO would block the (uninterruptible) reader for ever, a device could be read for ever
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
            else "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise TargetError(f"target file {path} is {kind}, not a regular file; pass a checkpoint file "
                          "(.safetensors, .pt/.pth/.ckpt/.bin) or a train-target folder")
    suffix = path.suffix.lower()
    info: dict = {"file": str(path)}
    if suffix == ".safetensors":
        from safetensors import safe_open
        try:   # safetensors checks every tensor's offsets against the file; the sizes are checked here
            with safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
                claims = []
                for k in fh.keys():
                    sl = fh.get_slice(k)
                    claims.append((k, [int(n) for n in sl.get_shape()], _ST_BYTES.get(sl.get_dtype(), 8)))
                _check_total(claims, path)
                state = {k: fh.get_tensor(k) for k in fh.keys()}
        except TargetError:
            raise
        except Exception as exc:
            raise TargetError(f"cannot read {escape(path)} as safetensors: {escape(clean_message(exc))}") from None
        info["format"] = "safetensors"
        info["container"] = "state_dict"
        return RawCheckpoint(state, meta, order_known=False, info=info)
    if suffix not in TORCH_SUFFIXES:
        raise TargetError(f"unsupported target file type {suffix!r} for {path}: use a state_dict saved as "
                          ".pt/.pth/.ckpt/.bin/.tar, or a .safetensors file")
    try:
        with warnings.catch_warnings():   # torch warns about protocol-4 pickles it then refuses anyway
            warnings.filterwarnings("ignore", message=".*pickle protocol")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "weights_only" in text.lower() or "GLOBAL" in text or "Unpickl" in type(exc).__name__:
            raise pickled_refusal(path, exc, WRAPPER_KEYS) from None
        raise TargetError(f"cannot read {path} with torch.load(weights_only=True): {clean_message(exc)}; "
                          "is the file complete?") from None
    info["format"] = "torch"
    state, meta = _unwrap(obj, path, info)
    state = {k: _checked_tensor(k, v, path) for k, v in state.items()}
    _check_total([(k, list(v.shape), v.element_size()) for k, v in state.items()], path)
    return RawCheckpoint(state, meta, order_known=True, info=info)


def _shape(shape) -> str:
    return "×".join(map(str, shape)) if len(shape) else "scalar"


def _checked_tensor(key, t: torch.Tensor, path: Path) -> torch.Tensor:
    """``t`` if its values can be read as what it claims, before any value is touched: a dense
    (strided) CPU tensor whose strides stay inside its storage. An expanded tensor (stride 0, or
    overlapping strides: more values claimed than stored) is materialised up to
    :data:`MAX_EXPANDED_ENTRIES` values, else refused; sparse, quantised, nested and meta tensors
    are refused. One line each, naming the key, its claimed shape and its real storage."""
    name = f"entry {str(key)!r} in {escape(path)}"
    shape = _shape(tuple(t.shape))
    if t.layout != torch.strided:
        layout = str(t.layout).replace("torch.", "")
        raise TargetError(f"{name} is a {layout} tensor of shape {shape}; only dense tensors are read: save "
                          "the state_dict with dense tensors (t.to_dense())")
    if t.is_quantized:
        raise TargetError(f"{name} is a quantised tensor ({t.dtype}); save the float model's state_dict "
                          "(t.dequantize())")
    if getattr(t, "is_nested", False) or t.device.type != "cpu":
        raise TargetError(f"{name} is a {'nested' if getattr(t, 'is_nested', False) else t.device.type} tensor "
                          "without plain values; save a dense float state_dict")
    numel = t.numel()
    if numel == 0:
        return t
    stride = t.stride()
    elem = t.element_size()
    stored = t.untyped_storage().nbytes()
    if any(s < 0 for s in stride) or t.storage_offset() < 0:
        raise TargetError(f"{name} has negative strides {stride}; a corrupt or crafted file")
    last = t.storage_offset() + sum((n - 1) * s for n, s in zip(t.shape, stride))
    if (last + 1) * elem > stored:
        raise TargetError(f"{name} claims shape {shape} with strides {stride}, reaching byte {(last + 1) * elem:,} "
                          f"of a storage of {stored:,} bytes; a corrupt or crafted file")
    if numel * elem > stored:     # overlapping entries: an expanded (stride-0) view of fewer values
        if numel > MAX_EXPANDED_ENTRIES:
            raise TargetError(
                f"{name} claims shape {shape} ({numel:,} values, {resources.human_bytes(numel * elem)} as "
                f"{str(t.dtype).replace('torch.', '')}) but stores only {stored // elem:,} value(s) "
                f"({resources.human_bytes(stored)}): an expanded tensor (strides {stride}), refused before "
                f"reading it (expanded tensors are materialised up to {MAX_EXPANDED_ENTRIES:,} values); "
                "save real weights (t.contiguous())")
        t = t.contiguous()
    return t


def _check_total(claims, path: Path) -> None:
    """The values of ``claims`` ((key, shape, bytes per value)), read and copied to float64 by the
    loader, must fit in memory."""
    import math
    values = sum(math.prod(shape) for _, shape, _ in claims)
    need = sum(math.prod(shape) * (b + 8) for _, shape, b in claims)
    biggest = max(claims, key=lambda c: math.prod(c[1]), default=None)
    if biggest is not None:
        resources.check_memory(need, f"the {values:,} values in {escape(path)} (the largest, "
                                  f"{str(biggest[0])!r}, of shape {_shape(biggest[1])})",
                            "pass a smaller network")


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _scalars(d: dict) -> dict:
    """Plain scalar entries of a checkpoint dict (epoch, accuracy, ...); a one-element tensor, as
    pytorch/examples stores ``best_acc1``, counts as its number."""
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor) and v.layout == torch.strided and not v.is_quantized \
                and v.device.type == "cpu" and v.numel() == 1 and not v.is_complex():
            v = v.item()
        if isinstance(v, (str, int, float, bool)):
            out[str(k)] = v
    return out


def _unwrap(obj, path: Path, info: dict) -> tuple[dict, dict]:
    if not isinstance(obj, dict):
        raise TargetError(f"{path} holds a {type(obj).__name__}, not a state_dict; save the model's "
                          "weights with torch.save(model.state_dict(), path)")
    if _is_tensor_dict(obj):
        info["container"] = "state_dict"
        return obj, {}
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if _is_tensor_dict(inner):
            info["container"] = "checkpoint dict"
            info["weights_key"] = key
            info["other_entries"] = [str(k) for k in obj if k != key]
            return inner, _scalars(obj)
    has_tensor = [k for k, v in obj.items() if isinstance(v, torch.Tensor)]
    if has_tensor:
        other = next(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise TargetError(
            f"entry {other!r} in {path} is a {type(obj[other]).__name__}, not a tensor: expected a "
            "state_dict (only tensors) or a checkpoint dict holding one under "
            + ", ".join(repr(k) for k in WRAPPER_KEYS[:4]))
    nested = [str(k) for k, v in obj.items() if _is_tensor_dict(v)]
    keys = ", ".join(repr(str(k)) for k in list(obj)[:8]) or "none"
    optim = [str(k) for k, v in obj.items()
             if "optim" in str(k).lower() or (isinstance(v, dict) and {"state", "param_groups"} <= set(v))]
    if nested:
        raise TargetError(
            f"{path} is a checkpoint dict without a 'state_dict'/'model_state_dict'/'model'/'net' entry; "
            f"entries holding tensors: {', '.join(map(repr, nested))}; save the model's one as a file: "
            f"torch.save(ckpt[{nested[0]!r}], 'model_state.pt')")
    if optim:
        raise TargetError(
            f"{path} holds an optimizer state ({', '.join(map(repr, optim))}) but no model weights "
            f"(entries: {keys}); an optimizer state is not a network: pass the file that holds the "
            "model's state_dict (torch.save(model.state_dict(), path))")
    raise TargetError(f"{path} is a dict without model weights (entries: {keys}); pass a state_dict saved "
                      "with torch.save(model.state_dict(), path)")


# --------------------------------------------------------------------------- BatchNorm

def fold_bn_tensors(weight, bias, mean, var, gamma, beta, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``BN(layer(x))`` (BatchNorm in eval mode) as one layer: with
    ``s = gamma / sqrt(var + eps)``, ``W' = s W`` (per output channel), ``b' = s (b - mean) + beta``.
    Computed in float64, returned in ``weight``'s dtype. ``bias``/``gamma``/``beta`` may be None."""
    dtype = weight.dtype
    w = weight.detach().to(torch.float64)
    n = w.shape[0]
    b = torch.zeros(n, dtype=torch.float64) if bias is None else bias.detach().to(torch.float64)
    g = torch.ones(n, dtype=torch.float64) if gamma is None else gamma.detach().to(torch.float64)
    be = torch.zeros(n, dtype=torch.float64) if beta is None else beta.detach().to(torch.float64)
    s = g / torch.sqrt(var.detach().to(torch.float64) + float(eps))
    w2 = w * s.reshape(n, *([1] * (w.dim() - 1)))
    b2 = (b - mean.detach().to(torch.float64)) * s + be
    return w2.to(dtype), b2.to(dtype)


#: torch's default BatchNorm eps; a state_dict does not record it
BN_EPS = 1e-5


def fold_state_batchnorm(state: dict, where: str, order_known: bool, eps: float = BN_EPS) -> dict:
    """``state`` with every eval-mode BatchNorm folded into the Linear layer right before it
    (``nn.Sequential(Linear, BatchNorm1d, ReLU, ...)``, or named modules ``fc1``, ``bn1``, ...
    in registration order): W' = s W, b' = s (b - running_mean) + beta with
    s = gamma / sqrt(running_var + eps), exactly the network in eval mode. A BatchNorm that
    cannot be folded exactly is refused naming it and why: one with no Linear layer right before
    it (first, after another BatchNorm, or -- by nn.Sequential indices -- with a module between,
    which may be a ReLU), or one whose order is unknown (safetensors sorts its keys). ``state``
    itself is not modified."""
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        return state        # collect_layers names the entry that is not a tensor
    groups: dict[str, dict[str, str]] = {}
    for key in state:
        module, _, leaf = str(key).rpartition(".")
        groups.setdefault(module, {})[leaf] = key
    bns = {m for m, parts in groups.items() if any(s in parts for s in _BN_STATS)}
    if not bns:
        return state
    prefix = _strip_prefix([m for m in groups if m])

    def label(m: str) -> str:
        return (m[len(prefix):] if m.startswith(prefix) else m) or ROOT

    names = list(groups)
    n = len(names)
    by_index = n > 1 and all(_index_order(names[i], names[j]) != 0 for i in range(n) for j in range(i + 1, n))
    if by_index:
        order, how = sorted(names, key=_natural), "nn.Sequential indices"
    elif order_known:
        order, how = names, "the file's order"
    else:
        first = label(sorted(bns, key=_natural)[0])
        raise TargetError(f"BatchNorm {first!r}{where} cannot be folded: the file keeps no module order "
                          "(safetensors sorts its keys) and its names carry no nn.Sequential indices, so which "
                          "Linear layer it follows is unknown; save it with torch.save(model.state_dict(), "
                          "'model.pt') instead")
    out = dict(state)
    folded: dict[str, tuple[str, str]] = {}     # layer module -> its new weight and bias keys
    for i, m in enumerate(order):
        if m not in bns:
            continue
        parts, name = groups[m], label(m)
        for need in ("running_mean", "running_var"):
            if need not in parts:
                raise TargetError(f"BatchNorm {name!r}{where} has no {need!r} entry, so it cannot be folded")
        prev = order[i - 1] if i > 0 else None
        pw = None if prev is None else (state.get(groups[prev].get("weight", "")) if "weight" in groups[prev]
                                        else state.get(groups[prev].get("weight_orig", "")))
        if prev is None or prev in bns or pw is None or pw.dim() != 2:
            what = ("comes first" if prev is None else f"follows BatchNorm {label(prev)!r}" if prev in bns
                    else f"follows {label(prev)!r}, which is not a Linear layer")
            raise TargetError(f"BatchNorm {name!r}{where} {what} ({how}); only a BatchNorm right after a Linear "
                              "layer can be folded into it exactly")
        if by_index:
            a, b = prev.rsplit(".", 1)[-1], m.rsplit(".", 1)[-1]
            if a.isdigit() and b.isdigit() and int(b) != int(a) + 1:
                raise TargetError(
                    f"BatchNorm {name!r}{where} is not right after Linear {label(prev)!r} (nn.Sequential indices "
                    f"{a} and {b}): the module between them is not recorded, and a BatchNorm after a ReLU cannot "
                    "be folded into the layer before it; save the model as nn.Sequential(Linear, BatchNorm1d, "
                    "ReLU, ...) or fold the BatchNorm yourself")
        rm, rv = state[parts["running_mean"]], state[parts["running_var"]]
        q = pw.shape[0]
        for leaf in ("running_mean", "running_var", "weight", "bias"):
            if leaf in parts and tuple(state[parts[leaf]].shape) != (q,):
                raise TargetError(f"entry {parts[leaf]!r}{where} has shape {tuple(state[parts[leaf]].shape)}, "
                                  f"expected ({q},) (the outputs of {label(prev)!r})")
        pparts = groups[prev]
        w = pw if "weight" in pparts else pw * state[pparts["weight_mask"]] if "weight_mask" in pparts else None
        if w is None:
            raise TargetError(f"layer {label(prev)!r}{where} has 'weight_orig' but no 'weight_mask'")
        bkey = pparts.get("bias", pparts.get("bias_orig"))
        bias = None if bkey is None else state[bkey] * (state[pparts["bias_mask"]] if "bias_mask" in pparts else 1)
        gamma = state[parts["weight"]] if "weight" in parts else None
        beta = state[parts["bias"]] if "bias" in parts else None
        w2, b2 = fold_bn_tensors(w, bias, rm, rv, gamma, beta, eps)
        for leaf in ("weight_orig", "weight_mask", "bias_orig", "bias_mask"):
            out.pop(pparts.get(leaf, None), None)
        wkey, bkey = (f"{prev}.weight", f"{prev}.bias") if prev else ("weight", "bias")
        out[wkey], out[bkey] = w2, b2
        folded[prev] = (wkey, bkey)
        for key in parts.values():
            out.pop(key, None)
        log.info("folded BatchNorm %s into %s (eps %g)", name, label(prev), eps)
    # the folded layers keep their place in the file's order (their new keys where their first was)
    result: dict = {}
    for key in state:
        module = str(key).rpartition(".")[0]
        for k in (folded[module] if module in folded else (key,)):
            if k in out and k not in result:
                result[k] = out[k]
    return result


# --------------------------------------------------------------------------- layers and order

@dataclass
class LayerEntry:
    name: str                       #: module name, wrapper prefix stripped ('fc1', '0', 'layers.2')
    weight: torch.Tensor
    bias: torch.Tensor | None
    keys: list[str]                 #: the state_dict keys it came from
    pruned: bool = False            #: weight = weight_orig * weight_mask


def _strip_prefix(names: list[str]) -> str:
    stripped = ""
    while names:
        for pre in WRAPPER_PREFIXES:
            rest = [n[len(stripped):] for n in names]
            if all(r.startswith(pre) for r in rest):
                stripped += pre
                break
        else:
            break
    return stripped


#: buffer names under which models keep their own input normalisation (a Normalize layer inside)
_NORM_BUFFERS = {"mean", "std", "mu", "sigma", "pixel_mean", "pixel_std", "input_mean", "input_std"}


def collect_layers(state: dict, where: str) -> tuple[list[LayerEntry], str]:
    """Group ``state`` into Linear layers (module name -> weight, bias) in the file's order;
    refuse anything that is not a Linear weight/bias."""
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TargetError(f"entry {key!r}{where} is not a tensor")
        if str(key).rsplit(".", 1)[-1] in _BN_STATS:
            module = str(key).rsplit(".", 1)[0]
            raise TargetError(
                f"entry {key!r}{where} belongs to a batch normalisation layer ({module!r}) that was not "
                "folded: only an eval-mode BatchNorm right after a Linear layer is folded into it")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    keys: dict[str, list[str]] = {}
    for key, value in state.items():
        m = _PARAM.match(str(key))
        if not m:
            leaf = str(key).rsplit(".", 1)[-1].lower()
            hint = ""
            if leaf in _NORM_BUFFERS and value.numel() <= 4:   # a Normalize kept inside the model
                vals = ",".join(f"{float(v):g}" for v in value.detach().flatten().tolist())
                hint = (f"; if {key!r} ({vals}) is the input normalisation the model applies, remove it and "
                        "its partner from the state_dict and declare them with --input-normalize MEAN,STD")
            raise TargetError(
                f"unsupported entry {key!r}{where}: only the weight and bias of Linear layers are read "
                f"(a plain ReLU MLP; keys like '0.weight', 'fc1.bias', 'layers.2.weight'){hint}")
        part = m.group("kind") + (m.group("prune") or "")
        module = m.group("module") or ROOT
        groups.setdefault(module, {})[part] = value
        keys.setdefault(module, []).append(str(key))
    prefix = _strip_prefix(list(groups))
    layers = []
    for module, parts in groups.items():
        name = module[len(prefix):]
        pruned = False
        w = parts.get("weight")
        if w is None and "weight_orig" in parts:
            if "weight_mask" not in parts:
                raise TargetError(f"layer {name!r}{where} has 'weight_orig' but no 'weight_mask'")
            w, pruned = parts["weight_orig"] * parts["weight_mask"], True
        b = parts.get("bias")
        if b is None and "bias_orig" in parts:
            b = parts["bias_orig"] * parts.get("bias_mask", torch.ones_like(parts["bias_orig"]))
        if w is None:
            raise TargetError(f"layer {name!r}{where} has a bias but no weight")
        if w.dim() == 1:
            raise TargetError(
                f"layer {name!r}{where} has a 1-D weight of shape {tuple(w.shape)} and no running statistics: a "
                "normalisation layer that cannot be folded (LayerNorm, or BatchNorm with track_running_stats="
                "False); only an eval-mode BatchNorm right after a Linear layer is folded into it")
        layers.append(LayerEntry(name, w, b, keys[module], pruned))
    return layers, prefix


def _parts(name: str) -> list[str]:
    return name.split(".")


def _index_order(a: str, b: str) -> int:
    """-1/1 when nn.Sequential indices order a before/after b, 0 when they do not decide."""
    pa, pb = _parts(a), _parts(b)
    for x, y in zip(pa, pb):
        if x != y:
            if x.isdigit() and y.isdigit():
                return -1 if int(x) < int(y) else 1
            return 0
    return 0


def _natural(name: str):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in _parts(name)]


def _chains(layers: list[LayerEntry], limit: int = 2):
    """Orders of all layers consistent with Sequential indices in which shapes chain; at most
    ``limit``; the bool is False when the search budget ran out (treat as ambiguous)."""
    n = len(layers)
    before = [[j for j in range(n) if _index_order(layers[j].name, layers[i].name) < 0] for i in range(n)]
    found: list[list[int]] = []
    budget = [_CHAIN_BUDGET]

    def dfs(path: list[int], used: list[bool]) -> None:
        if len(found) >= limit or budget[0] <= 0:
            return
        budget[0] -= 1
        if len(path) == n:
            found.append(list(path))
            return
        last = layers[path[-1]].weight.shape[0] if path else None
        for j in range(n):
            if used[j] or any(not used[k] for k in before[j]):
                continue
            if last is not None and layers[j].weight.shape[1] != last:
                continue
            used[j] = True
            path.append(j)
            dfs(path, used)
            path.pop()
            used[j] = False

    dfs([], [False] * n)
    return found, budget[0] > 0


def _first_break(order: list[LayerEntry]) -> tuple[LayerEntry, LayerEntry] | None:
    for a, b in zip(order, order[1:]):
        if a.weight.shape[0] != b.weight.shape[1]:
            return a, b
    return None


def _shape_error(a: LayerEntry, b: LayerEntry, where: str, how: str = "") -> TargetError:
    return TargetError(f"inconsistent shapes{where}{how}: layer {a.name} outputs {a.weight.shape[0]} "
                       f"features but layer {b.name} expects {b.weight.shape[1]}")


def order_layers(layers: list[LayerEntry], where: str, order_known: bool,
                 explicit: list[str] | None = None, prefix: str = "") -> tuple[list[LayerEntry], str]:
    """The forward order of ``layers`` and how it was decided (see the module docstring)."""
    for L in layers:
        if L.weight.dim() != 2:
            kind = "a convolutional layer" if L.weight.dim() in (3, 4, 5) else f"a {L.weight.dim()}-D weight"
            if L.weight.dim() == 4:
                raise TargetError(f"layer {L.name}{where} is {kind} (weight shape {tuple(L.weight.shape)}); a "
                                  "state_dict does not say where pooling and flatten go: pass the architecture "
                                  "with --arch (e.g. --arch lenet5, or a SPEC such as "
                                  "c6k5p2,mp2,c16k5,mp2,fc120,fc84,fc10; see 'train-target --help')")
            raise TargetError(f"layer {L.name}{where} is {kind} (weight shape {tuple(L.weight.shape)}); "
                              "only Linear and Conv2d layers are supported")
    names = [L.name for L in layers]
    if explicit is not None:
        return _explicit_order(layers, explicit, where, prefix), "--layers"
    if len(layers) == 1:
        return layers, "single layer"
    n = len(layers)
    by_index = all(_index_order(layers[i].name, layers[j].name) != 0 for i in range(n) for j in range(i + 1, n))
    if by_index:
        order = sorted(layers, key=lambda L: _natural(L.name))
        brk = _first_break(order)
        if brk:
            raise _shape_error(*brk, where)
        return order, "nn.Sequential indices"
    candidate = layers if order_known else sorted(layers, key=lambda L: _natural(L.name))
    chains, complete = _chains(layers)
    fits = [[layers[i] for i in c] for c in chains]
    cand_ok = _first_break(candidate) is None and all(
        _index_order(a.name, b.name) <= 0 for k, a in enumerate(candidate) for b in candidate[k + 1:])
    listed = ",".join(L.name for L in candidate)
    if len(fits) == 1 and complete and (cand_ok or not order_known):
        how = "registration order, the only one the shapes allow" if order_known else \
              "the only order the shapes allow (safetensors keeps no module order)"
        return fits[0], how
    if not fits and complete:
        brk = _first_break(candidate) or _first_break(sorted(layers, key=lambda L: _natural(L.name)))
        if brk:
            raise _shape_error(*brk, where, f" (no order of the layers {', '.join(names)} chains)")
        raise TargetError(f"no order of the layers{where} chains and respects their nn.Sequential indices; "
                          f"state the forward order explicitly, e.g. --layers {listed}")
    if len(fits) == 1 and complete:
        a, b = _first_break(candidate) or (candidate[0], candidate[1])
        only = ",".join(L.name for L in fits[0])
        raise TargetError(
            f"the layers{where} are registered in the order {listed}, but their shapes only chain as "
            f"{only} (layer {a.name} outputs {a.weight.shape[0]} features, layer {b.name} expects "
            f"{b.weight.shape[1]}); if {only} is the forward order, pass --layers {only}")
    example = listed if cand_ok else ",".join(L.name for L in (fits[0] if fits else candidate))
    several = " and ".join(",".join(L.name for L in f) for f in fits[:2])
    why = f"several orders fit ({several})" if len(fits) > 1 else "too many orders to check"
    raise TargetError(
        f"cannot tell the forward order of the layers{where} from their shapes: {why}; pass the "
        f"forward order explicitly, e.g. --layers {example}")


def _explicit_order(layers: list[LayerEntry], explicit: list[str], where: str, prefix: str) -> list[LayerEntry]:
    by_name = {L.name: L for L in layers}
    order: list[LayerEntry] = []
    available = ",".join(L.name for L in layers)
    for raw in explicit:
        name = raw.strip()
        for suffix in (".weight", ".bias"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        if name not in by_name and prefix and name.startswith(prefix):
            name = name[len(prefix):]
        if name not in by_name:
            raise TargetError(f"--layers names {raw!r}, which is not a Linear layer{where}; "
                              f"its layers are: {available}")
        if by_name[name] in order:
            raise TargetError(f"--layers names {raw!r} twice; list each layer once, e.g. --layers {available}")
        order.append(by_name[name])
    missing = [L.name for L in layers if L not in order]
    if missing:
        raise TargetError(f"--layers lists {len(order)} of the {len(layers)} Linear layers{where}; "
                          f"also place {', '.join(missing)} (all of: {available})")
    brk = _first_break(order)
    if brk:
        raise _shape_error(*brk, where, " in the --layers order")
    return order


def parse_layers(text: str | None) -> list[str] | None:
    """``--layers fc1,fc2,fc3`` -> ['fc1', 'fc2', 'fc3'] (None stays None)."""
    if text is None:
        return None
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise TargetError("--layers needs comma-separated layer names, e.g. --layers fc1,fc2,fc3")
    return names
