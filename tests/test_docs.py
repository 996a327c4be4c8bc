"""The documentation follows the code: the generated parts of docs/ are current, every stage
parameter says what it means, every page links to pages that exist, and nothing in the product
tells the history of its development."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tasks import docs

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("concepts", "stages", "dataset-format", "exports", "operations", "separators", "evaluation",
         "calibration", "performance", "results")


def test_the_generated_parts_are_current():
    assert docs.stale_pages() == [], "run `python -m tasks.docs` (silentmine docs) and commit the pages"


def test_a_stale_part_is_seen_and_rewritten(tmp_path):
    for page in docs.GENERATED:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / page).write_text((ROOT / page).read_text())
    stages = tmp_path / "docs" / "stages.md"
    stages.write_text(stages.read_text().replace("| `shard_size` | int |", "| `shard_size` | float |"))
    assert docs.stale_pages(tmp_path) == ["docs/stages.md"]
    assert docs.write_pages(tmp_path) == ["docs/stages.md"] and docs.stale_pages(tmp_path) == []
    assert stages.read_text() == (ROOT / "docs" / "stages.md").read_text()


def test_a_page_without_its_markers_is_an_error():
    with pytest.raises(ValueError, match="no generated part 'stages'"):
        docs.regenerate("# a page\n", {"stages": docs.render_stages})


def test_every_stage_parameter_has_a_description():
    undescribed = [f"{cls.__name__}.{name}" for cls in docs.task_classes()
                   for name, param in cls.get_params() if not param.description]
    assert undescribed == []


def test_the_pages_exist_and_are_indexed():
    index = (ROOT / "docs" / "README.md").read_text()
    for page in PAGES:
        assert (ROOT / "docs" / f"{page}.md").is_file()
        assert f"({page}.md)" in index, f"docs/README.md does not list {page}.md"


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def _links(path: Path) -> list[tuple[str, str]]:
    """(target file, anchor) of each relative Markdown link of ``path``."""
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        found.append((file, anchor))
    return found


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    headings = re.findall(r"^#+ (.*)$", path.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", ["README.md", "CHANGELOG.md", *(p.relative_to(ROOT).as_posix()
                                                                 for p in sorted((ROOT / "docs").glob("*.md")))])
def test_links_lead_to_pages_and_headings_that_exist(page):
    path = ROOT / page
    for file, anchor in _links(path):
        target = (path.parent / file).resolve() if file else path
        assert target.exists(), f"{page} links to {file}, which does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target), f"{page} links to {file}#{anchor}, a heading that does not exist"


# What a development history looks like in text: numbered or relative sessions and rounds of work.
HISTORY = re.compile(r"\b(?:session|round)s?[ -]\d+|\b(?:this|that|previous|earlier|next|last|an earlier|"
                     r"a later|one) (?:session|round of work)\b", flags=re.I)


def _product_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "luigi.cfg", ROOT / "Makefile",
             ROOT / "pyproject.toml", *sorted((ROOT / "docs").glob("*.md"))]
    for package in ("pipeline", "classifiers", "tasks", "tests", "benchmarks"):
        files += sorted((ROOT / package).rglob("*.py"))
    return [path for path in files if path != Path(__file__).resolve()]  # this file shows the pattern examples


def test_nothing_tells_the_development_history():
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in _product_files()
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if HISTORY.search(line)]
    assert found == []


def test_the_history_pattern_sees_history():
    for text in ("until session 8 the grid", "session-3 figures", "measured this session", "Session 9 added",
                 "an earlier session's table", "sessions 6 and 7"):
        assert HISTORY.search(text), text
    for text in ('@pytest.fixture(scope="session")', "request.session.items", "a run of the journal"):
        assert not HISTORY.search(text), text
