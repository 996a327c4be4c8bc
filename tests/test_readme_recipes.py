"""The README's recipes for reading D_i run as printed, on a real (small) D_i.

Every ```python block and every statement of the ```sql block that reads
``data/datasets/<key>`` is taken from README.md, ``<key>`` replaced by the view of
:func:`tests.fixtures_extraction.make_extraction_run`, and run from the folder that holds its
``data/``; what they compute is compared with the library's reading of the same view.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import duckdb
import pytest

from pipeline.mining.datasets import DatasetRun
from tests.fixtures_extraction import make_extraction_run

README = Path(__file__).resolve().parents[1] / "README.md"
VIEW_PLACEHOLDER = "data/datasets/<key>"


def readme_blocks(language: str) -> list[str]:
    """The README's fenced blocks of ``language`` that read a D_i view."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    return [block for block in blocks if VIEW_PLACEHOLDER in block]


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    run_dir, *_ = make_extraction_run(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the README's paths are relative to the folder that holds data/
        yield DatasetRun(run_dir), run_dir.relative_to(root).as_posix()


def test_the_readme_has_the_recipes():
    assert len(readme_blocks("python")) >= 3 and len(readme_blocks("sql")) == 1


def test_the_python_recipes_read_the_view(view):
    run, relative = view
    expected = run.index()
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for block in readme_blocks("python"):
            exec(compile(block.replace(VIEW_PLACEHOLDER, relative), "README.md", "exec"), namespace)
    index = namespace["index"]
    assert sorted(index["excerpt_id"]) == sorted(expected["excerpt_id"])
    assert (index["source"].astype(str) == "vocals").sum() == len(namespace["vocals"]) > 0
    assert Path(namespace["first"]).is_file()
    assert namespace["table"].num_rows == namespace["hive"].to_table().num_rows == len(expected)
    assert len(namespace["weak"]) == (expected["prob_mean"] < 0.9).sum()
    lines = {line.split()[0]: line.split() for line in printed.getvalue().splitlines()}
    for excerpt in run.excerpts():  # the DatasetRun loop printed one line per excerpt, with its file
        _, duration, audio = lines[excerpt.excerpt_id]
        assert float(duration) == excerpt.duration_s and Path(audio).resolve() == run.audio_file(excerpt).resolve()


def test_the_duckdb_recipes_read_the_view(view):
    run, relative = view
    expected = run.index()
    (block,) = readme_blocks("sql")
    statements = [s for s in block.replace(VIEW_PLACEHOLDER, relative).split(";") if "SELECT" in s]
    hours, weak = (duckdb.sql(statement).df() for statement in statements)
    vocals = expected[expected["source"] == "vocals"]
    assert hours["hours"].sum() == pytest.approx(vocals["duration_s"].sum() / 3600)
    assert len(hours) == vocals["catalog_path"].str.rsplit("/", n=1).str[0].nunique()
    assert list(weak["excerpt_id"]) == list(expected[expected["prob_mean"] < 0.9]
                                            .sort_values("prob_mean")["excerpt_id"])
    assert len(weak) > 0
