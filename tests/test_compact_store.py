"""Issue 15: g held and stored as its block support (``--store compact``), the dense files
materialised on request (``export-dense``), and every reader taking both forms."""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from subsetsum_lth import cli, gstore, runwriter
from subsetsum_lth import runfolder as rf
from subsetsum_lth.certify import layer_maps, pruned_module
from subsetsum_lth.construction import ConstructionConfig, build_construction, draw_layer_pair, plan_layers, unit_columns
from subsetsum_lth.layer_instances import compact_masks_from_selections, dense_masks, layer_instances
from subsetsum_lth.mask_rules import masks_state_dict
from subsetsum_lth.errors import RunFolderError, UserError
from subsetsum_lth.runcheck import read_run
from subsetsum_lth.target import random_target, save_target


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- the support itself

@given(st.integers(0, 2**32 - 1), st.sampled_from(["uniform", "normal"]), st.booleans(), st.booleans())
def test_support_is_the_dense_draw_at_each_units_own_edge(seed, dist, bias, grow):
    t = random_target((5, 4, 3), bias=bias, seed=1)
    plans = plan_layers(t, ConstructionConfig(seed=seed, block_width=6, width="auto", grow=2,
                                              distribution=dist, input_domain="signed"))
    for pl in plans:
        if grow:
            pl.extensions = np.arange(pl.n_blocks) % 3
        lean = draw_layer_pair(pl, seed, dist)
        dense = draw_layer_pair(pl, seed, dist, dense=True)
        assert lean.dense_w1 is None and dense.dense_w1.shape == (pl.hidden, pl.p)
        cols = unit_columns(pl)
        own = np.flatnonzero(cols >= 0)
        assert np.array_equal(lean.u[own], dense.w1[own, cols[own]])
        assert not lean.u[cols < 0].any()                  # the bias block keeps no input edge
        for r in ("b1", "w2", "b2"):
            assert np.array_equal(getattr(lean, r), getattr(dense, r))
        assert np.array_equal(lean.w1, dense.w1)          # regenerated on demand, bit for bit


def test_pair_remembers_its_plan_when_the_plan_grows_later():
    t = random_target((3, 2), bias=True, seed=0)
    plan = plan_layers(t, ConstructionConfig(seed=4, block_width=6, width="auto", grow=3))[0]
    before = draw_layer_pair(plan, 4, dense=True)
    lean = draw_layer_pair(plan, 4)
    plan.extensions = np.array([0, 2, 0, 1])
    assert lean.w1.shape == before.w1.shape and np.array_equal(lean.w1, before.w1)
    assert lean.columns.shape == (before.w1.shape[0],) and \
        lean.size == sum(a.size for a in (before.w1, before.b1, before.w2, before.b2))


def _random_masks(construction, rng, p_keep=0.5):
    """Support-form masks that respect §1's pre-pruning, from random selections."""
    out = []
    for pair in construction.pairs:
        t_w = rng.uniform(-1, 1, (pair.plan.q, pair.plan.p))
        t_b = rng.uniform(-1, 1, pair.plan.q) if pair.plan.has_bias else None
        inst = layer_instances(pair, t_w, t_b)
        sel = rng.random((len(inst), inst.width)) < p_keep
        sel &= np.arange(inst.width)[None, :] < inst.counts[:, None]
        out.append(compact_masks_from_selections(inst, sel))
    return out


