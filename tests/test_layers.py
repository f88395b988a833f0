"""Import contract of the layers (issue 12): the solver package is a leaf.

``solvers/`` (installed as ``subsetsum_lth.solvers``) may import the standard library, numpy,
threadpoolctl and, lazily, the optional backends' own packages, and its own modules through
relative imports; nothing from the rest of ``subsetsum_lth`` and nothing by its folder name
``solvers``. The rest of the code reaches it only as ``subsetsum_lth.solvers``. setup.cfg lists
every package (it cannot use ``find:`` with the mapped folder) and no built-in backend twice.
"""
from __future__ import annotations

import ast
import configparser
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = ROOT / "solvers"
#: third-party packages the solver layer may import (optional backends lazily, inside functions)
ALLOWED_THIRD_PARTY = {"numpy", "threadpoolctl", "ortools", "gurobipy", "torch"}


def imports(path: Path):
    """(line, absolute module name or None, relative level) of every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, 0
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, node.module, node.level


def solver_import_problems(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for line, module, level in imports(path):
        where = f"{path.relative_to(root)}:{line}"
        if level > 1:
            problems.append(f"{where}: relative import above the solver package (level {level})")
        elif level == 0:
            top = module.split(".")[0]
            if top not in sys.stdlib_module_names and top not in ALLOWED_THIRD_PARTY:
                problems.append(f"{where}: imports {module!r} (the solver layer imports only the "
                                f"standard library, {sorted(ALLOWED_THIRD_PARTY)} and itself, relatively)")
    return problems


def test_solver_package_is_a_leaf():
    modules = sorted(SOLVERS.rglob("*.py"))
    assert len(modules) >= 8, modules
    problems = [p for m in modules for p in solver_import_problems(m)]
    assert not problems, "\n".join(problems)


def test_the_check_catches_a_forbidden_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import numpy\nfrom subsetsum_lth.errors import UserError\nfrom . import base\n"
                     "def f():\n    from solvers.base import SolverBackend\n    from .. import api\n")
    problems = solver_import_problems(probe, tmp_path)
    assert [p.split(":")[1] for p in problems] == ["2", "5", "6"], problems


def _python_files(*folders):
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", list(_python_files("subsetsum_lth", "tests", "experiments")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_solvers_are_reached_by_their_installed_name(path):
    bad = [f"{path.relative_to(ROOT)}:{line}: {module}" for line, module, level in imports(path)
           if level == 0 and module.split(".")[0] == "solvers"]
    assert not bad, "import subsetsum_lth.solvers..., not solvers...: " + ", ".join(bad)


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "setup.cfg")
    return cfg


def test_setup_cfg_lists_every_package_and_maps_solvers():
    cfg = _setup_cfg()
    listed = set(cfg["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "subsetsum_lth").rglob("__init__.py")}
    found |= {"subsetsum_lth.solvers" + "".join("." + x for x in p.parent.relative_to(SOLVERS).parts)
              for p in SOLVERS.rglob("__init__.py")}
    assert listed == found
    mapping = dict(line.split("=") for line in cfg["options"]["package_dir"].split("\n") if "=" in line)
    assert {k.strip(): v.strip() for k, v in mapping.items()} == {"subsetsum_lth.solvers": "solvers"}


def test_built_in_backends_are_listed_once():
    from subsetsum_lth.solvers.registry import BUILTIN, ENTRY_POINT_GROUP
    cfg = _setup_cfg()
    eps = cfg["options.entry_points"] if cfg.has_section("options.entry_points") else {}
    group = eps.get(ENTRY_POINT_GROUP, "")
    named = {line.split("=")[0].strip() for line in group.splitlines() if "=" in line}
    assert not named & set(BUILTIN), "built-in backends belong in registry.BUILTIN only"


# ----------------------------------------------------------------------------- the layers above the solvers

#: the package's layers, bottom to top; a module may import (at module level or lazily) only from
#: its own layer or the layers below. A new module must be placed here (an unplaced one fails).
LAYERS = [
    ("solvers", {"solvers"}),
    ("foundation", {"__init__", "errors", "atomic", "progress", "runfolder", "manifest", "overwrite", "netdigest",
                    "resources", "safetext", "report_fields", "options"}),
    ("network", {"ops", "layerkinds", "arch", "arch_state", "pickle_scan", "checkpoint", "preprocess", "target",
                 "graph_reader", "graph_residual", "graph_files", "assumptions",
                 "construction", "layer_instances", "mask_rules", "gnet", "data"}),
    ("solve", {"solve", "solve_config", "resume_store", "executors", "limits", "growth"}),
    ("certificate", {"certify", "tolerance", "box_relax", "box_ops", "box_net", "box_crown", "box_zonotope", "box_attack", "box_agreement",
                     "box_local",
                     "certify_box"}),
    ("measurement", {"evaluation", "plots"}),
    ("run folders: reading and writing", {"gstore", "run_dataset", "runcheck", "run_shapes", "report_check", "runwriter", "run_report",
                                          "certify_run"}),
    ("gradient training: targets and edge-popup", {"train", "edge_popup"}),
    ("the subset-sum pipeline and the API", {"layer_solve", "approximate", "default_target", "api", "notebook"}),
    ("analysis", {"compare", "bench", "width_law", "baselines"}),
    ("interface", {"cli", "commands", "request", "__main__"}),
]


def layer_of(module: str):
    """The layer index of a ``subsetsum_lth...`` module name (None outside the package)."""
    parts = module.split(".")
    if parts[0] != "subsetsum_lth":
        return None
    name = parts[1] if len(parts) > 1 else "__init__"
    if name == "__version__":
        name = "__init__"
    for i, (_, names) in enumerate(LAYERS):
        if name in names:
            return i
    return f"unplaced module {name!r}"


def upward_imports(root: Path = ROOT) -> list[str]:
    problems = []
    for path in sorted((root / "subsetsum_lth").rglob("*.py")):
        here = layer_of(".".join(path.relative_to(root).with_suffix("").parts))
        if isinstance(here, str):
            problems.append(f"{path.relative_to(root)}: {here}: place it in tests/test_layers.py LAYERS")
            continue
        for line, module, level in imports(path):
            if level or not module:
                continue
            targets = [module]
            if module == "subsetsum_lth":      # from subsetsum_lth import x
                tree_names = [a.name for n in ast.walk(ast.parse(path.read_text()))
                              if isinstance(n, ast.ImportFrom) and n.lineno == line for a in n.names]
                targets = [f"subsetsum_lth.{n}" for n in tree_names]
            for t in targets:
                there = layer_of(t)
                if there is None:
                    continue
                if isinstance(there, str):
                    problems.append(f"{path.relative_to(root)}:{line}: imports an {there}")
                elif there > here:
                    problems.append(f"{path.relative_to(root)}:{line}: {LAYERS[here][0]} imports {t} "
                                    f"({LAYERS[there][0]}, a layer above)")
    return problems


def test_layers_import_only_downwards():
    problems = upward_imports()
    assert not problems, "\n".join(problems)


def test_the_layer_check_catches_an_upward_import(tmp_path):
    pkg = tmp_path / "subsetsum_lth"
    pkg.mkdir()
    (pkg / "target.py").write_text("def f():\n    from subsetsum_lth.approximate import approximate\n")
    (pkg / "mystery.py").write_text("import numpy\n")
    problems = upward_imports(tmp_path)
    assert any("target.py:2: network imports subsetsum_lth.approximate" in p for p in problems), problems
    assert any("unplaced module 'mystery'" in p for p in problems), problems


# ----------------------------------------------------------------------------- no import circles

def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package by its import name (``solvers/`` as ``subsetsum_lth.solvers``)."""
    found = {}
    for folder, prefix in ((root / "subsetsum_lth", ("subsetsum_lth",)),
                           (root / "solvers", ("subsetsum_lth", "solvers"))):
        for path in sorted(folder.rglob("*.py")):
            parts = prefix + path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """module -> {imported package module: first line}, from EVERY import (top level and inside
    functions); relative imports resolved, ``from package import x`` resolved to the submodule
    ``package.x`` when x is one, otherwise to the package."""
    modules = module_files(root)

    def known(name: str):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph[name] = {}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [known(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else known(base)
                           for a in node.names]
            else:
                continue
            for t in targets:
                if t and t != name and t.startswith("subsetsum_lth"):
                    edges.setdefault(t, node.lineno)
    return graph


def import_circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        circles.append(sorted(component))
    return circles


def describe_circle(graph, component, root: Path = ROOT) -> str:
    files = module_files(root)
    inside = [f"{files[m].relative_to(root)}:{graph[m][t]} imports {t}"
              for m in component for t in sorted(graph[m]) if t in component]
    return f"circle {component}:\n    " + "\n    ".join(inside)


def test_no_import_circles():
    """No strongly connected component of the module graph (every import counts, lazy ones too,
    within a layer too): imports run one way, so a module can be read knowing only those below."""
    graph = import_graph()
    assert len(graph) >= 60, sorted(graph)
    circles = import_circles(graph)
    assert not circles, "\n".join(describe_circle(graph, c) for c in circles)


def test_the_circle_check_catches_a_planted_circle(tmp_path):
    pkg = tmp_path / "subsetsum_lth"
    (pkg / "sub").mkdir(parents=True)
    (tmp_path / "solvers").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from subsetsum_lth import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub.c import g\n")           # lazy, relative
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import subsetsum_lth.a\n")
    (pkg / "d.py").write_text("from subsetsum_lth import a\n")                  # into it, not in it
    graph = import_graph(tmp_path)
    assert graph["subsetsum_lth.b"] == {"subsetsum_lth.sub.c": 2}
    circles = import_circles(graph)
    assert circles == [["subsetsum_lth.a", "subsetsum_lth.b", "subsetsum_lth.sub.c"]], circles
    assert "subsetsum_lth/b.py:2 imports subsetsum_lth.sub.c" in describe_circle(graph, circles[0], tmp_path)
    (pkg / "sub" / "c.py").write_text("import numpy\n")                         # one way now
    assert import_circles(import_graph(tmp_path)) == []


def hidden_imports(root: Path = ROOT) -> list[str]:
    """Imports of the package's own modules inside a function (or a class body) that do not say
    why on their line (``# lazy: <reason>``): a reader of the module's top sees all it depends on."""
    modules = module_files(root)
    found = []
    for name, path in modules.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source, filename=str(path))
        for scope in ast.walk(tree):
            if not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for node in ast.walk(scope):
                if isinstance(node, ast.Import):
                    own = any(a.name.split(".")[0] == "subsetsum_lth" for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    own = node.level > 0 or (node.module or "").split(".")[0] == "subsetsum_lth"
                else:
                    continue
                reason = "# lazy:" in " ".join(lines[node.lineno - 1:node.end_lineno])
                if own and not reason:
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    return sorted(set(found))


def test_imports_of_the_package_sit_at_the_top_of_their_module():
    """Issue 22: an import of the package's own modules sits at the top of its module; inside a
    function only with a one-line reason (``# lazy: ...``, e.g. a measured start-up cost)."""
    hidden = hidden_imports()
    assert not hidden, ("move these imports to the top of their module (or give the reason on the "
                        "line: '# lazy: ...'):\n" + "\n".join(hidden))


def test_the_hidden_import_check_catches_one(tmp_path):
    pkg = tmp_path / "subsetsum_lth"
    pkg.mkdir()
    (tmp_path / "solvers").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\nfrom subsetsum_lth import b\n\ndef f():\n    import json\n"
                              "    from subsetsum_lth import c\n    from . import d  # lazy: start-up\n")
    assert hidden_imports(tmp_path) == ["subsetsum_lth/a.py:6"]


