"""Reruns do exactly the work that a change requires (input stages; the full DAG is in test_pipeline)."""

import numpy as np


def test_unchanged_rerun_does_nothing_and_changes_rerun_only_dependants(
        luigi_config, small_stem_set, small_catalog, run_pipeline, write_stem_track):
    luigi_config("silentmine", "stem_root", small_stem_set)
    luigi_config("silentmine", "catalog", small_catalog)

    def run_inputs():
        return set(run_pipeline("Labels")) | set(run_pipeline("ScanCatalog"))

    assert run_inputs() == {"Labels", "ScanCatalog"}
    assert run_inputs() == set()

    luigi_config("ScanCatalog", "shard_size", 1)  # a catalog parameter re-runs the scan, not the labels
    assert run_inputs() == {"ScanCatalog"}

    write_stem_track(small_stem_set / "train" / "train-new", np.random.default_rng(5), 2.0)
    assert run_inputs() == {"Labels"}  # a new stem track re-runs the labels, not the scan
