"""The CLI against the configuration dataclasses: every flag that maps onto a config field
parses to that field's default, and the default is written once (in the dataclass).

For each subcommand, ``MAPS`` says which config field every flag fills (as ``run`` builds the
config); ``CLI_ONLY`` lists the flags that fill none, each with the reason. A new flag must be
put in one of the two, so a default typed again in ``commands/*.py`` cannot slip in unseen.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import pytest

import subsetsum_lth.commands as commands_pkg
from subsetsum_lth.approximate import ApproximateConfig
from subsetsum_lth.bench import ApproximateBenchConfig, SolverBenchConfig
from subsetsum_lth.cli import build_parser
from subsetsum_lth.construction import ConstructionConfig
from subsetsum_lth.edge_popup import EdgePopupConfig
from subsetsum_lth.certify_box import BoxConfig
from subsetsum_lth.solve import SolveConfig
from subsetsum_lth.solvers.registry import DEFAULT_SOLVER
from subsetsum_lth.train import TrainConfig

COMMANDS = Path(commands_pkg.__file__).parent


def _same(name):
    return name


def _hidden(value):            # train-target --hidden parses to a tuple of widths
    return tuple(value)


#: subcommand -> (required argv, file under commands/, {dest: (config class, field, parsed -> field value)})
MAPS = {
    "approximate": (["--out", "x"], "approximate.py", {
        **{d: (ConstructionConfig, d, _same) for d in
           ("seed", "delta", "C", "block_width", "distribution", "width", "grow", "max_growth",
            "support_draw_above")},
        **{d: (SolveConfig, d, _same) for d in
           ("solver", "objective", "workers", "batch_size", "time_limit", "executor", "scheduler",
            "batch_timeout", "retries", "fallback")},
        "eps": (ApproximateConfig, "eps", _same),
        "weight_eps": (ApproximateConfig, "weight_eps", _same),
        "allow_infeasible": (ApproximateConfig, "allow_infeasible", _same),
        "resume": (ApproximateConfig, "resume", _same),
        "overwrite": (ApproximateConfig, "overwrite", _same),
        "empirical_samples": (ApproximateConfig, "empirical_samples", _same),
        "ascent_steps": (ApproximateConfig, "ascent_steps", _same),
        "plots": (ApproximateConfig, "plots", _same),
        "max_hours": (ApproximateConfig, "max_hours", _same),
        "store": (ApproximateConfig, "store", _same),
        "bab_seconds": (BoxConfig, "bab_seconds", _same),
        "local_images": (BoxConfig, "local_images", _same),
    }),
    "edge-popup": (["--wide", "4,3,2", "--out", "x"], "edge_popup.py", {
        **{d: (EdgePopupConfig, d, _same) for d in
           ("from_run", "from_target", "wide", "param_budget", "wide_init", "wide_bias", "block_width", "C",
            "eps", "input_domain", "net_seed", "keep", "scope", "structure", "epochs", "lr", "batch_size",
            "momentum", "weight_decay", "seed", "device", "threads", "data_dir", "train_subset",
            "test_subset", "sync_every", "eval_every_epoch", "temperature", "inner_relu", "overwrite", "data",
            "plots")},
    }),
    "train-target": (["--out", "x"], "train_target.py", {
        **{d: (TrainConfig, d, _same) for d in
           ("bias", "epochs", "lr", "batch_size", "seed", "data_dir", "train_subset", "threads",
            "input_normalize", "input_scale", "arch")},
        "dataset": (TrainConfig, "dataset", _same),
        "hidden": (TrainConfig, "hidden", _hidden),
    }),
    "bench solvers": ([], "bench.py", {
        # --n takes several sizes (N,N,...): one SolverBenchConfig per size, the default one size
        "n": (SolverBenchConfig, "n", lambda sizes: sizes[0] if len(sizes) == 1 else sizes),
        **{d: (SolverBenchConfig, d, _same) for d in
           ("eps", "count", "objective", "targets", "solvers", "baseline_count", "time_budget",
            "batch_size", "seed", "clock", "time_limit")},
    }),
    "bench approximate": ([], "bench.py", {
        **{d: (ApproximateBenchConfig, d, _same) for d in
           ("target", "solver", "objective", "weight_eps", "width", "data", "data_dir", "workers", "seed",
            "out", "plots")},
    }),
}

#: flags that fill no config field, and why
CLI_ONLY = {
    "approximate": {
        "target": "the target file, loaded by run()",
        "layers": "target loading", "input_normalize": "target loading", "input_scale": "target loading",
        "fold_preprocessing": "target loading",
        "arch": "target loading",
        "input_box": "parsed by run() into BoxConfig.lo/hi (default 0,1 with --data)",
        "local_radius": "BoxConfig.local_radii, defaulted by run() from --data",
        "expected_accuracy": "checked by run() against --data",
        "synthetic": "which default target run() builds",
        "out": "the run folder, an argument of approximate()",
        "input_radius": "None: from --data, else ApproximateConfig.input_radius (resolved in run())",
        "input_domain": "None: from the target's metadata or --data, else signed (resolved in run())",
        "data": "evaluation data loaded by run()", "data_dir": "evaluation data loaded by run()",
        "no_progress": "printing", "json": "printing",
    },
    "edge-popup": {"out": "the run folder, an argument of run_edge_popup()",
                   "no_progress": "printing", "json": "printing"},
    "train-target": {"out": "the output folder, an argument of train_target()",
                     "progress": "printing", "json": "printing"},
    "bench solvers": {"json": "printing"},
    "bench approximate": {"no_progress": "printing", "json": "printing"},
}

HOUSEKEEPING = {"help", "verbose", "command", "bench_command", "_run", "_request"}


def _subparser(path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path.split():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def _field_default(cls, name):
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()


@pytest.mark.parametrize("command", sorted(MAPS))
def test_every_flag_parses_to_its_config_default(command):
    argv, _, mapping = MAPS[command]
    parser = _subparser(command)
    args = vars(parser.parse_args(argv))
    dests = {a.dest for a in parser._actions} - HOUSEKEEPING
    unclassified = dests - set(mapping) - set(CLI_ONLY[command])
    assert not unclassified, (f"{command}: flags {sorted(unclassified)} are neither mapped onto a config "
                              "field (MAPS) nor listed as CLI-only (CLI_ONLY)")
    assert not set(mapping) & set(CLI_ONLY[command])
    given = {a.dest for a in parser._actions if set(a.option_strings) & set(argv)}
    for dest, (cls, name, convert) in mapping.items():
        if dest in given:       # a required option given on the command line (edge-popup's source)
            continue
        if dest not in args:
            pytest.fail(f"{command}: {dest} is mapped but the parser has no such flag")
        value = args[dest]
        action = next(a for a in parser._actions if a.dest == dest)
        if isinstance(value, str) and action.type is not None and action.default == value:
            value = action.type(value)     # argparse converts string defaults with type=
        assert convert(value) == _field_default(cls, name), \
            f"{command} {'/'.join(action.option_strings)}: CLI default {value!r} != {cls.__name__}.{name}"


def _literal_defaults(path: Path) -> dict[str, object]:
    """dest -> default for every add_argument call of the file whose default= is a literal."""
    out = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        longs = [f for f in flags if f.startswith("--")] or flags
        if not longs:
            continue
        dest = kw["dest"].value if "dest" in kw else longs[0].lstrip("-").replace("-", "_")
        if "default" in kw and isinstance(kw["default"], ast.Constant):
            out[dest] = kw["default"].value
    return out


@pytest.mark.parametrize("command", sorted(MAPS))
def test_no_config_default_is_written_again_in_the_command(command):
    """A mapped flag whose field has a real (not None) default takes it from the dataclass."""
    _, filename, mapping = MAPS[command]
    literals = _literal_defaults(COMMANDS / filename)
    twice = sorted(f"--{d.replace('_', '-')}={literals[d]!r}" for d, (cls, name, _) in mapping.items()
                   if d in literals and _field_default(cls, name) is not None)
    assert not twice, f"commands/{filename} writes config defaults again: {twice}"


def test_the_literal_check_finds_a_literal(tmp_path):
    f = tmp_path / "cmd.py"
    f.write_text('def add(p):\n    p.add_argument("--seed", type=int, default=0)\n'
                 '    p.add_argument("--C", dest="C", default=C.C)\n    p.add_argument("--no-x", dest="x", '
                 'action="store_false")\n')
    assert _literal_defaults(f) == {"seed": 0}


def test_the_default_solver_is_one_constant():
    assert SolveConfig.solver == DEFAULT_SOLVER == ApproximateBenchConfig.solver
    assert _subparser("approximate").get_default("solver") == DEFAULT_SOLVER
    assert _subparser("bench approximate").get_default("solver") == DEFAULT_SOLVER
    import subsetsum_lth
    import subsetsum_lth.solvers
    files = set(Path(subsetsum_lth.__file__).parent.rglob("*.py"))
    files |= set(Path(subsetsum_lth.solvers.__file__).parent.glob("*.py"))
    # "solver: str = 'ortools'", "default='ortools'", "DEFAULT_SOLVER = 'ortools'" (not a backend's own name)
    pattern = re.compile(r"(?:solver|default)\w*\s*(?::[^=\n]*)?=\s*[\"']" + re.escape(DEFAULT_SOLVER) + "[\"']",
                         re.IGNORECASE)
    # (on lines about the solver: other options default to "auto" too, e.g. --device)
    written = sorted(f"{p.name}:{m.group(0)}" for p in files for line in p.read_text().splitlines()
                     if "solver" in line.lower() for m in pattern.finditer(line))
    assert written == [f'registry.py:DEFAULT_SOLVER = "{DEFAULT_SOLVER}"'], written


def test_main_builds_only_the_named_subcommand_with_the_same_options():
    """main() adds options to the subcommand it runs only (the others' defaults would import
    torch); that subparser is the same as in the full parser."""
    from subsetsum_lth.cli import _command_of

    assert _command_of(["-v", "bench", "solvers", "--n", "3"]) == "bench" and _command_of(["--help"]) == ""
    full = build_parser()
    for name in ("approximate", "edge-popup", "train-target", "bench", "solvers", "certify"):
        alone = build_parser(name)
        opts = lambda p: sorted((a.dest, tuple(a.option_strings), repr(a.default)) for a in p._actions)  # noqa: E731
        sub = lambda p, n: next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[n]  # noqa: E731
        assert opts(sub(alone, name)) == opts(sub(full, name))
    only = build_parser("solvers")
    assert {a.dest for a in next(a for a in only._actions if isinstance(
        a, argparse._SubParsersAction)).choices["approximate"]._actions} == {"help", "verbose"}


RANGE_TYPES = ("positive_float", "positive_int", "non_negative_int", "non_negative_float")
#: commands whose config dataclasses check every number (argparse only parses the type)
DATACLASS_CHECKED = ("approximate", "train-target", "bench solvers", "bench approximate")


@pytest.mark.parametrize("command", DATACLASS_CHECKED)
def test_argparse_only_parses_the_numbers_the_dataclasses_check(command):
    _, _, mapping = MAPS[command]
    parser = _subparser(command)
    ranged = sorted("/".join(a.option_strings) for a in parser._actions
                    if a.dest in mapping and getattr(a.type, "__name__", "") in RANGE_TYPES)
    assert not ranged, f"{command}: {ranged} are range-checked by argparse as well as by the dataclass"


@pytest.mark.parametrize("flag,value", [("--samples", "0"), ("--steps", "-1"), ("--workers", "0"),
                                        ("--batch-size", "0"), ("--time-limit", "-1"), ("--batch-timeout", "0"),
                                        ("--retries", "-1"), ("--max-hours", "0"), ("--C", "inf"),
                                        ("--block-width", "0"), ("--grow", "0"), ("--max-growth", "-1"),
                                        ("--input-radius", "0"), ("--weight-eps", "nan")])
def test_approximate_refuses_a_bad_number_before_any_work(flag, value, tmp_path, monkeypatch, capsys):
    """Without --target the default target is trained first (minutes): a bad number is refused
    by the config dataclasses before that, with one error naming the flag."""
    import subsetsum_lth.default_target as dt
    from subsetsum_lth.cli import main

    def no_training(*a, **k):
        raise AssertionError("the default target was built before the flags were checked")
    monkeypatch.setattr(dt, "default_target", no_training)
    monkeypatch.setattr("subsetsum_lth.commands.approximate.default_target", no_training)   # the name it calls
    rc = main(["approximate", "--out", str(tmp_path / "run"), flag, value])
    err = capsys.readouterr().err
    assert rc == 2, err
    words = {"--weight-eps": "ε"}.get(flag, flag)
    assert err.startswith("error:") and words in err and "must be" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag,value", [("--epochs", "0"), ("--lr", "nan"), ("--batch-size", "0"),
                                        ("--hidden", "0"), ("--threads", "0"), ("--train-subset", "0")])
def test_train_target_refuses_a_bad_number_through_train_config(flag, value, tmp_path, capsys):
    from subsetsum_lth.cli import main
    rc = main(["train-target", "--out", str(tmp_path / "t"), flag, value])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and flag in err, err
    assert not (tmp_path / "t").exists()
