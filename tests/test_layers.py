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
