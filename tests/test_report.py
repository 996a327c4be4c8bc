"""The journal as a picture and figures: timeline lanes per worker, throughput, time left."""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from pipeline.storage import journal
from pipeline.storage.report import latest_run, throughput, time_left, timeline_figure, timeline_png


def _row(stage, pid, started, finished, audio=None, status="done", host="node-a"):
    counts = {"tracks": 2, **({"audio_seconds": audio} if audio is not None else {})}
    return {"stage": stage, "family": stage.title(), "key": "k", "shard": 0, "shard_key": "s", "status": status,
            "error": None, "host": host, "pid": pid, "process_start": "", "started": started, "finished": finished,
            "wall_s": finished - started, "body_s": (finished - started) * 0.5, "counts": counts, "file": f"{pid}"}


@pytest.fixture
def runs():
    """Two workers: features 4 shards (120 s of audio each), detect 2 shards, one failed extract;
    then, after an idle hour, a later run."""
    rows = [_row("features", 1, 100, 110, 120.0), _row("features", 2, 100, 120, 120.0),
            _row("features", 1, 110, 130, 120.0), _row("features", 2, 120, 130, 120.0),
            _row("detect", 1, 130, 134, 120.0), _row("detect", 2, 130, 136, 120.0),
            _row("excerpts", 1, 136, 140, status="failed")]
    later = [_row("features", 3, 4000, 4010, 60.0, host="node-b")]
    return pd.DataFrame(rows), pd.DataFrame(rows + later)


def test_the_latest_run_starts_after_an_idle_gap(runs):
    first, everything = runs
    assert len(latest_run(everything)) == 1 and latest_run(everything)["pid"].tolist() == [3]
    assert len(latest_run(first)) == len(first)
    assert latest_run(first.iloc[:0]).empty


def test_throughput_per_stage(runs):
    table = throughput(runs[0]).set_index("stage")
    assert list(table.index) == ["features", "detect", "excerpts"]
    features = table.loc["features"]
    assert features["audio_s"] == 480.0 and features["wall_span_s"] == 30.0
    assert features["per_worker"] == pytest.approx(480.0 / 30.0)  # body_s: half of 60 s of runs
    assert features["overall"] == pytest.approx(480.0 / 30.0)
    assert table.loc["detect", "overall"] == pytest.approx(240.0 / 6.0)
    assert table.loc["excerpts", "failed"] == 1 and math.isnan(table.loc["excerpts", "per_worker"])


def test_time_left_from_mean_wall_times(runs):
    estimate = time_left(runs[0], {"features": 3, "detect": 4, "excerpts": 2, "datasets": 1, "done": 0})
    assert estimate.workers == 2
    assert estimate.per_stage == {"features": (3, pytest.approx(45.0)), "detect": (4, pytest.approx(20.0))}
    assert estimate.seconds == pytest.approx((45.0 + 20.0) / 2)
    assert estimate.unknown == ["excerpts", "datasets"]  # no finished run to estimate from
    assert "not estimated" in estimate.lines()[-1]
    assert time_left(runs[0], {}).lines() == ["time left: nothing left to run"]


def test_lanes_are_worker_slots(runs):
    from pipeline.storage.report import worker_lanes

    first, everything = runs
    forked = first.assign(pid=range(len(first)))  # luigi --workers 2: a new pid per task
    assert worker_lanes(forked).tolist() == worker_lanes(first).tolist() == [
        "node-a #1", "node-a #2", "node-a #1", "node-a #2", "node-a #1", "node-a #2", "node-a #1"]
    assert worker_lanes(everything).iloc[-1] == "node-b #1"


def test_timeline_png_has_a_lane_per_worker(runs, tmp_path):
    out = timeline_png(runs[1], tmp_path / "timeline.png")
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 100
    colours = {tuple(np.round(p[:3], 2)) for p in image.reshape(-1, image.shape[2])[::7]}
    assert len(colours) > 5  # boxes of several stage colours, not a blank canvas
    with pytest.raises(ValueError, match="empty"):
        timeline_png(runs[0].iloc[:0], tmp_path / "none.png")


# Every stage name of the pipeline, in the order a run meets them.
STAGES = ("catalog", "labels", "features", "detector", "detect", "detector_report", "calibration", "excerpts",
          "datasets", "measure", "audit", "exports", "pretrain", "separator", "evaluate")


def test_the_timeline_shows_every_label(tmp_path):
    """A run of every stage on three workers: the legend names each stage once, and every legend
    entry and lane label lies inside the picture."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rows = [_row(stage, 1 + i % 3, 10.0 * i, 10.0 * i + 25.0, status="failed" if stage == "exports" else "done")
            for i, stage in enumerate(STAGES)]
    fig = timeline_figure(pd.DataFrame(rows), title="a run of every stage")
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    assert [text.get_text() for text in legend.get_texts()] == list(STAGES)
    page = fig.bbox
    (ax,) = fig.axes
    labels = [*legend.get_texts(), *ax.get_yticklabels(), ax.xaxis.label, ax.title]
    for label in labels:
        box = label.get_window_extent(renderer)
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, label
    assert len({tuple(p.get_facecolor()) for p in legend.get_patches()}) == len(STAGES)  # a colour each
    assert timeline_png(pd.DataFrame(rows), tmp_path / "all.png").stat().st_size > 1000


def test_report_command_on_a_real_journal(tmp_path, capsys, luigi_config):
    from tasks.cli import main

    root = tmp_path / "data"
    journal.record(root, "features", "CatalogFeatures", "k1", started=10.0, finished=14.0, body_s=3.0,
                   counts={"tracks": 3, "audio_seconds": 30.0}, shard=0, shard_key="a")
    journal.record(root, "detect", "DetectCatalog", "k2", started=14.0, finished=15.0, body_s=1.0,
                   counts={"tracks": 3, "audio_seconds": 30.0}, shard=0, shard_key="a")
    assert main(["report", "--out", str(tmp_path / "t.png")]) == 0
    out = capsys.readouterr().out
    assert "features: 1 runs" in out and "10.0 audio s/s per worker" in out
    assert "time left" in out and (tmp_path / "t.png").stat().st_size > 1000
