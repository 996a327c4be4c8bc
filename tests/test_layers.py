"""The import layers: the library (pipeline/, classifiers/) never imports Luigi or the tasks;
the tasks (tasks/) hold no array, table or audio code, only parameters, wiring and one call
into the library per stage."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("pipeline", "classifiers")
# What a task module must leave to the library: arrays, tables, audio, models.
NOT_IN_TASKS = ("numpy", "pandas", "pyarrow", "torch", "soundfile", "soxr", "av", "kymatio", "scipy")


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module that ``path`` imports, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _modules(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _modules(*LIBRARY), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_library_never_imports_luigi_or_the_tasks(path):
    assert not imported_modules(path) & {"luigi", "tasks"}


@pytest.mark.parametrize("path", _modules("tasks"), ids=lambda p: str(p.relative_to(ROOT)))
def test_tasks_hold_no_array_table_or_audio_code(path):
    assert not imported_modules(path) & set(NOT_IN_TASKS)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from luigi.worker import Worker\n    import numpy.linalg\n")
    assert imported_modules(module) == {"os", "luigi", "numpy"}


def foreign_requirements(path: Path) -> list[int]:
    """Lines of ``path`` that call ``requires()`` on anything but ``self``: a task reaching into
    another task's requirements (it should ask that task through a named property instead)."""
    return [node.lineno for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "requires"
            and not (isinstance(node.func.value, ast.Name) and node.func.value.id == "self")]


# The runner and the graph tools walk the DAG: they may ask any task for its requirements.
GRAPH_WALKERS = ("tasks/cli.py", "tasks/graph.py")


@pytest.mark.parametrize("path", [p for p in _modules("tasks") if str(p.relative_to(ROOT)) not in GRAPH_WALKERS],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_task_reaches_into_another_tasks_requirements(path):
    assert foreign_requirements(path) == []


def test_the_requirements_checker_sees_a_reach_through(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f(self, job):\n    self.requires()\n    return job.requires()['x'], A().requires()\n")
    assert foreign_requirements(module) == [3, 3]


def _layout_rows() -> dict[str, str]:
    """docs/concepts.md's "Code layout" table: first cell (what names the row) -> second cell."""
    text = (ROOT / "docs" / "concepts.md").read_text()
    section = text.split("\n## Code layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| `")]
    return {first.strip(): second for first, second in rows}


def test_the_layout_table_names_every_package_and_module():
    rows = _layout_rows()
    for cell in rows:  # what each row names exists
        first = cell.split("`")[1]
        assert (ROOT / first).exists(), f"the Code layout table names {first}, which is not in the tree"
    shared = next(cell for cell in rows if cell.startswith("`pipeline/sources.py`"))
    top_modules = {name.removesuffix(".py").removeprefix("pipeline/") for name in shared.split("`")[1::2]}
    for package in ("pipeline", "classifiers", "tasks"):
        for folder in sorted({p.parent for p in (ROOT / package).rglob("*.py")}):
            relative = folder.relative_to(ROOT).as_posix()
            modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
            if relative == "pipeline":
                assert modules == top_modules, "pipeline/'s own modules differ from the Layout table's"
                continue
            described = rows.get(f"`{relative}/`")
            assert described is not None, f"{relative}/ has no row in the Code layout table"
            assert modules - set(described.split("`")[1::2]) == set(), f"modules of {relative}/ the row leaves out"
