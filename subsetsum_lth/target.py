"""Load and validate a target ReLU MLP into a list of layers (W, b).

Accepted: the state_dict of a ReLU MLP in a ``.pt``/``.pth``/``.ckpt``/``.bin``/``.tar`` or
``.safetensors`` file — ``nn.Sequential`` keys (``0.weight``, ``0.bias``, ``2.weight``, ...;
biases optional; Flatten/Dropout offsets allowed) or named modules (``fc1``, ``layers.0``, ...),
bare or inside a checkpoint dict, with ``module.``/``model.`` prefixes (see
:mod:`subsetsum_lth.checkpoint`) — a run/target folder written by ``train-target``
(``target.safetensors`` inside), or, from Python, an ``nn.Sequential`` itself.
Pickled modules are never unpickled: torch files are read with ``weights_only=True``.
Declared input preprocessing is a fixed input op in front of the layers (``Target.preprocessing``,
applied by :meth:`Target.forward`), or folded into the first layer on request
(:mod:`subsetsum_lth.preprocess`).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from subsetsum_lth.checkpoint import collect_layers, fold_state_batchnorm, order_layers, parse_layers, read_checkpoint
from subsetsum_lth.arch import fold_batchnorm
from subsetsum_lth import preprocess
from subsetsum_lth.arch_state import state_for_arch
from subsetsum_lth.errors import TargetError
from subsetsum_lth import arch as arch_mod
from subsetsum_lth.graph_files import check_same, graph_file_kind, graph_file_parts, module_parts
from subsetsum_lth.preprocess import input_module
from subsetsum_lth.ops import canonical_arch, is_residual, module_from_ops, param_paths, relu_follows, signed_inputs
from subsetsum_lth.layerkinds import Linear, arch_of, forward_graph, kinds_from_arch
from subsetsum_lth.runfolder import atomic_save_safetensors

log = logging.getLogger(__name__)

TARGET_FILENAME = "target.safetensors"


@dataclass
class Layer:
    """One parametric target layer, seen as the matrix W (q × p) of its kind (see
    :mod:`subsetsum_lth.layerkinds`): x -> W x + b for a Linear layer, the kernel reshaped to
    (c_out, c_in·k_h·k_w) for a Conv2d layer. ReLU after it unless it is the last."""

    weight: np.ndarray          #: float64 (q, p)
    bias: np.ndarray | None     #: float64 (q,) or None
    kind_: object = None        #: a layerkinds kind; None means Linear of the weight's shape

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)  # (q, p)

    @property
    def kind(self):
        if self.kind_ is None:
            q, p = self.weight.shape
            return Linear(p, q, self.bias is not None)
        return self.kind_

    def tensor(self) -> np.ndarray:
        """The weight in its layer's own shape (a conv kernel is 4-d)."""
        return self.weight.reshape(self.kind.weight_shape())


