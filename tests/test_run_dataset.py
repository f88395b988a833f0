"""Issue 20 item 3: a run folder records its data set, and every command that reads a run uses it
(edge-popup --from-run, compare, approximate --resume; certify says which) or refuses a --data
that contradicts it (exit 2, one line naming both data sets and the fix). The run is made the
way a user makes it: a small model saved with torch.save, approximated with --data fashion-mnist."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from subsetsum_lth.cli import main
from subsetsum_lth.data.mnist import FASHION_ENV_VAR

FASHION = os.environ.get(FASHION_ENV_VAR)
needs_data = pytest.mark.skipif(not FASHION or not Path(FASHION).is_dir(),
                                reason=f"Fashion-MNIST not found: set {FASHION_ENV_VAR}")
EP = ["--keep", "0.5", "--train-subset", "128", "--test-subset", "200", "--no-plots", "--no-progress",
      "--threads", "1"]


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory, mnist_dir):
    tmp = tmp_path_factory.mktemp("fashion")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 10))
    torch.save(model.state_dict(), tmp / "model.pt")
    run = tmp / "run"
    rc = main(["approximate", "--target", str(tmp / "model.pt"), "--data", "fashion-mnist", "--weight-eps", "0.1",
               "--out", str(run), "--workers", "1", "--no-plots", "--no-progress"])
    assert rc == 0
    return tmp, run


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@needs_data
def test_the_run_records_its_data_set(fashion_run):
    _, run = fashion_run
    assert json.loads((run / "report.json").read_text())["data"] == "fashion-mnist"
    assert json.loads((run / "run_config.json").read_text())["data"] == "fashion-mnist"


@needs_data
def test_edge_popup_from_a_fashion_run_trains_and_tests_on_fashion(fashion_run, tmp_path, capsys):
    _, run = fashion_run
    out = tmp_path / "ep"
    assert main(["edge-popup", "--from-run", str(run), "--out", str(out), *EP]) == 0
    assert "on fashion-mnist" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["data"] == "fashion-mnist"
    # the chain goes on: compare reads both runs' record and uses Fashion-MNIST
    cmp = tmp_path / "cmp"
    assert main(["compare", str(run), str(out), "--out", str(cmp), "--no-plots", "--test-subset", "100"]) == 0
    assert json.loads((cmp / "comparison.json").read_text())["data"] == "fashion-mnist"


@needs_data
@pytest.mark.parametrize("argv", [
    ["edge-popup", "--from-run", "{run}", "--data", "mnist", "--out", "{tmp}/ep", *EP],
    ["compare", "{run}", "--data", "mnist", "--out", "{tmp}/cmp", "--no-plots"],
    ["approximate", "--target", "{model}", "--resume", "--data", "mnist", "--weight-eps", "0.1", "--out", "{run}",
     "--workers", "1", "--no-plots", "--no-progress"],
])
def test_a_contradicting_data_flag_is_refused_in_one_line(fashion_run, tmp_path, capsys, argv):
    base, run = fashion_run
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}
    args = [a.format(run=run, tmp=tmp_path, model=base / "model.pt") for a in argv]
    assert main(args) == 2
    line = _one_line_error(capsys)
    assert "--data mnist contradicts" in line and "fashion-mnist" in line and "drop --data" in line, line
    assert not (tmp_path / "ep" / "report.json").exists()
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()} == before


@needs_data
def test_resume_without_data_continues_on_the_recorded_data_set(fashion_run, capsys):
    base, run = fashion_run
    rc = main(["approximate", "--target", str(base / "model.pt"), "--resume", "--weight-eps", "0.1",
               "--out", str(run), "--workers", "1", "--no-plots", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((run / "report.json").read_text())["data"] == "fashion-mnist"


@needs_data
def test_certify_says_which_data_set(fashion_run, capsys):
    _, run = fashion_run
    assert main(["certify", str(run), "--samples", "8", "--steps", "2"]) == 0
    assert "data:            fashion-mnist (recorded in report.json)" in capsys.readouterr().out


@needs_data
def test_api_run_carries_the_data_set(fashion_run):
    from subsetsum_lth.api import load_run
    run = load_run(fashion_run[1])
    assert (run.data, run.data_source) == ("fashion-mnist", "report.json")


@needs_data
def test_an_old_run_without_the_record_still_reads_with_a_note(fashion_run, tmp_path, caplog, capsys):
    import shutil
    _, run = fashion_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    rep = json.loads((old / "report.json").read_text())
    del rep["data"]
    (old / "report.json").write_text(json.dumps(rep))
    with caplog.at_level(logging.WARNING):
        assert main(["compare", str(old), "--out", str(tmp_path / "cmp"), "--no-plots", "--test-subset", "50"]) == 0
    assert "records no data set" in caplog.text and "using MNIST" in caplog.text
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["data"] == "mnist"


def test_a_run_made_without_data_says_so(tmp_path, capsys, caplog, mnist_dir):
    """approximate without --data records "data": null; certify says so; edge-popup notes it."""
    torch.manual_seed(1)
    torch.save(nn.Sequential(nn.Linear(784, 4), nn.ReLU(), nn.Linear(4, 10)).state_dict(), tmp_path / "m.pt")
    run = tmp_path / "run"
    assert main(["approximate", "--target", str(tmp_path / "m.pt"), "--weight-eps", "0.2", "--out", str(run),
                 "--workers", "1", "--no-plots", "--no-progress"]) == 0
    assert json.loads((run / "report.json").read_text())["data"] is None
    capsys.readouterr()
    assert main(["certify", str(run), "--samples", "8", "--steps", "2"]) == 0
    assert "data:            none (the run was made without data" in capsys.readouterr().out
    with caplog.at_level(logging.WARNING):
        assert main(["edge-popup", "--from-run", str(run), "--out", str(tmp_path / "ep"), *EP]) == 0
    assert "was made without data" in caplog.text
    assert json.loads((tmp_path / "ep" / "report.json").read_text())["data"] == "mnist"
