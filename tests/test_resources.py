"""The GPU stages claim ``[resources] gpu`` only in a worker that has a CUDA device."""

from __future__ import annotations

import json
import time
from pathlib import Path

import luigi
import pytest
import torch

import tasks
from tasks.base import UsesGpu

GPU_STAGES = ("TrainDetector", "DetectStems", "DetectCatalog", "TrainSeparator", "PretrainEncoder")


@pytest.mark.parametrize("name", GPU_STAGES)
def test_a_gpu_stage_claims_the_gpu_only_with_cuda(monkeypatch, name):
    cls = getattr(tasks, name)
    assert issubclass(cls, UsesGpu)
    task = cls.__new__(cls)  # resources depend on the machine, not on the parameters
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert task.process_resources() == {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert task.process_resources() == {"gpu": 1}


class _Busy(UsesGpu, luigi.Task):
    """Half a second of 'training' that records when it ran."""

    name = luigi.Parameter()
    folder = luigi.Parameter()

    def output(self):
        return luigi.LocalTarget(str(Path(self.folder) / f"{self.name}.json"))

    def run(self):
        started = time.time()
        time.sleep(0.5)
        with self.output().open("w") as f:
            json.dump([started, time.time()], f)


def _spans(folder: Path, monkeypatch, cuda: bool) -> list[list[float]]:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    config = luigi.configuration.get_config()
    if not config.has_section("resources"):
        config.add_section("resources")
    monkeypatch.setitem(config["resources"], "gpu", "1")
    folder.mkdir()
    assert luigi.build([_Busy(name=n, folder=str(folder)) for n in ("a", "b")], workers=2, local_scheduler=True,
                       log_level="WARNING")
    return [json.loads((folder / f"{n}.json").read_text()) for n in ("a", "b")]


def test_two_workers_run_gpu_stages_at_once_on_a_cpu_and_one_at_a_time_on_one_gpu(tmp_path, monkeypatch):
    (a_start, a_end), (b_start, b_end) = _spans(tmp_path / "cpu", monkeypatch, cuda=False)
    assert max(a_start, b_start) < min(a_end, b_end)  # the two ran at the same time
    (a_start, a_end), (b_start, b_end) = _spans(tmp_path / "gpu", monkeypatch, cuda=True)
    assert max(a_start, b_start) >= min(a_end, b_end)  # one after the other: gpu = 1
