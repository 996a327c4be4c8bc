"""The audit report: every section, bounded size, empty runs, escaping, and a real browser render."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import soundfile as sf
from fixtures_extraction import make_extraction_run

from pipeline.mining.audit import (
    CLIP_RATE,
    MAX_REJECT_ROWS,
    SPECTROGRAM_SHAPE,
    sample_excerpts,
    truth_inside_excerpts,
    write_audit,
)
from pipeline.mining.datasets import DatasetRun
from pipeline.mining.schema import INDEX_SCHEMA, read_index
from pipeline.rejects import REJECTS_SCHEMA
from pipeline.sources import SOURCES, WINDOW_S
from pipeline.storage.outputs import write_parquet_atomic

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class _Parsed(HTMLParser):
    """Links, ids and tables (cell sort values or text) of one HTML page."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._value: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.links += [attrs[a] for a in ("src", "href") if attrs.get(a) is not None]
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "table":
            self._table = attrs.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell, self._value = [], attrs.get("data-v")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell).strip()
            self.tables[self._table][-1].append(self._value if self._value not in (None, "") else text)
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(path: Path) -> _Parsed:
    parsed = _Parsed()
    parsed.feed(path.read_text(encoding="utf-8"))
    return parsed


def table_dict(parsed: _Parsed, table_id: str) -> dict[str, dict[str, str]]:
    """Rows of a table keyed by their first cell, each a {header: cell} dict."""
    header, *rows = parsed.tables[table_id]
    return {row[0]: dict(zip(header, row)) for row in rows}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def copy_run(run_dir: Path, to: Path) -> Path:
    """Copy the data root of the view ``run_dir`` (view and shard store) to ``to``; return the copy's view."""
    shutil.copytree(run_dir.parent.parent, to)
    return to / run_dir.parent.name / run_dir.name


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The fixture run and its full report (with ground truth)."""
    tmp = tmp_path_factory.mktemp("audit")
    run_dir, calibration_dir, catalog_root, truth = make_extraction_run(tmp)
    index_html = write_audit(run_dir, calibration_dir, tmp / "report", truth=truth, catalog_root=catalog_root)
    return run_dir, calibration_dir, catalog_root, truth, index_html


def test_report_has_every_section(built):
    run_dir, _, catalog_root, _, index_html = built
    report = index_html.parent
    index = read_index(run_dir / "index")
    html = index_html.read_text()
    page = parse(index_html)
    for section in ("sources", "per-source", "distributions", "calibration", "calibration-thresholds", "rejects",
                    "provenance", "ground-truth", "run"):
        assert section in page.ids, section
    for source in SOURCES:
        assert f"source-{source}" in page.ids
        assert f'href="{source}.html"' in html
    assert html.count('<audio controls preload="none"') == 9  # the 3 weakest of drums, bass and vocals
    # the sources table agrees with the index
    sources = table_dict(page, "sources-table")
    for source in SOURCES:
        rows = index[index["source"] == source]
        assert int(sources[source]["excerpts"]) == len(rows)
        assert float(sources[source]["seconds"]) == pytest.approx(rows["duration_s"].sum())
    assert sources["other"]["calibratable"] == "no"
    assert "No excerpts were extracted for other" in html
    # calibration thresholds, rejects, provenance
    thresholds = table_dict(page, "calibration-thresholds")
    assert float(thresholds["drums"]["threshold"]) == pytest.approx(0.62)
    assert (report / "img" / "calibration_curves.png").is_file()
    reasons = {row[1]: int(row[2]) for row in page.tables["reject-reasons"][1:]}
    assert reasons == {"not an audio file (no decoder recognises it, no audio stream)": 1,
                       "track lasts N s, shorter than the N s minimum excerpt": 1}
    assert len(page.tables["rejects"]) == 3
    folders = table_dict(page, "provenance-folders")
    assert set(folders) == {"Artist A & B/album0", "Artist A & B/album1", "artist_c/album0"}
    assert sum(int(r["excerpts"]) for r in folders.values()) == len(index)
    tracks = table_dict(page, "provenance-tracks")
    assert float(tracks["artist_c/album0/song1.wav"]["drums s"]) == pytest.approx(
        index[(index["source"] == "drums") & index["catalog_path"].str.endswith("song1.wav")]["duration_s"].sum())
    # text is escaped: the folder "Artist A & B" appears only as &amp;
    assert "Artist A &amp; B" in html and "Artist A & B" not in html
    # per-source pages: every excerpt of the source (per_source=50 > count), sorted by prob_mean
    for source in ("drums", "bass", "vocals"):
        source_page = parse(report / f"{source}.html")
        table = source_page.tables[f"excerpts-{source}"]
        header, rows = table[0], table[1:]
        assert len(rows) == int((index["source"] == source).sum())
        probs = [float(r[header.index("prob_mean")]) for r in rows]
        assert probs == sorted(probs)
        assert (report / f"{source}.html").read_text().count('<audio controls preload="none"') == len(rows)
    assert "No excerpts were extracted for other" in (report / "other.html").read_text()


def test_links_are_local_and_resolve(built):
    report = built[-1].parent
    pages = sorted(report.glob("*.html"))
    assert [p.name for p in pages] == ["bass.html", "drums.html", "index.html", "other.html", "vocals.html"]
    for page in pages:
        html = page.read_text()
        assert "<link" not in html and "@import" not in html and "url(" not in html
        for link in parse(page).links:
            assert not re.match(r"^([a-z]+:|//|/)", link), f"{page.name} links outside the folder: {link}"
            target = (report / link.split("#")[0]).resolve()
            assert target.is_file() and report.resolve() in target.parents, f"{page.name}: broken link {link}"


def test_ground_truth_fraction_matches_a_direct_count(built):
    run_dir, _, catalog_root, truth, index_html = built
    index = read_index(run_dir / "index")
    expected = {}
    for source in ("drums", "bass", "vocals"):
        volumes = []
        for row in index[index["source"] == source].itertuples():
            file = Path(row.catalog_path).relative_to(catalog_root.resolve()).as_posix()
            windows = truth[(truth["file"] == file) & (truth["start_s"] >= row.start_s - 1e-6)
                            & (truth["start_s"] + WINDOW_S <= row.end_s + 1e-6)]
            volumes.append(windows[f"V_{source}"].to_numpy())
        volumes = np.concatenate(volumes)
        expected[source] = (volumes.size, np.mean(volumes <= -20.0))
    table = table_dict(parse(index_html), "truth-table")
    for source, (n, fraction) in expected.items():
        assert int(table[source]["windows inside"]) == n
        assert float(table[source]["fraction <= -20 dB"]) == pytest.approx(fraction)
        assert 0.6 < fraction < 1.0  # the fixture made ~10% of the inside windows audible
    per_excerpt, values = truth_inside_excerpts(index, truth, catalog_root)
    assert (per_excerpt["true_windows"] > 0).all() and values["other"].size == 0
    assert per_excerpt.loc[index["source"] == "bass", "true_windows"].sum() == expected["bass"][0]


def test_clips_and_spectrograms_are_small_previews(built, tmp_path):
    run_dir, calibration_dir = built[0], built[1]
    index_html = write_audit(run_dir, calibration_dir, tmp_path / "short", per_source=2, clip_seconds=1.0)
    clips = sorted((index_html.parent / "clips").iterdir())
    assert len(clips) == 6  # 2 per non-empty source
    for clip in clips:
        info = sf.info(clip)
        assert info.samplerate == CLIP_RATE and info.channels == 1
        assert abs(info.frames - CLIP_RATE) <= 1152  # 1 s, within one MP3 frame of padding
    spectrograms = sorted((index_html.parent / "img").glob("spec-*.png"))
    assert len(spectrograms) == 6
    pixels = matplotlib.image.imread(spectrograms[0])
    assert pixels.shape[:2] == SPECTROGRAM_SHAPE and pixels.std() > 0.01
    # no ground truth: no truth section and no truth columns
    assert "ground-truth" not in parse(index_html).ids


def test_sample_keeps_the_weakest_and_is_deterministic():
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"excerpt_id": [f"e{i:03d}" for i in range(200)], "prob_mean": rng.uniform(0.5, 1, 200)})
    sample = sample_excerpts(frame, 20, seed=3)
    weakest = frame.nsmallest(4, "prob_mean")["excerpt_id"]  # n_lowest = max(3, 20 // 5) = 4
    assert len(sample) == 20 and set(weakest) <= set(sample["excerpt_id"])
    assert sample["prob_mean"].is_monotonic_increasing and sample["excerpt_id"].is_unique
    shuffled = frame.sample(frac=1.0, random_state=1)
    assert sample["excerpt_id"].tolist() == sample_excerpts(shuffled, 20, seed=3)["excerpt_id"].tolist()
    assert set(sample["excerpt_id"]) != set(sample_excerpts(frame, 20, seed=4)["excerpt_id"])
    assert len(sample_excerpts(frame, 500, seed=0)) == 200 and sample_excerpts(frame, 0, seed=0).empty
    with pytest.raises(ValueError):
        sample_excerpts(frame, -1, seed=0)


def test_report_size_is_bounded(built, tmp_path):
    run_dir, calibration_dir = built[0], built[1]
    out = tmp_path / "report"
    write_audit(run_dir, calibration_dir, out, per_source=1000)
    large_cap = (len(list((out / "clips").iterdir())), folder_bytes(out))
    write_audit(run_dir, calibration_dir, out, per_source=1)  # replaces the folder: no stale clips
    small_cap = (len(list((out / "clips").iterdir())), folder_bytes(out))
    assert large_cap[0] == 12 and small_cap[0] == 3 and small_cap[1] < large_cap[1]

    # A run with 400x the rows (same audio files) and 1000 rejects: the report hardly grows.
    big = run_dir.parent / "big"  # a view beside the fixture's, over the same store
    shutil.copytree(run_dir, big)
    index = read_index(run_dir / "index")
    copies = pd.concat([index.assign(excerpt_id=index["excerpt_id"] + f"-{k}") for k in range(400)], ignore_index=True)
    shutil.rmtree(big / "index")
    schema = pa.schema([f for f in INDEX_SCHEMA if f.name != "source"])
    for source, part in copies.groupby("source"):
        write_parquet_atomic(pa.Table.from_pandas(part.drop(columns="source"), schema=schema, preserve_index=False),
                             big / "index" / f"source={source}" / "part-big.parquet")
    rejects = pd.DataFrame({"path": [f"/catalog/bad{i:04d}.mp3" for i in range(1000)], "track_id": "",
                            "stage": "extract", "kind": "truncated or corrupt",
                            "reason": [f"truncated at {i} bytes" for i in range(1000)]})
    write_parquet_atomic(
        pa.Table.from_pandas(rejects, schema=REJECTS_SCHEMA, preserve_index=False), big / "rejects" / "part-big.parquet"
    )
    big_html = write_audit(big, calibration_dir, tmp_path / "big-report", per_source=1)
    big_size = folder_bytes(big_html.parent)
    assert len(list((big_html.parent / "clips").iterdir())) == 3
    assert big_size < 1.3 * small_cap[1] + 200_000, (big_size, small_cap[1])
    page = parse(big_html)
    assert len(page.tables["rejects"]) == MAX_REJECT_ROWS + 1
    assert f"Showing the first {MAX_REJECT_ROWS} of 1002 rejected files" in big_html.read_text()
    assert page.tables["reject-reasons"][1][1:] == ["truncated at N bytes", "1000"]
    assert int(table_dict(page, "sources-table")["drums"]["excerpts"]) == 2400


def test_empty_index_and_hostile_text(built, tmp_path):
    run_dir = copy_run(built[0], tmp_path / "data")
    shutil.rmtree(run_dir / "index")
    shutil.rmtree(DatasetRun(run_dir).store.folder / "audio")
    hostile = pd.DataFrame(
        [
            {
                "path": "/catalog/<b>x</b>.wav",
                "track_id": "",
                "stage": "extract",
                "kind": "other",
                "reason": "<script>alert('x')</script> & more",
            }
        ]
    )
    write_parquet_atomic(
        pa.Table.from_pandas(hostile, schema=REJECTS_SCHEMA, preserve_index=False),
        run_dir / "rejects" / "part-hostile.parquet",
    )
    index_html = write_audit(run_dir, None, tmp_path / "report")
    html = index_html.read_text()
    assert "The index is empty" in html and "No calibration thresholds found" in html
    assert "<script>alert" not in html and "<b>x</b>" not in html  # escaped: shown as text, never as markup
    listed = table_dict(parse(index_html), "rejects")
    assert listed["/catalog/<b>x</b>.wav"]["reason"] == "<script>alert('x')</script> & more"
    for source in SOURCES:
        text = (index_html.parent / f"{source}.html").read_text()
        assert f"No excerpts were extracted for {source}" in text and "<audio" not in text
    assert not any((index_html.parent / "clips").iterdir())


def test_unplayable_excerpt_is_reported_not_fatal(built, tmp_path):
    run_dir = copy_run(built[0], tmp_path / "data")
    weakest = read_index(run_dir / "index").sort_values("prob_mean").iloc[0]
    DatasetRun(run_dir).audio_file(weakest).unlink()
    index_html = write_audit(run_dir, built[1], tmp_path / "report", per_source=2)
    assert "clip-failures" in parse(index_html).ids
    assert "audio unavailable" in (index_html.parent / f"{weakest.source}.html").read_text()
    assert len(list((index_html.parent / "clips").iterdir())) == 5  # 2 per non-empty source, one failed


def test_bad_arguments(built, tmp_path):
    run_dir, calibration_dir, _, truth, _ = built
    with pytest.raises(ValueError, match="catalog_root"):
        write_audit(run_dir, calibration_dir, tmp_path / "r", truth=truth)
    with pytest.raises(FileNotFoundError):
        write_audit(tmp_path / "nowhere", calibration_dir, tmp_path / "r")
    with pytest.raises(ValueError, match="per_source"):
        write_audit(run_dir, calibration_dir, tmp_path / "r", per_source=-1)
    with pytest.raises(ValueError, match="clip_seconds"):
        write_audit(run_dir, calibration_dir, tmp_path / "r", clip_seconds=0)
    assert not (tmp_path / "r").exists()


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _page_errors(stderr: str, url: str) -> list[str]:
    """Console messages of the page (Chromium logs them as ``CONSOLE...] "message", source: URL``)."""
    return [line for line in stderr.splitlines() if "Uncaught" in line or ("CONSOLE" in line and url in line)]


def test_report_renders_in_headless_chromium(built, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (CI installs Debian's chromium in .ci/run)")
    report = built[-1].parent
    url = built[-1].resolve().as_uri()

    shot = tmp_path / "shot.png"
    proc = _chromium([f"--screenshot={shot}", "--window-size=1200,900", url], tmp_path / "profile1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 5_000
    pixels = matplotlib.image.imread(shot)
    assert pixels.reshape(-1, pixels.shape[-1]).std(axis=0).max() > 0.05  # not a single colour

    proc = _chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", url], tmp_path / "profile2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _Parsed()
    dom.feed(proc.stdout)
    assert {f"source-{s}" for s in SOURCES} <= dom.ids and "calibration" in dom.ids and "provenance" in dom.ids
    assert "audio" in dom.tags
    assert 'data-sortable="ready"' in proc.stdout  # the page's script ran
    assert _page_errors(proc.stderr, url) == []

    # Clicking headers sorts: a copy of the drums page clicks duration_s, then prob_mean twice.
    page = (report / "drums.html").read_text()
    clicks = (
        "<script>var th = document.querySelectorAll('#excerpts-drums th');"
        "var names = Array.prototype.map.call(th, function(h){ return h.textContent; });"
        "th[names.indexOf('duration_s')].click(); th[names.indexOf('prob_mean')].click();"
        "th[names.indexOf('prob_mean')].click();</script></body>"
    )
    (report / "drums-clicked.html").write_text(page.replace("</body>", clicks))
    try:
        clicked_url = (report / "drums-clicked.html").resolve().as_uri()
        proc = _chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", clicked_url], tmp_path / "profile3")
    finally:
        (report / "drums-clicked.html").unlink()
    assert _page_errors(proc.stderr, clicked_url) == []
    dom = _Parsed()
    dom.feed(proc.stdout)
    header, *rows = dom.tables["excerpts-drums"]
    probs = [float(r[header.index("prob_mean")]) for r in rows]
    assert len(rows) == 6 and probs == sorted(probs, reverse=True)
    assert 'aria-sort="descending"' in proc.stdout
