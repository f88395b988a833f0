"""Loading and refusing targets: each refusal names the problem."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from subsetsum_lth.errors import TargetError
from subsetsum_lth.target import from_module, load_target, random_target, save_target


def _mlp(bias=True):
    return nn.Sequential(nn.Linear(5, 4, bias=bias), nn.ReLU(), nn.Linear(4, 3, bias=bias))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("fmt", ["pt", "safetensors", "folder", "checkpoint"])
def test_load_formats(tmp_path, bias, fmt):
    m = _mlp(bias)
    sd = m.state_dict()
    if fmt == "pt":
        path = tmp_path / "t.pt"
        torch.save(sd, path)
    elif fmt == "safetensors":
        path = tmp_path / "t.safetensors"
        save_file(sd, str(path))
    elif fmt == "checkpoint":
        path = tmp_path / "t.pt"
        torch.save({"state_dict": sd, "epochs": 3}, path)
    else:
        path = tmp_path
        save_target(from_module(m), tmp_path / "target.safetensors")
    t = load_target(path)
    assert t.sizes == [5, 4, 3] and t.has_bias == bias
    assert np.array_equal(t.layers[1].weight, sd["2.weight"].double().numpy())
    x = torch.randn(7, 5)
    assert torch.allclose(t.forward(x.double()).float(), m(x), atol=1e-5)


def _expect(path, *words):
    with pytest.raises(TargetError) as ei:
        load_target(path)
    msg = str(ei.value).lower()
    for w in words:
        assert w.lower() in msg, msg
    return msg


def test_refuses_conv(tmp_path):
    sd = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Linear(4, 2)).state_dict()
    torch.save(sd, tmp_path / "c.pt")
    _expect(tmp_path / "c.pt", "convolutional")


def test_folds_batchnorm_after_linear_and_refuses_it_after_a_gap(tmp_path):
    # issue 20: an eval-mode BatchNorm right after a Linear is folded into it ...
    sd = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).state_dict()
    torch.save(sd, tmp_path / "b.pt")
    assert load_target(tmp_path / "b.pt").sizes == [3, 4, 2]
    # ... one with a module between (maybe a ReLU) cannot be folded exactly and is refused
    sd = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 2)).state_dict()
    torch.save(sd, tmp_path / "c.pt")
    _expect(tmp_path / "c.pt", "BatchNorm '2'")


def test_sequential_index_gap_is_an_offset(tmp_path):
    # Sequential(Linear, ReLU, Dropout, Linear): indices 0 and 3 (modules without weights between)
    sd = {"0.weight": torch.randn(4, 3), "3.weight": torch.randn(2, 4)}
    torch.save(sd, tmp_path / "g.pt")
    assert load_target(tmp_path / "g.pt").sizes == [3, 4, 2]
    sd = {"0.weight": torch.randn(4, 3), "3.weight": torch.randn(2, 5)}
    torch.save(sd, tmp_path / "g.pt")
    _expect(tmp_path / "g.pt", "inconsistent shapes", "layer 0 outputs 4", "layer 3 expects 5")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_refuses_nonfinite(tmp_path, bad):
    sd = _mlp().state_dict()
    sd["2.weight"][0, 1] = bad
    torch.save(sd, tmp_path / "n.pt")
    _expect(tmp_path / "n.pt", "nan/inf", "layer 2")


def test_refuses_inconsistent_shapes(tmp_path):
    sd = {"0.weight": torch.randn(4, 3), "2.weight": torch.randn(2, 5)}
    save_file(sd, str(tmp_path / "s.safetensors"))
    _expect(tmp_path / "s.safetensors", "inconsistent shapes", "outputs 4", "expects 5")


def test_refuses_bias_mismatch(tmp_path):
    sd = {"0.weight": torch.randn(4, 3), "0.bias": torch.randn(3)}
    torch.save(sd, tmp_path / "s.pt")
    _expect(tmp_path / "s.pt", "bias shape")


def test_refuses_pickled_module_and_code(tmp_path):
    torch.save(_mlp(), tmp_path / "whole.pt")          # a pickled module, not a state_dict
    _expect(tmp_path / "whole.pt", "weights_only", "state_dict")

    class Evil:
        def __reduce__(self):
            return (exec, ("open('%s', 'w').write('pwned')" % (tmp_path / "pwned").as_posix(),))
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"0.weight": Evil()}, fh)
    _expect(tmp_path / "evil.pt", "weights_only")
    assert not (tmp_path / "pwned").exists()


def test_refuses_non_state_dict(tmp_path):
    torch.save([torch.randn(2, 2)], tmp_path / "l.pt")
    _expect(tmp_path / "l.pt", "not a state_dict")
    (tmp_path / "x.txt").write_text("hello")
    _expect(tmp_path / "x.txt", "unsupported target file type")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage")
    _expect(tmp_path / "bad.safetensors", "cannot read")
    _expect(tmp_path / "missing.pt", "does not exist")
    _expect(tmp_path, "without target.safetensors")


def test_refuses_other_activation_in_module_and_metadata(tmp_path):
    with pytest.raises(TargetError, match="Tanh"):
        from_module(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    save_file(_mlp().state_dict(), str(tmp_path / "t.safetensors"), metadata={"activation": "gelu"})
    _expect(tmp_path / "t.safetensors", "gelu", "only relu")


def test_random_target_in_theorem_class():
    t = random_target((20, 10, 3), seed=0, max_spectral_norm=1.0)
    assert all(np.linalg.norm(L.weight, 2) <= 1.0 for L in t.layers)


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_pickle_protocols_load_or_refuse_without_warnings(tmp_path, protocol):
    """torch's weights-only unpickler reads protocol 2 (torch.save's) and warns on, then
    refuses, the others; the loader gives its one clear error and no torch warning."""
    import warnings

    sd = _mlp().state_dict()
    torch.save(sd, tmp_path / "p.pt", pickle_protocol=protocol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if protocol == 2:
            t = load_target(tmp_path / "p.pt")
            np.testing.assert_allclose(np.asarray(t.layers[0].weight, dtype=np.float64),
                                       sd["0.weight"].double().numpy())
        else:
            with pytest.raises(TargetError, match="weights_only"):
                load_target(tmp_path / "p.pt")
    assert not caught, [str(w.message) for w in caught]