@pytest.mark.parametrize("domain", ["nonnegative", "signed"])
@pytest.mark.parametrize("grown", [False, True])
def test_support_layer_maps_and_supportnet_equal_the_dense_network(domain, grown):
    t = random_target((7, 5, 4, 3), bias=True, seed=3)
    c = build_construction(t, ConstructionConfig(seed=9, block_width=8, input_domain=domain, width="auto", grow=3))
    if grown:
        for pl in c.plans:
            pl.extensions = np.arange(pl.n_blocks) % 3
        c.pairs = [draw_layer_pair(pl, 9) for pl in c.plans]
    cm = _random_masks(c, np.random.default_rng(0))
    layout = c.layout
    state = c.state_dict()
    masks = masks_state_dict([dense_masks(pl, m) for pl, m in zip(c.plans, cm)], layout)
    lazy = gstore.DenseMasks(c.plans, cm, layout)
    assert set(lazy) == set(masks) and all(np.array_equal(lazy[k], masks[k]) for k in masks)
    lazy_state = gstore.DenseState(c.pairs, layout)
    assert set(lazy_state) == set(state) and all(np.array_equal(lazy_state[k], state[k]) for k in state)
    dense_maps = layer_maps(state, masks, layout)
    lean_maps = gstore.support_layer_maps(c.pairs, cm)
    for a, b in zip(dense_maps, lean_maps):
        for x, y in ((a.w_plus, b.w_plus), (a.w_minus, b.w_minus), (a.bias, b.bias)):
            assert np.array_equal(x, y)                             # bit for bit
    x = torch.rand(300, 7, dtype=torch.float64) * 2 - (1 if domain == "signed" else 0)
    g = pruned_module(state, masks, layout, torch.float64)
    s = gstore.SupportNet(c.pairs, cm, torch.float64, chunk=5, rows=128)
    with torch.no_grad():
        assert torch.allclose(g(x), s(x), rtol=1e-12, atol=1e-12)
        assert not torch.allclose(g(x), torch.zeros(1, dtype=torch.float64))
    # a mask that keeps an edge and a bias on one unit is refused (not the construction's form)
    bad = [dict(m) for m in cm]
    bad[0]["b1"] = np.ones_like(bad[0]["b1"])
    bad[0]["u"] = np.ones_like(bad[0]["u"])
    with pytest.raises(RunFolderError, match="input edge and a bias"):
        gstore.support_layer_maps(c.pairs, bad)


def test_instance_coefficients_are_released_and_recomputed_bit_for_bit():
    t = random_target((6, 4), bias=True, seed=2)
    c = build_construction(t, ConstructionConfig(seed=1, block_width=10))
    inst = layer_instances(c.pairs[0], t.layers[0].weight, t.layers[0].bias)
    first = inst.coefficients.copy()
    inst.release()
    assert inst._coefficients is None
    assert np.array_equal(inst.coefficients, first)
    w1 = c.pairs[0].w1.astype(np.float64)
    for g, units in enumerate(inst.group_units):           # the definition, from the dense w1
        j = inst.group_block[g]
        scale = w1[units, j] if j >= 0 else c.pairs[0].b1[units].astype(np.float64)
        want = c.pairs[0].w2[:, units].astype(np.float64) * scale[None, :]
        assert np.array_equal(first[g * 4:(g + 1) * 4, :len(units)], want)


def test_streaming_writer_is_byte_identical_to_safetensors(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"0.weight": rng.random((7, 3)).astype(np.float32), "10.bias": rng.random(4),
               "2.weight": (rng.random((2, 5)) < .5).astype(np.uint8), "2.bias": np.zeros(0, dtype=np.float32),
               "x": rng.random(3)}
    meta = {"subsetsum_lth": json.dumps({"format": "run", "ĝ": "é\"\\\n"}, sort_keys=True)}
    rf.atomic_save_safetensors(tensors, tmp_path / "a.safetensors", meta)
    gstore.save_safetensors_stream(tmp_path / "b.safetensors", tensors, meta)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_choose_store():
    t = random_target((20, 12, 5), bias=True, seed=0)
    plans = plan_layers(t, ConstructionConfig(block_width=4))
    assert gstore.choose_store("auto", plans) == "dense"
    assert gstore.choose_store("compact", plans) == "compact"
    assert gstore.choose_store("dense", plans) == "dense"
    with pytest.raises(UserError, match="MLP"):
        gstore.choose_store("compact", plans, image=True)
    assert gstore.choose_store("auto", plans, image=True) == "dense"
    with pytest.raises(UserError, match="--store"):
        gstore.choose_store("sparse", plans)


def test_auto_store_turns_compact_above_the_threshold(monkeypatch):
    t = random_target((20, 12, 5), bias=True, seed=0)
    plans = plan_layers(t, ConstructionConfig(block_width=4))
    monkeypatch.setattr(gstore, "DENSE_MAX_ENTRIES", gstore.dense_entries(plans) - 1)
    assert gstore.choose_store("auto", plans) == "compact"


# ----------------------------------------------------------------------------- end to end