# ----------------------------------------------------------------------------- rooms a reader can hold

MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 600
#: the functions and modules still over the limits, with their length when listed: an entry may
#: not grow, and one back under the limit must be removed, so the list can only shrink.
ALLOWLIST: dict[str, int] = {}      # empty since issue 22 (solve_all, mitm.py split)


def room_sizes(root: Path = ROOT, folders=("subsetsum_lth", "solvers")) -> dict[str, int]:
    """Every module (``path``) and function (``path::qualified.name``, nested ones too) of the
    package with its length in lines (a function from its ``def`` line to its last line)."""
    sizes = {}

    def visit(node, prefix, rel):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    sizes[f"{rel}::{name}"] = child.end_lineno - child.lineno + 1
                visit(child, name + ".", rel)
            else:
                visit(child, prefix, rel)

    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            text = path.read_text()
            sizes[rel] = len(text.splitlines())
            visit(ast.parse(text, filename=rel), "", rel)
    return sizes


def oversized(sizes: dict[str, int], allow: dict[str, int]) -> list[str]:
    problems = []
    for name, n in sorted(sizes.items()):
        limit = MAX_FUNCTION_LINES if "::" in name else MAX_MODULE_LINES
        what = "function" if "::" in name else "module"
        if n > limit and name not in allow:
            problems.append(f"{name}: {what} of {n} lines (at most {limit}); split it into pieces with names "
                            "that say what they hold")
        elif name in allow and n > allow[name]:
            problems.append(f"{name}: {n} lines, grew past the {allow[name]} it was allowed; shrink it")
        elif name in allow and n <= limit:
            problems.append(f"{name}: {n} lines, within the limit now: remove it from ALLOWLIST")
    problems += [f"{name}: in ALLOWLIST but not found: remove it" for name in sorted(set(allow) - set(sizes))]
    return problems