@dataclass
class Target:
    layers: list[Layer]
    metadata: dict = field(default_factory=dict)
    source: str = ""
    #: per layer, the parameter-free ops after its ReLU (pooling, flatten); None: none anywhere
    after: list | None = None
    #: the shape of one input (C, H, W) for convolutional targets; None: flat (p,)
    input_shape: tuple | None = None
    #: the input op (a :class:`subsetsum_lth.preprocess.Preprocessing`) applied before the first
    #: layer: ``forward`` takes pixels/255 and the layers see ``a ⊙ x + c``; None: inputs as given
    preprocessing: object = None
    #: a residual network's canonical architecture list (ReLUs explicit, residual ops nested;
    #: docs/cnn.md): its layers are its conv2d/linear ops in forward order (a body before its
    #: shortcut) and ``after`` is empty for each; None for a chain (MLP or plain CNN)
    graph: list | None = None

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def sizes(self) -> list[int]:
        """[p, q_1, ..., q_l] of the layers' matrix views (for an MLP its layer widths)."""
        return [self.layers[0].weight.shape[1]] + [L.weight.shape[0] for L in self.layers]

    def chunk_rows(self, cap: int = 4096, budget: int = 64_000_000) -> int:
        """Inputs to evaluate at once: ``cap``, fewer where one input's widest tensor times ``cap``
        would pass ``budget`` values (512 MB in float64). A conv counts its output and the
        patch matrix torch's CPU convolution unfolds its input into (c_in·k_h·k_w × positions):
        for 32→32 channels, 3×3, at 28×28 that is 225,792 values, so 283 rows (4096 rows of it
        peaked at 9 GB). An MLP's stays at ``cap``."""
        widest = self.input_dim
        for L in self.layers:
            kind = L.kind
            if kind.name == "conv2d":
                positions = int(np.prod(kind.out_hw))
                widest = max(widest, kind.q * positions, kind.p * positions)
            else:
                widest = max(widest, int(kind.q))
        return max(1, min(int(cap), int(budget) // max(1, widest)))

    @property
    def is_mlp(self) -> bool:
        return self.input_shape is None and all(L.kind_ is None or L.kind.name == "linear" for L in self.layers) \
            and not any(self.ops_after(i) for i in range(self.depth))

    @property
    def input_dim(self) -> int:
        """The number of input values (C·H·W for an image network)."""
        if self.input_shape is not None:
            return int(np.prod(self.input_shape))
        return self.layers[0].weight.shape[1]

    def network_ball(self, input_radius: float, input_domain: str) -> tuple[float, str]:
        """The ball (radius, domain) of the layers' inputs that holds the image of the ball of
        ``forward``'s inputs: itself without an input op (see :mod:`subsetsum_lth.preprocess`)."""
        if self.preprocessing is None:
            return float(input_radius), input_domain
        return self.preprocessing.network_ball(input_radius, input_domain, self.input_dim)

    def network_box(self, lo, hi):
        """The box of the layers' inputs that is the image of lo ≤ x ≤ hi: itself without an input op."""
        if self.preprocessing is None:
            return lo, hi
        return self.preprocessing.network_box(lo, hi, self.input_dim)

    def ops_after(self, i: int) -> list:
        return [] if self.after is None else list(self.after[i])

    def signed_inputs(self, input_domain: str) -> list[bool]:
        """Per layer, whether its input can be negative (the construction then uses both sign
        halves of its blocks, the certificate [E⁺ E⁻]): the first layer's under the signed input
        domain; in a residual network also any layer whose input is not after a ReLU."""
        if self.graph is not None:
            return signed_inputs(self.graph, input_domain == "signed")
        return [i == 0 and input_domain == "signed" for i in range(self.depth)]

    def relu_after(self, i: int) -> bool:
        """Whether a ReLU comes right after layer i (every layer but the last of a chain; in a
        residual network where its architecture puts one)."""
        if self.graph is not None:
            return relu_follows(self.graph)[i]
        return i < self.depth - 1

    def arch(self) -> list[dict]:
        if self.graph is not None:
            return json.loads(json.dumps(self.graph))
        return arch_of([L.kind for L in self.layers], [self.ops_after(i) for i in range(self.depth)])

    @property
    def has_bias(self) -> bool:
        return any(L.bias is not None for L in self.layers)

    @property
    def n_parameters(self) -> int:
        return sum(L.weight.size + (0 if L.bias is None else L.bias.size) for L in self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) in the dtype of x (use float64 for certificates). ``x``: (N, input_dim) flat,
        or (N, C, H, W) images; the output is (N, outputs) flat. With an input op
        (``preprocessing``) ``x`` is in pixels/255 and the layers see ``a ⊙ x + c``."""
        h = x if self.preprocessing is None else self.preprocessing.transform(x)
        if self.graph is not None:

            def layer(k, h):
                L = self.layers[k]
                W = torch.as_tensor(L.weight, dtype=h.dtype, device=h.device)
                b = None if L.bias is None else torch.as_tensor(L.bias, dtype=h.dtype, device=h.device)
                return L.kind.apply(h, W, b)
            h = forward_graph(self.graph, h.reshape(h.shape[0], *self.input_shape), layer)
            return h.reshape(h.shape[0], -1)
        for i, L in enumerate(self.layers):
            W = torch.as_tensor(L.weight, dtype=x.dtype, device=x.device)
            b = None if L.bias is None else torch.as_tensor(L.bias, dtype=x.dtype, device=x.device)
            h = L.kind.apply(h, W, b)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
            for op in self.ops_after(i):
                h = op.apply(h)
        return h.reshape(h.shape[0], -1)

    def to_module(self, dtype=torch.float32) -> nn.Sequential:
        """f as an nn.Sequential (with an nn.Unflatten first for image networks, so it takes
        flat vectors like the rest of the package; ``module[1:]`` takes N×C×H×W images). With an
        input op it comes first (an InputNormalize: the module takes pixels/255 like ``forward``)."""
        if self.graph is not None:
            body = module_from_ops(self.graph, self.state_dict(), None, dtype)
            first = []
            if self.preprocessing is not None:
                first.append(input_module(self.preprocessing, self.input_dim))
            return nn.Sequential(*first, nn.Unflatten(1, tuple(self.input_shape)), *body, nn.Flatten()).to(dtype)
        mods: list[nn.Module] = []
        if self.preprocessing is not None:    # the input op first: the module takes pixels/255 too
            mods.append(input_module(self.preprocessing, self.input_dim))
        if self.input_shape is not None:
            mods.append(nn.Unflatten(1, tuple(self.input_shape)))
        for i, L in enumerate(self.layers):
            kind = L.kind
            if kind.name == "linear":
                q, p = L.weight.shape
                mod = nn.Linear(p, q, bias=L.bias is not None)
            else:
                mod = nn.Conv2d(kind.in_channels, kind.out_channels, kind.kernel, kind.stride, kind.padding,
                                bias=L.bias is not None)
            with torch.no_grad():
                mod.weight.copy_(torch.as_tensor(L.tensor()))
                if L.bias is not None:
                    mod.bias.copy_(torch.as_tensor(L.bias))
            mods.append(mod)
            if i < len(self.layers) - 1:
                mods.append(nn.ReLU())
            mods.extend(op.module() for op in self.ops_after(i))
        if not self.is_mlp and self.layers[-1].kind.name != "linear":
            mods.append(nn.Flatten())
        return nn.Sequential(*mods).to(dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """float32 tensors when every value is exactly a float32 (a float32 target), else float64:
        a saved target is the same function as the one in memory, so a certificate recomputed
        from the file matches the one computed before saving. MLP keys are those of
        Sequential(Linear, ReLU, ...); a network with conv/pooling layers is keyed by the index
        of each layer in its architecture list (:meth:`arch`), which is saved beside it."""
        arrays = {}
        if self.is_mlp:
            for i, L in enumerate(self.layers):
                arrays[f"{2 * i}.weight"] = L.weight
                if L.bias is not None:
                    arrays[f"{2 * i}.bias"] = L.bias
        else:
            for idx, L in zip(self.arch_indices(), self.layers):
                arrays[f"{idx}.weight"] = L.tensor()
                if L.bias is not None:
                    arrays[f"{idx}.bias"] = L.bias
        exact32 = all(np.array_equal(a.astype(np.float32).astype(np.float64), a) for a in arrays.values())
        dtype = torch.float32 if exact32 else torch.float64
        return {k: torch.as_tensor(a, dtype=dtype).contiguous() for k, a in arrays.items()}

    def arch_indices(self) -> list:
        """The index in :meth:`arch` (= in ``module_from_arch``) of each parametric layer; for a
        residual network its module path (``3.body.0``, :func:`subsetsum_lth.ops.param_paths`)."""
        if self.graph is not None:
            return [p for p, _ in param_paths(self.graph)]
        return [i for i, op in enumerate(self.arch()) if op["op"] in ("linear", "conv2d")]


def target_digest(target: Target) -> str:
    """A short sha256 of the target's weights and biases (run_config.json's ``target_digest``:
    a resumed or rechecked run is of the same target)."""
    h = hashlib.sha256()
    for L in target.layers:
        h.update(np.ascontiguousarray(L.weight).tobytes())
        if L.bias is not None:
            h.update(np.ascontiguousarray(L.bias).tobytes())
    return h.hexdigest()[:16]


def from_state_dict(state: dict, source: str = "", metadata: dict | None = None,
                    layers: list[str] | None = None, order_known: bool = True,
                    info: dict | None = None) -> Target:
    """Validate the Linear layers of a ReLU MLP's state_dict and return them in forward order.

    Keys may be those of an ``nn.Sequential`` (``0.weight``, ``2.weight``, ... with any
    Flatten/Dropout/ReLU offsets) or named modules (``fc1``, ``layers.0``, ...); see
    :mod:`subsetsum_lth.checkpoint` for the order rules. ``layers`` states the order explicitly
    (``--layers``). ``info`` (optional) is filled with what the loader saw."""
    where = f" in {source}" if source else ""
    info = {} if info is None else info
    if not isinstance(state, dict) or not state:
        raise TargetError(f"the target{where} is not a non-empty state_dict "
                          "(save it with torch.save(model.state_dict(), path))")
    metadata = dict(metadata or {})
    info["metadata"] = {k: v for k, v in metadata.items()}
    act = str(metadata.get("activation", "relu")).lower()
    if act != "relu":
        raise TargetError(f"the target{where} uses activation {act!r}; only ReLU MLPs are supported")
    state = fold_state_batchnorm(state, where, order_known)   # eval-mode BatchNorm after a Linear
    entries, prefix = collect_layers(state, where)
    info["prefix_stripped"] = prefix or None
    info["entries"] = [{"name": e.name, "keys": e.keys, "shape": list(e.weight.shape),
                        "bias": e.bias is not None, "dtype": str(e.weight.dtype).replace("torch.", ""),
                        "pruned": e.pruned} for e in entries]
    ordered, how = order_layers(entries, where, order_known, layers, prefix)
    info["order"] = [e.name for e in ordered]
    info["order_from"] = how
    out: list[Layer] = []
    for e in ordered:
        idx, w = e.name, e.weight
        if not (w.is_floating_point()):
            raise TargetError(f"layer {idx}{where} has a non-floating weight of dtype {w.dtype}; pass the "
                              "trained model's float weights (in a run folder: the folder itself or its "
                              "target.safetensors, not masks.safetensors; a quantised model dequantised first)")
        wn = w.detach().to(torch.float64).cpu().numpy()
        if not np.all(np.isfinite(wn)):
            bad = int((~np.isfinite(wn)).sum())
            raise TargetError(f"layer {idx}{where} has {bad} NaN/Inf weight(s); fix or retrain the target")
        bn = None
        if e.bias is not None:
            b = e.bias
            if b.dim() != 1 or b.shape[0] != w.shape[0]:
                raise TargetError(f"layer {idx}{where}: bias shape {tuple(b.shape)} does not match "
                                  f"weight shape {tuple(w.shape)} (expected ({w.shape[0]},))")
            bn = b.detach().to(torch.float64).cpu().numpy()
            if not np.all(np.isfinite(bn)):
                raise TargetError(f"layer {idx}{where} has NaN/Inf bias entries")
        if 0 in wn.shape:
            raise TargetError(f"layer {idx}{where} has an empty weight of shape {wn.shape}")
        out.append(Layer(wn, bn))
    return Target(out, metadata, source)


def _from_parts(parts: dict) -> Target:
    return from_arch_state(parts["state"], parts["arch"], parts["input_shape"], parts["source"], parts["metadata"])


def module_target(model: nn.Module, example_input: torch.Tensor, info: dict | None = None,
                  check: bool = True) -> Target:
    """The target of a live module, read from ``torch.export.export(model.eval(), (x,))`` (see
    :mod:`subsetsum_lth.graph_files`); with ``check`` its output on the example input is compared
    with the module's."""
    info = {} if info is None else info
    target = _from_parts(module_parts(model, example_input, info))
    if check:
        check_same(model, target, example_input, type(model).__name__)
    return target


def from_module(module: nn.Module, example_input: torch.Tensor | None = None) -> Target:
    """Validate an ``nn.Sequential`` of Linear/ReLU modules (ReLU between Linear layers); with
    an ``example_input``, any module, read from its graph (``torch.export``, see
    :func:`module_target`): what it computes, or a refusal naming the op."""
    if example_input is not None:
        return module_target(module, example_input)
    if not isinstance(module, nn.Sequential):
        raise TargetError(f"expected an nn.Sequential of Linear and ReLU modules, got {type(module).__name__}")
    if any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in module.modules()):
        module = fold_batchnorm(module)   # eval-mode BatchNorm right after a Linear, or refused naming it
    mods = list(module)
    for i, m in enumerate(mods):
        want = nn.Linear if i % 2 == 0 else nn.ReLU
        if not isinstance(m, want):
            raise TargetError(
                f"module {i} is {type(m).__name__}; expected {want.__name__} "
                "(only Sequential(Linear, ReLU, ..., Linear) MLPs are supported)")
    if not mods or not isinstance(mods[-1], nn.Linear):
        raise TargetError("the last module must be a Linear layer (no activation on the output)")
    return from_state_dict(module.state_dict(), source=type(module).__name__)