ARGS = ["--weight-eps", "0.05", "--solver", "mitm", "--workers", "1", "--width", "auto", "--block-width", "10",
        "--seed", "5", "--input-domain", "signed", "--no-progress", "--no-plots", "--samples", "32",
        "--steps", "5", "--allow-infeasible"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run stored dense and compact (a 20-12-5 target with biases; blocks grow)."""
    tmp = tmp_path_factory.mktemp("compact")
    target = random_target((20, 12, 5), bias=True, seed=7)
    tfile = tmp / "target.safetensors"
    save_target(target, tfile)
    out = {}
    for store in ("dense", "compact"):
        assert cli.main(["approximate", "--target", str(tfile), "--out", str(tmp / store), "--store", store,
                         *ARGS]) == 0
        out[store] = tmp / store
    return out


def test_compact_run_holds_no_dense_file_and_the_same_figures(runs):
    d, c = runs["dense"], runs["compact"]
    assert (d / rf.RANDOM_NET).is_file() and not (d / gstore.RANDOM_NET_COMPACT).exists()
    assert not (c / rf.RANDOM_NET).exists() and not (c / rf.MASKS).exists()
    assert (c / gstore.RANDOM_NET_COMPACT).is_file() and (c / gstore.MASKS_COMPACT).is_file()
    rd, rc = (json.loads((x / "report.json").read_text()) for x in (d, c))
    assert rd["store"] == "dense" and rc["store"] == "compact" and rc["generator"]["seed"] == 5
    assert any(any(L["block_extensions"]) for L in rc["layers"])          # growth happened
    for k in ("certified_bound", "kept_parameters", "total_parameters", "infeasible_count", "layers"):
        if k == "layers":
            strip = lambda L: {a: b for a, b in L.items() if a != "seconds"}   # noqa: E731
            assert [strip(L) for L in rd[k]] == [strip(L) for L in rc[k]]
        else:
            assert rd[k] == rc[k], k
    m = json.loads((c / "manifest.json").read_text())
    assert {gstore.RANDOM_NET_COMPACT, gstore.MASKS_COMPACT} <= set(m["files"]) and m["complete"]


def test_export_dense_is_byte_identical_to_the_dense_run(runs, tmp_path, capsys):
    import shutil
    c = tmp_path / "c"
    shutil.copytree(runs["compact"], c)
    assert cli.main(["export-dense", str(c)]) == 0
    assert "wrote" in capsys.readouterr().out
    for name in (rf.RANDOM_NET, rf.MASKS):
        assert _sha(c / name) == _sha(runs["dense"] / name), name
    m = json.loads((c / "manifest.json").read_text())
    assert m["complete"] and m["files"][rf.RANDOM_NET]["sha256"] == _sha(c / rf.RANDOM_NET)
    assert cli.main(["export-dense", str(c)]) == 0       # again: the tool's own files are rewritten
    with pytest.raises(UserError, match="dense already"):
        runwriter.export_dense(runs["dense"])


def test_export_dense_never_replaces_a_users_file(runs, tmp_path):
    import shutil
    c = tmp_path / "c"
    shutil.copytree(runs["compact"], c)
    (c / rf.MASKS).write_bytes(b"mine")
    with pytest.raises(RunFolderError, match="did not write"):
        runwriter.export_dense(c)
    assert (c / rf.MASKS).read_bytes() == b"mine"


def test_readers_take_both_forms(runs, capsys):
    from subsetsum_lth.api import export_pruned, load_run, masked_model
    from subsetsum_lth.certify_run import certify_run
    a, b = certify_run(runs["dense"]), certify_run(runs["compact"])
    assert a["certified_bound"] == b["certified_bound"] and b["matches_report"]
    assert b["witness"]["matches_report"] and b["witness"]["within_certified"]
    assert abs(a["empirical_bound"] - b["empirical_bound"]) <= 1e-12 * max(1.0, a["empirical_bound"])
    assert cli.main(["certify", str(runs["compact"]), "--samples", "16", "--steps", "2"]) == 0
    capsys.readouterr()
    rd, rc = load_run(runs["dense"]), load_run(runs["compact"])
    assert rc.compact is not None and rd.compact is None and rc.input_dim == 20
    assert set(rd.random_state) == set(rc.random_state)
    for k in rd.random_state:
        assert np.array_equal(rd.random_state[k], rc.random_state[k]) and np.array_equal(rd.masks[k], rc.masks[k])
    x = torch.rand(16, 20)
    with torch.no_grad():
        assert torch.equal(export_pruned(masked_model(rc))(x), export_pruned(masked_model(rd))(x))
    from subsetsum_lth.netdigest import weights_digest
    assert weights_digest(rd.random_state) == weights_digest(rc.random_state)


def test_resume_of_a_finished_compact_run_does_no_work(runs, tmp_path):
    import shutil
    c = tmp_path / "c"
    shutil.copytree(runs["compact"], c)
    before = _sha(c / "report.json")
    target = c / "target.safetensors"
    assert cli.main(["approximate", "--target", str(target), "--out", str(c), "--store", "compact", "--resume",
                     *ARGS]) == 0
    assert _sha(c / "report.json") == before


# ----------------------------------------------------------------------------- never trust the file

def _copy(runs, tmp_path) -> Path:
    import shutil
    c = tmp_path / "c"
    shutil.copytree(runs["compact"], c)
    return c


def _resave(path: Path, edit, meta_edit=None) -> None:
    from safetensors import safe_open
    with safe_open(str(path), framework="np") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    edit(tensors)
    if meta_edit is not None:
        meta = meta_edit(meta)
    from safetensors.numpy import save_file
    save_file(tensors, str(path), metadata=meta)


def test_changed_support_value_is_refused(runs, tmp_path):
    c = _copy(runs, tmp_path)
    def edit(t):
        t["pair1.w2"] = t["pair1.w2"].copy()
        t["pair1.w2"][0, 0] = np.nextafter(t["pair1.w2"][0, 0], np.float32(2))   # one ulp
    _resave(c / gstore.RANDOM_NET_COMPACT, edit)
    with pytest.raises(RunFolderError, match="pair1.w2 is not what the generator"):
        read_run(c)
    assert cli.main(["certify", str(c)]) == 2


def test_changed_u_or_shape_or_dtype_is_refused(runs, tmp_path):
    c = _copy(runs, tmp_path)
    orig = (c / gstore.RANDOM_NET_COMPACT).read_bytes()
    def edit_u(t):
        t["pair0.u"] = -t["pair0.u"]
    _resave(c / gstore.RANDOM_NET_COMPACT, edit_u)
    with pytest.raises(RunFolderError, match="pair0.u is not what the generator"):
        read_run(c)
    (c / gstore.RANDOM_NET_COMPACT).write_bytes(orig)
    def edit_dtype(t):
        t["pair0.b2"] = t["pair0.b2"].astype(np.float64)
    _resave(c / gstore.RANDOM_NET_COMPACT, edit_dtype)
    with pytest.raises(RunFolderError, match="pair0.b2 is float64"):
        read_run(c)
    (c / gstore.RANDOM_NET_COMPACT).write_bytes(orig)
    def extra(t):
        t["pair9.u"] = np.zeros(3, dtype=np.float32)
    _resave(c / gstore.RANDOM_NET_COMPACT, extra)
    with pytest.raises(RunFolderError, match="unexpected"):
        read_run(c)


def test_changed_spec_is_refused(runs, tmp_path):
    c = _copy(runs, tmp_path)
    rp = c / "report.json"
    orig = rp.read_text()
    for change in (lambda r: r.update(seed=6), lambda r: r["generator"].update(seed=6),
                   lambda r: r.update(distribution="normal"),
                   lambda r: r["generator"]["layers"][0].update(block_width=11),
                   lambda r: r["layers"][0]["block_extensions"].__setitem__(0, r["layers"][0]["block_extensions"][0] + 1),
                   lambda r: r["generator"].update(generator="other/v2"),
                   lambda r: r.update(store="dense")):
        rep = json.loads(orig)
        change(rep)
        rp.write_text(json.dumps(rep))
        with pytest.raises(RunFolderError):
            read_run(c)
    rp.write_text(orig)
    read_run(c)
    # the file's own specification, edited consistently with values that are unchanged: refused
    def meta_edit(meta):
        m = json.loads(meta["subsetsum_lth"])
        m["generator"]["layers"][0]["block_width"] += 1
        return {"subsetsum_lth": json.dumps(m, sort_keys=True)}
    _resave(c / gstore.MASKS_COMPACT, lambda t: None, meta_edit)
    with pytest.raises(RunFolderError, match="generator specification"):
        read_run(c)


def test_mask_outside_the_support_is_refused(runs, tmp_path):
    c = _copy(runs, tmp_path)
    pair = read_run(c).compact.pairs[1]             # non-negative inputs: units with u <= 0 are dead
    dead = int(np.flatnonzero((pair.columns >= 0) & (pair.u <= 0))[0])
    def keep_b2(t):
        t["pair0.b2"] = np.ones_like(t["pair0.b2"])
    _resave(c / gstore.MASKS_COMPACT, keep_b2)
    with pytest.raises(RunFolderError, match="pair0.b2 keeps"):
        read_run(c)
    for role in ("w2", "u"):
        c2 = _copy(runs, tmp_path / f"x{role}")
        def keep_dead(t):
            t[f"pair1.{role}"] = t[f"pair1.{role}"].copy()
            t[f"pair1.{role}"][..., dead] = 1
        _resave(c2 / gstore.MASKS_COMPACT, keep_dead)
        with pytest.raises(RunFolderError, match=f"pair1.{role} keeps"):
            read_run(c2)
    c3 = _copy(runs, tmp_path / "y")
    _resave(c3 / gstore.MASKS_COMPACT, lambda t: t.update({"pair1.w2": t["pair1.w2"] * 2}))
    with pytest.raises(RunFolderError, match="other than 0 and 1"):
        read_run(c3)


def test_compact_header_is_safetensors(runs):
    """The compact files are plain safetensors (any reader opens them), metadata carrying the spec."""
    p = runs["compact"] / gstore.RANDOM_NET_COMPACT
    data = p.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["subsetsum_lth"])
    assert meta["format"] == "run-compact" and meta["generator"]["generator"] == gstore.GENERATOR
    assert header["pair0.w2"]["dtype"] == "F32"


@pytest.mark.slow
def test_compare_and_edge_popup_take_a_compact_run(tmp_path, mnist_dir, capsys):
    """compare and edge-popup --from-run read a compact run like its dense twin."""
    from subsetsum_lth.compare import compare_runs
    target = random_target((784, 6, 10), bias=True, seed=0)
    tfile = tmp_path / "t.safetensors"
    save_target(target, tfile)
    args = ["--weight-eps", "0.1", "--solver", "mitm", "--workers", "1", "--width", "formula", "--block-width", "8",
            "--seed", "2", "--no-progress", "--no-plots", "--samples", "16", "--steps", "2", "--allow-infeasible"]
    for store in ("dense", "compact"):
        assert cli.main(["approximate", "--target", str(tfile), "--out", str(tmp_path / store), "--store", store,
                         *args]) == 0
    ep = tmp_path / "ep"
    assert cli.main(["edge-popup", "--from-run", str(tmp_path / "compact"), "--keep", "0.3", "--epochs", "1",
                     "--train-subset", "256", "--test-subset", "200", "--data-dir", str(mnist_dir),
                     "--out", str(ep), "--no-progress", "--no-plots"]) == 0
    assert _sha(ep / rf.RANDOM_NET) != "" and np.array_equal(
        rf.load_safetensors(ep / rf.RANDOM_NET)[0]["0.weight"],
        rf.load_safetensors(tmp_path / "dense" / rf.RANDOM_NET)[0]["0.weight"])
    capsys.readouterr()
    res = compare_runs([tmp_path / "dense", tmp_path / "compact", ep], tmp_path / "cmp", data_dir=str(mnist_dir),
                       test_subset=200)
    d, c, e = res["runs"]
    assert d["test_accuracy"] == c["test_accuracy"] and d["certified_bound"] == c["certified_bound"]
    assert d["kept_parameters"] == c["kept_parameters"]


def test_batch_of_equals_the_whole_batch_taken():
    t = random_target((6, 5), bias=True, seed=2)
    c = build_construction(t, ConstructionConfig(seed=3, block_width=9, input_domain="signed"))
    inst = layer_instances(c.pairs[0], t.layers[0].weight, t.layers[0].bias)
    rows = np.array([0, 7, 3, len(inst) - 1, 12, 12])
    lean = inst.batch_of(rows, 0.01, "error")
    assert inst._coefficients is None                       # never built the whole matrix
    whole = inst.batch(0.01, "error").take(rows)
    for a in ("ids", "targets", "coefficients", "counts", "tolerances"):
        assert np.array_equal(getattr(lean, a), getattr(whole, a)), a


def test_a_layer_solved_in_slices_gives_the_same_result(monkeypatch):
    from subsetsum_lth import layer_solve
    from subsetsum_lth.solve import SolveConfig
    t = random_target((9, 7), bias=True, seed=4)
    c = build_construction(t, ConstructionConfig(seed=6, block_width=12))
    inst = layer_instances(c.pairs[0], t.layers[0].weight, t.layers[0].bias)
    sc = SolveConfig(solver="mitm", objective="error", workers=1)
    whole = layer_solve.solve_layer(inst, 0.01, sc)
    inst.release()
    monkeypatch.setattr(layer_solve, "SLICE_BYTES", 3 * 7 * inst.width * 8)     # 3 groups per slice
    ticks = []
    sliced = layer_solve.solve_layer(inst, 0.01, sc, bar=ticks.append)
    assert inst._coefficients is None and sum(ticks) == len(inst)
    for a in ("ids", "selections", "errors", "status"):
        assert np.array_equal(getattr(whole, a), getattr(sliced, a)), a