def test_functions_and_modules_fit_a_room():
    problems = oversized(room_sizes(), ALLOWLIST)
    assert not problems, "\n".join(problems)


def test_the_room_check_catches_a_long_function_and_a_stale_entry(tmp_path):
    pkg = tmp_path / "subsetsum_lth"
    pkg.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(100))
    (pkg / "big.py").write_text("class C:\n    def f(self):\n" + body.replace("    ", "        ")
                                + "def g():\n    def inner():\n" + body.replace("    ", "        ")
                                + "    return inner\n")
    (pkg / "small.py").write_text("def h():\n    return 1\n")
    sizes = room_sizes(tmp_path, ("subsetsum_lth",))
    assert sizes["subsetsum_lth/big.py::C.f"] == 101 and sizes["subsetsum_lth/big.py::g.inner"] == 101
    problems = oversized(sizes, {"subsetsum_lth/small.py::h": 2, "subsetsum_lth/big.py::g": 100,
                                 "subsetsum_lth/gone.py": 700})
    assert any(p.startswith("subsetsum_lth/big.py::C.f: function of 101 lines") for p in problems), problems
    assert any(p.startswith("subsetsum_lth/big.py::g: 103 lines, grew") for p in problems), problems
    assert any(p.startswith("subsetsum_lth/big.py::g.inner: function of 101") for p in problems), problems
    assert any(p.startswith("subsetsum_lth/small.py::h: 2 lines, within") for p in problems), problems
    assert any(p.startswith("subsetsum_lth/gone.py: in ALLOWLIST but not found") for p in problems), problems
    assert not any(p.startswith("subsetsum_lth/big.py:") and "module" in p for p in problems), problems
