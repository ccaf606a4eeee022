"""The layout shows the architecture: subpackages with a docstring each, no import cycle
among pipeline modules (function-level imports included), thin stage scripts that import
the installed package."""
import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "pipeline"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> set:
    """Every pipeline module `path` imports anywhere in it (a `from pkg import name`
    counts as pkg.name when that is a module), plus the packages above each one, which
    Python initialises first."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        for name in names:
            while name.startswith("pipeline"):
                if name in MODULES:
                    found.add(name)
                name = name.rpartition(".")[0]
    return found


def test_no_import_cycle_among_pipeline_modules():
    graph = {m: imports(p) - {m} for m, p in MODULES.items()}
    for m in list(graph):  # a module's own packages are initialised before it, not by it
        graph[m] = {d for d in graph[m] if not m.startswith(d + ".")}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checker_sees_a_cycle_through_a_function_level_import(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from pipeline.params import Params\n")
    assert "pipeline.params" in imports(a)


def test_every_subpackage_says_what_it_owns():
    packages = sorted(p.parent for p in PACKAGE.rglob("__init__.py"))
    assert {p.name for p in packages} >= {"pipeline", "core", "data", "models", "kinds", "training",
                                         "evaluation", "sweep", "cluster", "experiments"}
    for package in packages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert package.name == "kinds" or (doc and len(doc) > 40), f"{package} has no docstring"


def test_core_imports_no_other_subpackage():
    for name, path in MODULES.items():
        if name.startswith("pipeline.core"):
            assert all(d.startswith("pipeline.core") or d == "pipeline" for d in imports(path)), name


def test_stage_scripts_are_thin_and_run_as_modules():
    """dvc.yaml runs `python -m stages.<name>` from the project root, so Python imports
    the pipeline/ beside them (in a queued `dvc exp run` too: tests/test_queue.py) with no
    sys.path edit; and params.py imports none of the packages built on it."""
    commands = "".join((ROOT / f).read_text() for f in ("dvc.yaml", "experiments/dvc.yaml", "sweep/dvc.yaml"))
    for script in sorted((ROOT / "stages").glob("*.py")):
        text = script.read_text()
        assert "sys.path" not in text, script.name
        assert len(text.splitlines()) <= 40, f"{script.name} holds logic that belongs in pipeline/"
        if script.stem != "__init__":
            assert f"python -m stages.{script.stem} " in commands, f"no stage runs {script.name}"
    assert "stages/" not in "".join(line for line in commands.splitlines() if "cmd" in line or "python" in line)
    above = ("pipeline.experiments", "pipeline.sweep", "pipeline.training")
    for name, path in MODULES.items():
        if name.startswith("pipeline.params"):
            assert not [d for d in imports(path) if d.startswith(above)], name


def test_files_stay_readable():
    long = {str(p.relative_to(ROOT)): n for p in [*PACKAGE.rglob("*.py"), *(ROOT / "stages").glob("*.py")]
            if (n := len(p.read_text().splitlines())) > 320}
    assert not long, f"split these files: {long}"