def load_target(path: str | Path, layers: list[str] | str | None = None,
                preprocessing=None, info: dict | None = None, arch=None,
                input_shape=(1, 28, 28), fold_preprocessing: bool = False) -> Target:
    """Load a target from a checkpoint file (see :mod:`subsetsum_lth.checkpoint`) or a
    train-target folder.

    ``layers``: the forward order of named layers (``--layers fc1,fc2,fc3``) where the file does
    not determine it. ``preprocessing``: a :class:`subsetsum_lth.preprocess.Preprocessing` the
    model was trained with (``--input-normalize``/``--input-scale``); it, or one stored in the
    file's metadata, becomes the target's input op (``fold_preprocessing``: folded into the first
    layer instead, where exact), so the returned target's ``forward`` takes pixels/255.
    ``info`` (optional) is filled with what the loader saw, also when it refuses.
    ``arch``: an architecture (``--arch lenet5`` or a SPEC, or a parsed list) for a plain
    state_dict of a network with conv/pooling layers, whose keys cannot say where pooling and
    flatten go; a file written by this tool carries its architecture in its metadata."""
    info = {} if info is None else info
    if isinstance(layers, str):
        layers = parse_layers(layers)
    path = Path(path)
    if path.is_dir():
        candidate = path / TARGET_FILENAME
        if not candidate.exists():
            raise TargetError(f"{path} is a folder without {TARGET_FILENAME}; "
                              "pass a target file or a folder written by 'subsetsum-lth train-target'")
        path = candidate
    if not path.exists():
        raise TargetError(f"target file {path} does not exist")
    kind = graph_file_kind(path)
    if kind is not None:     # a graph (.pt2, TorchScript): it records its layers, activations, order
        given = [flag for flag, v in (("--layers", layers), ("--arch", arch)) if v is not None]
        if given:
            raise TargetError(f"{' and '.join(given)} describe a state_dict, but {path} is a "
                              f"{'torch.export archive' if kind == 'export' else 'TorchScript file'} whose graph "
                              "records its layers: drop them")
        target = _from_parts(graph_file_parts(path, kind, info))
        target = preprocess.apply(target, preprocessing)
        info["preprocessing"] = preprocess.report(target)
        return target
    raw = read_checkpoint(path)
    info.update(raw.info)
    # a file written by this tool (or one with both keys) records its architecture; an 'arch'
    # alone is another program's metadata (e.g. torchvision's ImageNet example: 'resnet18')
    ours = raw.metadata.get("format") == "subsetsum-lth-target" or "input_shape" in raw.metadata
    stored = arch_mod.arch_from_metadata(raw.metadata, str(path)) if arch is None and ours else None
    if stored is not None:
        arch, input_shape = stored
        info["arch_from"] = "recorded"
    elif arch is not None:
        if isinstance(arch, str):
            arch = arch_mod.parse_arch(arch, input_shape)
        raw_state = state_for_arch(raw.state, arch, str(path), order_known=raw.order_known)
        raw = type(raw)(**{**raw.__dict__, "state": raw_state})
    if arch is not None:
        info["arch"] = arch
        target = from_arch_state(raw.state, arch, input_shape, str(path), raw.metadata)
    else:
        target = from_state_dict(raw.state, str(path), raw.metadata, layers=layers,
                                 order_known=raw.order_known, info=info)
    target = preprocess.apply(target, preprocessing, fold_preprocessing)
    info["preprocessing"] = preprocess.report(target)
    return target


