"""The documentation's recipes for reading D_i run as printed, on real (small) D_i.

Every ```python block and every statement of the ```sql blocks that read ``data/datasets/<key>``
is taken from README.md and docs/dataset-format.md, ``<key>`` replaced by a view's, and run from
the folder that holds its ``data/``: on the view of
:func:`tests.fixtures_extraction.make_extraction_run` (what they compute is compared with the
library's reading of the same view), and on a view where nothing was silent
(:func:`tests.fixtures_extraction.make_empty_view`: they read zero rows with the index's columns
and types).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from pipeline.mining.datasets import EMPTY_INDEX_PART, DatasetRun
from pipeline.mining.schema import INDEX_SCHEMA
from pipeline.mining.verify import verify_run
from tests.fixtures_extraction import make_empty_view, make_extraction_run

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/dataset-format.md")
VIEW_PLACEHOLDER = "data/datasets/<key>"


def recipe_blocks(page: str, language: str) -> list[str]:
    """The page's fenced blocks of ``language`` that read a D_i view."""
    text = (ROOT / page).read_text(encoding="utf-8")
    blocks = re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)
    return [block for block in blocks if VIEW_PLACEHOLDER in block]


def run_python(page: str, relative: str) -> tuple[dict, str]:
    """Run the page's python recipes in one namespace; the namespace and what they printed."""
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for block in recipe_blocks(page, "python"):
            exec(compile(block.replace(VIEW_PLACEHOLDER, relative), page, "exec"), namespace)
    return namespace, printed.getvalue()


def run_sql(page: str, relative: str) -> list[pd.DataFrame]:
    return [duckdb.sql(statement).df() for block in recipe_blocks(page, "sql")
            for statement in block.replace(VIEW_PLACEHOLDER, relative).split(";") if "SELECT" in statement]


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    run_dir, *_ = make_extraction_run(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the recipes' paths are relative to the folder that holds data/
        yield DatasetRun(run_dir), run_dir.relative_to(root).as_posix()


@pytest.fixture(scope="module")
def empty_view(tmp_path_factory):
    root = tmp_path_factory.mktemp("empty")
    run_dir = make_empty_view(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        yield DatasetRun(run_dir), run_dir.relative_to(root).as_posix()


def test_the_pages_have_the_recipes():
    assert len(recipe_blocks("README.md", "python")) >= 1 and len(recipe_blocks("README.md", "sql")) == 1
    assert len(recipe_blocks("docs/dataset-format.md", "python")) >= 3
    assert len(recipe_blocks("docs/dataset-format.md", "sql")) == 1


@pytest.mark.parametrize("page", PAGES)
def test_the_python_recipes_read_the_view(view, page):
    run, relative = view
    expected = run.index()
    namespace, printed = run_python(page, relative)
    index = namespace["index"]
    assert sorted(index["excerpt_id"]) == sorted(expected["excerpt_id"])
    assert (index["source"].astype(str) == "vocals").sum() == len(namespace["vocals"]) > 0
    if "files" in namespace:
        assert len(namespace["files"]) == len(expected) and all(Path(f).is_file() for f in namespace["files"])
    if "table" in namespace:
        assert namespace["table"].num_rows == namespace["hive"].to_table().num_rows == len(expected)
    if "weak" in namespace:
        assert len(namespace["weak"]) == (expected["prob_mean"] < 0.9).sum()
    if "DatasetRun" in namespace:
        lines = {line.split()[0]: line.split() for line in printed.splitlines() if len(line.split()) == 3}
        for excerpt in run.excerpts():  # the DatasetRun loop printed one line per excerpt, with its file
            _, duration, audio = lines[excerpt.excerpt_id]
            assert float(duration) == excerpt.duration_s and Path(audio).resolve() == run.audio_file(excerpt).resolve()


def test_the_duckdb_recipes_read_the_view(view):
    run, relative = view
    expected = run.index()
    (per_source,) = run_sql("README.md", relative)
    counts = expected.groupby("source", observed=True).size()
    assert dict(zip(per_source["source"], per_source["excerpts"])) == {s: n for s, n in counts.items() if n}
    hours, weak, rejects = run_sql("docs/dataset-format.md", relative)
    vocals = expected[expected["source"] == "vocals"]
    assert hours["hours"].sum() == pytest.approx(vocals["duration_s"].sum() / 3600)
    assert len(hours) == vocals["catalog_path"].str.rsplit("/", n=1).str[0].nunique()
    assert list(weak["excerpt_id"]) == list(expected[expected["prob_mean"] < 0.9]
                                            .sort_values("prob_mean")["excerpt_id"])
    assert len(weak) > 0
    assert dict(zip(rejects["stage"], rejects["files"])) == run.rejects()["stage"].value_counts().to_dict()


def _assert_documented_columns(frame: pd.DataFrame) -> None:
    """INDEX_SCHEMA's columns (a recipe may add its own), each of its type."""
    assert set(INDEX_SCHEMA.names) <= set(frame.columns)
    for field in INDEX_SCHEMA:
        column = frame[field.name]
        if pa.types.is_string(field.type):
            assert pd.api.types.is_string_dtype(column) or isinstance(column.dtype, pd.CategoricalDtype), field.name
        else:
            assert column.dtype == np.dtype(field.type.to_pandas_dtype()), field.name


def test_a_view_without_excerpts_reads_as_an_empty_typed_table(empty_view):
    run, relative = empty_view
    parts = sorted(p.relative_to(run.folder).as_posix() for p in run.index_dir.rglob("*.parquet"))
    assert parts == [EMPTY_INDEX_PART]
    assert verify_run(run) == []
    assert run.manifest["counts"]["excerpts"] == 0 and len(run.rejects()) == 0

    frame = pd.read_parquet(relative + "/index")
    assert len(frame) == 0
    _assert_documented_columns(frame)
    table = ds.dataset(relative + "/index", format="parquet").to_table()
    assert table.num_rows == 0 and table.schema.names == INDEX_SCHEMA.names
    described = duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{relative}/index/**/*.parquet', "
                           "hive_partitioning = true)").df()
    assert list(described["column_name"]) == INDEX_SCHEMA.names
    assert dict(zip(described["column_name"], described["column_type"]))["start_s"] == "DOUBLE"


@pytest.mark.parametrize("page", PAGES)
def test_the_recipes_read_an_empty_view_as_zero_rows(empty_view, page):
    _, relative = empty_view
    namespace, _ = run_python(page, relative)
    index = namespace["index"]
    assert len(index) == len(namespace["vocals"]) == 0
    _assert_documented_columns(index)
    for name in ("table", "hive"):
        if name in namespace:
            table = namespace[name] if name == "table" else namespace[name].to_table()
            assert table.num_rows == 0 and set(INDEX_SCHEMA.names) <= set(table.schema.names)
    for result in run_sql(page, relative):
        assert len(result) == 0
