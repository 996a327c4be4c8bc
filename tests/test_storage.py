"""Atomic outputs, stable keys and manifests."""

import json

import pytest
import torch

from pipeline.storage import outputs as storage


def test_keys_are_stable_and_sensitive():
    a = storage.stage_key("s", {"x": 1, "y": [1, 2]}, {"in": "k"})
    assert a == storage.stage_key("s", {"y": [1, 2], "x": 1}, {"in": "k"})
    assert a != storage.stage_key("s", {"x": 2, "y": [1, 2]}, {"in": "k"})
    assert a != storage.stage_key("s", {"x": 1, "y": [1, 2]}, {"in": "other"})


def test_a_failed_write_leaves_nothing_under_the_final_name(tmp_path):
    final = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with storage.atomic_path(final) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")
    assert not final.exists() and list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_and_leftovers_are_cleaned(tmp_path):
    storage.write_bytes_atomic(tmp_path / "f", b"one")
    storage.write_bytes_atomic(tmp_path / "f", b"two")
    assert (tmp_path / "f").read_bytes() == b"two"
    leftover = storage.tmp_name(tmp_path / "g")
    leftover.write_bytes(b"half")
    assert storage.is_temporary(leftover)
    assert storage.clean_temporaries(tmp_path) == 1 and not leftover.exists()


def test_manifest_records_what_made_the_output(tmp_path):
    tmp_path = tmp_path / "stage" / "abc"
    tmp_path.mkdir(parents=True)
    storage.write_manifest(tmp_path, "labels", "abc", {"p": 1}, {"in": "k"}, counts={"n": 3}, seed=7, started=0.0)
    manifest = json.loads((tmp_path / storage.MANIFEST).read_text())
    assert manifest["params"] == {"p": 1} and manifest["inputs"] == {"in": "k"} and manifest["seed"] == 7
    assert manifest["counts"] == {"n": 3} and "torch" in manifest["packages"] and manifest["code_version"]
    assert manifest["threads"] == torch.get_num_threads()  # it orders float sums: the bytes depend on it
    assert storage.completed_outputs(tmp_path.parent, p=1)[0][0] == tmp_path
