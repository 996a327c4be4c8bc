"""A running catalog shard reports its progress to luigid, seen through luigid's HTTP API."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

pytestmark = pytest.mark.slow

WAIT_S = 120  # ceiling for the scheduler to answer; the test goes on as soon as it does


@pytest.fixture
def scheduler(tmp_path, luigid):
    """A luigid for this test: ``(port, api)``."""
    with luigid(tmp_path) as port:
        yield port, luigid.api


def test_running_shard_progress_in_luigid(tmp_path, scheduler, luigi_options, monkeypatch):
    import luigi

    import tasks.base
    from pipeline.corpora.catalog import shards
    from tasks.catalog import ScanCatalog
    from tasks.features import CatalogFeatures
    from tasks.inputs import forget_inputs

    port, api = scheduler

    catalog = tmp_path / "catalog"
    catalog.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(catalog / f"song{i}.wav", 0.1 * rng.standard_normal((16000, 1)), 16000, subtype="PCM_16")

    # The shard stops inside its body, right after it reported its second track, until the
    # scheduler has been seen to hold that report: so the task is RUNNING when it is read.
    seen, release = {}, threading.Event()
    original = tasks.base.Stage.progress_callback

    def held(self, *args, **kwargs):
        report = original(self, *args, **kwargs)

        def call(done, total, current):
            report(done, total, current)
            if done == 1 and not release.is_set():
                assert release.wait(WAIT_S), "the API never showed the running shard's progress"

        return call

    def watch():
        deadline = time.time() + WAIT_S
        while time.time() < deadline and not release.is_set():
            for task_id, task in api(port, "task_list", status="RUNNING").items():
                if task.get("progress_percentage") is not None and "1/3" in (task.get("status_message") or ""):
                    seen.update(
                        task,
                        task_id=task_id,
                        message=api(port, "get_task_status_message", task_id=task_id)["statusMessage"],
                        percent=api(port, "get_task_progress_percentage", task_id=task_id)["progressPercentage"],
                    )
                    release.set()
            time.sleep(0.1)
        release.set()

    monkeypatch.setattr(tasks.base.Stage, "progress_callback", held)
    options = {
        "silentmine": {"data_root": tmp_path / "data", "catalog": catalog, "stem_root": tmp_path, "threads": 1},
        "ScanCatalog": {"shard_size": 3},
    }
    with luigi_options(options):
        forget_inputs()
        assert luigi.build([ScanCatalog()], local_scheduler=True)
        scan = ScanCatalog()
        ((number, key, _),) = shards(pd.read_parquet(scan.tracks_file))
        shard = CatalogFeatures(shard=number, shard_key=key, tracks_file=scan.tracks_file)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        ok = luigi.build([shard], scheduler_host="127.0.0.1", scheduler_port=port, workers=1)
        watcher.join(timeout=WAIT_S)
        assert ok and shard.complete()
        forget_inputs()
    assert seen["task_id"] == shard.task_id and seen["status"] == "RUNNING"
    assert seen["percent"] == pytest.approx(100 / 3, abs=0.1)
    assert seen["message"].startswith(f"features shard {number}: 1/3 tracks; now ")
    assert seen["message"].endswith("song1.wav")
    final = api(port, "task_list", status="DONE")[shard.task_id]
    assert final["progress_percentage"] == 100.0 and final["status_message"].endswith("3/3 tracks")
