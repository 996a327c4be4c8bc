"""The generated parts of docs/: every stage's parameters (from the tasks' Luigi parameters and
their descriptions) and the D_i index columns (from ``pipeline.mining.schema``).

A page holds each generated part between two marker lines, ``<!-- BEGIN GENERATED name -->``
and ``<!-- END GENERATED name -->``; the prose around them is written by hand.  ``python -m
tasks.docs`` (or ``silentmine docs``) rewrites the parts; ``--check`` only says which pages
differ from what it would write (exit status 1), as ``tests/test_docs.py`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import pkgutil
import re
import sys
from pathlib import Path
from typing import Callable

import luigi

import tasks
from pipeline.mining.schema import INDEX_COLUMNS
from tasks.base import UsesGpu

ROOT = Path(__file__).resolve().parents[1]

# The order in which docs/stages.md lists the tasks: the order a run meets them.  A task class
# that is not named here comes after these, by name.
TASK_ORDER = ("silentmine", "ScanCatalog", "Labels", "StemFeatures", "CatalogFeatures", "TrainDetector",
              "DetectStems", "DetectCatalog", "DetectorReport", "Calibrate", "ExtractShard", "Extract",
              "MeasureExtraction", "Audit", "Export", "PretrainEncoder", "TrainSeparator", "Evaluate", "All")
# The base classes of the stages: documented by the stages that use them, not on their own.
BASES = ("Stage", "ShardStage", "CatalogStage", "RunRule")


def task_classes() -> list[type]:
    """Every Luigi task and config class defined in the ``tasks`` package, in ``TASK_ORDER``."""
    found: dict[str, type] = {}
    for module_info in pkgutil.iter_modules(tasks.__path__):
        module = importlib.import_module(f"tasks.{module_info.name}")
        for name, value in vars(module).items():
            if (inspect.isclass(value) and issubclass(value, (luigi.Task, luigi.Config))
                    and value.__module__ == module.__name__ and name not in BASES):
                found[name] = value
    rank = {name: i for i, name in enumerate(TASK_ORDER)}
    return [found[name] for name in sorted(found, key=lambda n: (rank.get(n, len(rank)), n))]


def markdown(text: str) -> str:
    """A docstring's reStructuredText inline markup as Markdown: ``x`` and :role:`x` become `x`."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _value(value) -> str:
    if dataclasses.is_dataclass(value):
        return json.dumps(dataclasses.asdict(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (dict, list, tuple)) or hasattr(value, "items"):
        return json.dumps(_plain(value))
    return repr(value)


def _plain(value):
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def parameter_type(param: luigi.Parameter) -> str:
    """What a parameter takes, in words: ``int``, ``float or None``, ``one of a, b``, ``dict (JSON)``."""
    if isinstance(param, luigi.ChoiceParameter):
        return "one of " + ", ".join(f"`{c}`" for c in sorted(param._choices))
    words = {"": "str", "Int": "int", "Float": "float", "Bool": "bool", "Dict": "dict (JSON)",
             "List": "list (JSON)", "Tuple": "list (JSON)", "RunRule": "run rule (JSON)"}
    # A parameter class of our own takes what its nearest Luigi class takes, unless named above.
    named = [c for c in type(param).__mro__
             if c.__module__.startswith("luigi") or c.__name__.removesuffix("Parameter") in words]
    kind = named[0].__name__.removesuffix("Parameter")
    optional = kind.startswith("Optional")
    kind = kind.removeprefix("Optional")
    return words.get(kind, kind.lower()) + (" or None" if optional else "")


def parameter_default(param: luigi.Parameter) -> str:
    default = param._default
    if default is luigi.parameter._no_value:
        return "required"
    return f"`{_value(default)}`"


def render_task(cls: type) -> list[str]:
    """One task's section: what it is, where it writes, its parameters."""
    lines = [f"### `{cls.__name__}`", ""]
    doc = inspect.getdoc(cls) if cls.__doc__ else None
    if doc:
        lines += [markdown(doc), ""]
    facts = []
    stage_name = getattr(cls, "stage_name", "")
    if stage_name:
        facts.append(f"writes `<data_root>/{stage_name}/<key>/`")
    if getattr(cls, "decodes_audio", False):
        facts.append("decodes audio (its key holds the decoders' versions)")
    if issubclass(cls, UsesGpu):
        facts.append("uses a GPU when there is one (`[resources] gpu`)")
    if facts:
        lines += ["It " + "; ".join(facts) + ".", ""]
    if issubclass(cls, luigi.Config):
        lines += [f"A configuration section, `[{cls.__name__}]`, that every stage reads.", ""]
    params = cls.get_params()
    if not params:
        return lines + ["No parameters.", ""]
    lines += ["| parameter | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, param in params:
        meaning = re.sub(r"\s*Choices: \{.*\}$", "", param.description or "")  # luigi appends the choices
        if not param.significant:
            meaning += " (not in the key)"
        lines.append(f"| `{name}` | {parameter_type(param)} | {_cell(parameter_default(param))} | {_cell(meaning)} |")
    return lines + [""]


def render_stages() -> str:
    """docs/stages.md's generated part: a section per task, in ``TASK_ORDER``."""
    lines: list[str] = []
    for cls in task_classes():
        lines += render_task(cls)
    return "\n".join(lines).rstrip("\n")


def arrow_type_name(arrow_type) -> str:
    """Arrow's name of a type, floats by their width as pandas names them (``double``: float64)."""
    return {"halffloat": "float16", "float": "float32", "double": "float64"}.get(str(arrow_type), str(arrow_type))


def render_index_columns() -> str:
    """docs/dataset-format.md's generated part: the D_i index columns, from ``INDEX_COLUMNS``."""
    lines = ["| column | type | meaning |", "| --- | --- | --- |"]
    for name, arrow_type, meaning in INDEX_COLUMNS:
        lines.append(f"| `{name}` | {arrow_type_name(arrow_type)} | {_cell(meaning)} |")
    return "\n".join(lines)


# page (relative to the repository) -> {part name: what writes it}
GENERATED: dict[str, dict[str, Callable[[], str]]] = {
    "docs/stages.md": {"stages": render_stages},
    "docs/dataset-format.md": {"index-columns": render_index_columns},
}


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- BEGIN GENERATED {name} (python -m tasks.docs; do not edit by hand) -->",
            f"<!-- END GENERATED {name} -->")


def regenerate(text: str, parts: dict[str, Callable[[], str]], page: str = "page") -> str:
    """``text`` with each generated part replaced by what its function writes now;
    ``ValueError`` if a part's markers are missing."""
    for name, render in parts.items():
        begin, end = _markers(name)
        pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), flags=re.S)
        if not pattern.search(text):
            raise ValueError(f"{page} has no generated part {name!r} (lines {begin!r} ... {end!r})")
        part = f"{begin}\n{render()}\n{end}"
        text = pattern.sub(lambda _, part=part: part, text, count=1)
    return text


def stale_pages(root: Path = ROOT) -> list[str]:
    """The pages whose generated parts differ from what the generator writes now."""
    return [page for page, parts in GENERATED.items()
            if regenerate((root / page).read_text(encoding="utf-8"), parts, page)
            != (root / page).read_text(encoding="utf-8")]


def write_pages(root: Path = ROOT) -> list[str]:
    """Rewrite the generated parts of every page; the pages that changed."""
    changed = []
    for page in stale_pages(root):
        path = root / page
        path.write_text(regenerate(path.read_text(encoding="utf-8"), GENERATED[page], page), encoding="utf-8")
        changed.append(page)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only list the pages that differ; exit 1 if any")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages()
        for page in stale:
            print(f"{page}: its generated part differs from the code; run python -m tasks.docs")
        return 1 if stale else 0
    for page in write_pages():
        print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