def save_target(target: Target, path: str | Path, metadata: dict | None = None) -> None:
    meta = {"format": "subsetsum-lth-target", "activation": "relu"}
    meta.update({k: str(v) for k, v in (target.metadata or {}).items()})
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    for key in ("arch", "input_shape"):   # these keys are the tool's own: another program's move aside
        if key in meta and target.is_mlp:
            meta[f"checkpoint_{key}"] = meta.pop(key)
    if not target.is_mlp:
        meta["arch"] = json.dumps(target.arch())
        meta["input_shape"] = json.dumps(list(target.input_shape or [target.input_dim]))
    atomic_save_safetensors(target.state_dict(), path, meta)


def from_arch_state(state: dict, arch: list[dict], input_shape, source: str = "",
                    metadata: dict | None = None) -> Target:
    """A target from an architecture list (:mod:`subsetsum_lth.arch`) and a state dict keyed
    like ``module_from_arch(arch)`` (``{index}.weight``/``{index}.bias`` for each conv2d/linear
    entry). Shapes, dtypes and finiteness are checked; every key must be used."""
    where = f" in {source}" if source else ""
    if input_shape is None or len(input_shape) == 0:
        raise TargetError(f"the target{where} has an architecture but no input shape")
    kinds, after = kinds_from_arch(arch, input_shape)
    graph = canonical_arch(arch) if is_residual(arch) else None
    idxs = [p for p, _ in param_paths(canonical_arch(arch))]
    used, layers = set(), []
    for idx, kind in zip(idxs, kinds):
        wkey, bkey = f"{idx}.weight", f"{idx}.bias"
        if wkey not in state:
            raise TargetError(f"the target{where} has no tensor {wkey!r} for layer {idx} ({kind.name}) of its "
                              f"architecture; expected shape {list(kind.weight_shape())}")
        w = torch.as_tensor(state[wkey])
        if tuple(w.shape) != tuple(kind.weight_shape()):
            raise TargetError(f"{wkey}{where} has shape {list(w.shape)}; layer {idx} ({kind.name}) of the "
                              f"architecture needs {list(kind.weight_shape())}")
        if not w.is_floating_point():
            raise TargetError(f"{wkey}{where} has the non-floating dtype {w.dtype}")
        wn = w.detach().to(torch.float64).cpu().numpy().reshape(kind.q, kind.p)
        if not np.all(np.isfinite(wn)):
            raise TargetError(f"{wkey}{where} has {int((~np.isfinite(wn)).sum())} NaN/Inf weight(s); "
                              "fix or retrain the target")
        used.add(wkey)
        bn = None
        if bkey in state:
            b = torch.as_tensor(state[bkey])
            if tuple(b.shape) != (kind.q,):
                raise TargetError(f"{bkey}{where} has shape {list(b.shape)}; expected [{kind.q}]")
            bn = b.detach().to(torch.float64).cpu().numpy()
            if not np.all(np.isfinite(bn)):
                raise TargetError(f"{bkey}{where} has NaN/Inf entries")
            used.add(bkey)
        elif kind.bias:
            # the architecture says bias but the file has none: a bias-free layer
            pass
        layers.append(Layer(wn, bn, kind))
    extra = sorted(set(state) - used)
    if extra:
        raise TargetError(f"the target{where} holds tensors its architecture does not use: "
                          f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    if all(k.name == "linear" for k in kinds) and not any(after) and graph is None:
        # a fully connected architecture (e.g. --arch fc256,fc128,fc10, a flatten first) is a
        # plain MLP on flat inputs: the same target, keys and behaviour as one read without --arch
        return Target([Layer(L.weight, L.bias) for L in layers], dict(metadata or {}), source)
    return Target(layers, dict(metadata or {}), source, after=after, input_shape=tuple(int(v) for v in input_shape),
                  graph=graph)


def random_target(sizes, bias=True, seed=0, scale: float | None = None,
                  max_spectral_norm: float | None = None) -> Target:
    """A seeded random MLP (used as the synthetic default and in tests).

    Weights are N(0, 1/fan_in) unless ``scale`` is given (then U[-scale, scale]); with
    ``max_spectral_norm`` every W is rescaled so that ‖W‖₂ ≤ that value (Theorem 1's class
    uses 1)."""
    rng = np.random.default_rng(seed)
    layers = []
    for p, q in zip(sizes[:-1], sizes[1:]):
        if scale is None:
            W = rng.normal(0.0, 1.0 / np.sqrt(p), size=(q, p))
        else:
            W = rng.uniform(-scale, scale, size=(q, p))
        if max_spectral_norm is not None:
            nrm = float(np.linalg.norm(W, 2))
            if nrm > max_spectral_norm:
                W = W * (max_spectral_norm / nrm) * (1 - 1e-6)
        b = rng.uniform(-0.1, 0.1, size=q) if bias else None
        # float32-representable values, so that saved and in-memory targets agree exactly
        W = W.astype(np.float32).astype(np.float64)
        b = None if b is None else b.astype(np.float32).astype(np.float64)
        layers.append(Layer(W, b))
    return Target(layers, {"synthetic": json.dumps({"sizes": list(sizes), "seed": seed})}, "synthetic")
