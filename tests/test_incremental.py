"""Reruns do exactly the work that a change requires."""

import numpy as np

from tests.conftest import write_stem_track


def test_unchanged_rerun_does_nothing_and_changes_rerun_only_dependants(
        luigi_config, small_stem_set, small_catalog, run_pipeline):
    luigi_config("silentmine", "stem_root", small_stem_set)
    luigi_config("silentmine", "catalog", small_catalog)

    first = run_pipeline("All")
    assert {"Labels", "ScanCatalog"} <= set(first)
    assert run_pipeline("All") == []

    # a catalog parameter re-runs the scan, not the labels
    luigi_config("ScanCatalog", "shard_size", 1)
    assert set(run_pipeline("All")) - {"All"} == {"ScanCatalog"}

    # a new stem track re-runs the labels, not the scan
    write_stem_track(small_stem_set / "train" / "train-new", np.random.default_rng(5), 2.0)
    assert set(run_pipeline("All")) - {"All"} == {"Labels"}
