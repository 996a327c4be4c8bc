"""The import layers: the library (pipeline/, classifiers/) never imports Luigi or the tasks;
the tasks (tasks/) hold no array, table or audio code, only parameters, wiring and one call
into the library per stage; no module imports, at any depth of the file, a module of a layer
above its own, and no modules import each other in a circle."""

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


# The layers, bottom first: a module may import its own layer's modules and those of the layers
# below, never those of a layer above.
LAYERS = (
    ("pipeline", "pipeline.sources", "pipeline.rejects", "pipeline.threads"),  # "pipeline": its __init__
    ("pipeline.audio",),
    ("pipeline.storage",),
    ("pipeline.corpora",),
    ("pipeline.features",),
    ("pipeline.mining",),  # reads the detector's tables (its schema), not its code
    ("pipeline.exports.records", "pipeline.exports.webdataset"),  # the D_i's records and tar shards, read by training
    ("classifiers",),
    ("pipeline.separation",),
    ("pipeline.exports",),  # the remix pairs are drawn with the separators' remix sampler
    ("tasks",),
)
def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` (under ``root``) it imports, at any depth of its file
    (lazy imports inside functions count): ``import a.b``, ``from a import b`` (module ``a.b``
    if there is one, else ``a``), relative imports resolved."""
    files = {module_name(p, root): p for package in packages for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
        graph[name] = {target for target in found if target in files and target != name}
    return graph


def circles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every set of modules that import each other in a circle (Tarjan's strongly connected
    components of more than one module), each as a sorted tuple."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[tuple[str, ...]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.add(tuple(sorted(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_of(module: str, layers=LAYERS) -> tuple[int, str]:
    """``(layer number, package)`` of ``module``: the longest package prefix named in ``layers``."""
    best = None
    for number, packages in enumerate(layers):
        for package in packages:
            inside = module == package or module.startswith(package + ".")
            if inside and (best is None or len(package) > len(best[1])):
                best = (number, package)
    if best is None:
        raise KeyError(f"{module} is in no layer of tests/test_layers.py's LAYERS")
    return best


def upward_arrows(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """``importer -> imported`` for every import of a module of a higher layer."""
    wrong = []
    for importer, targets in sorted(graph.items()):
        layer, _ = layer_of(importer, layers)
        for target in sorted(targets):
            target_layer, _ = layer_of(target, layers)
            if target_layer > layer:
                wrong.append(f"{importer} -> {target}")
    return wrong


def test_no_modules_import_each_other_in_a_circle():
    assert circles(import_graph(ROOT, ("pipeline", "classifiers", "tasks"))) == set()


def test_no_module_imports_a_layer_above_its_own():
    assert upward_arrows(import_graph(ROOT, ("pipeline", "classifiers", "tasks"))) == []


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_circle_checker_sees_a_circle_hidden_by_a_lazy_import(tmp_path):
    root = _package(tmp_path, {
        "made/__init__.py": "",
        "made/a.py": "from made.b import f\n",
        "made/b.py": "def f():\n    from made import c\n    return c\n",
        "made/c.py": "from . import a\n",
        "made/d.py": "import made.a\n",  # imports the circle, is not in it
    })
    graph = import_graph(root, ("made",))
    assert graph["made.b"] == {"made.c"} and graph["made.c"] == {"made.a"}
    assert circles(graph) == {("made.a", "made.b", "made.c")}
    (root / "made/c.py").write_text("x = 1\n")
    assert circles(import_graph(root, ("made",))) == set()


def test_the_layer_checker_sees_an_upward_arrow(tmp_path):
    root = _package(tmp_path, {
        "made/__init__.py": "",
        "made/low/__init__.py": "",
        "made/low/a.py": "def f():\n    from made.high.b import g\n",
        "made/high/__init__.py": "",
        "made/high/b.py": "from made.low.a import f\n\ndef g():\n    return f\n",
        "made/top.py": "from made.high import b\nfrom made.low import a\n",
    })
    layers = (("made",), ("made.low",), ("made.high",), ("made.top",))
    graph = import_graph(root, ("made",))
    assert graph["made.top"] == {"made.high.b", "made.low.a"}
    assert upward_arrows(graph, layers) == ["made.low.a -> made.high.b"]
    (root / "made/low/a.py").write_text("x = 1\n")
    assert upward_arrows(import_graph(root, ("made",)), layers) == []


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


def _is_self(node: ast.expr) -> bool:
    """``self``, or ``super()`` (the same task, through its parent class)."""
    return (isinstance(node, ast.Name) and node.id == "self") or (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super")


def foreign_requirements(path: Path) -> list[int]:
    """Lines of ``path`` that call ``requires()`` on anything but ``self`` (or ``super()``): a task
    reaching into another task's requirements (it should ask that task through a named property
    instead)."""
    return [node.lineno for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "requires"
            and not _is_self(node.func.value)]


# The runner and the graph tools walk the DAG: they may ask any task for its requirements.
GRAPH_WALKERS = ("tasks/cli.py", "tasks/graph.py")


@pytest.mark.parametrize("path", [p for p in _modules("tasks") if str(p.relative_to(ROOT)) not in GRAPH_WALKERS],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_task_reaches_into_another_tasks_requirements(path):
    assert foreign_requirements(path) == []


def test_the_requirements_checker_sees_a_reach_through(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f(self, job):\n    self.requires(), super().requires()\n"
                      "    return job.requires()['x'], A().requires(), sup().requires()\n")
    assert foreign_requirements(module) == [3, 3, 3]


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


def conftest_imports(path: Path) -> list[int]:
    """Lines of ``path`` that import the tests' conftest as a module (its helpers are fixtures)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node.lineno for node in ast.walk(tree)
            if (isinstance(node, ast.ImportFrom) and node.module in ("conftest", "tests.conftest"))
            or (isinstance(node, ast.Import) and any(a.name in ("conftest", "tests.conftest") for a in node.names))]


@pytest.mark.parametrize("path", sorted((ROOT / "tests").glob("test_*.py")), ids=lambda p: p.name)
def test_no_test_imports_the_conftest(path):
    assert conftest_imports(path) == []


def test_the_conftest_checker_sees_both_spellings(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom tests.conftest import x\n\ndef f():\n    import conftest\n")
    assert conftest_imports(module) == [2, 5]
