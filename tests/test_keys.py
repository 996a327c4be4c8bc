"""The stage keys of a fixed configuration's DAG equal recorded values: a refactor of the tasks
(parameters, requirements, input keys) must not change any output's key, or every existing
output would silently be rebuilt.

What a key hashes that differs between machines is fixed here: the decoders' versions
(``decoder_fingerprint``), the stem set's and the catalog's listings (file sizes, mtimes) and
absolute paths (``resolved``).  Everything else (the stage names, significant parameters, how
keys chain through requirements, the shard-store and paper-rule keys) is what is recorded.

A deliberate key change (a new significant parameter, a new input) must update ``RECORDED``:
run this file with ``SILENTMINE_PRINT_KEYS=1`` and ``-s`` to print the current table.
"""

from __future__ import annotations

import os

import pytest

# The demo's luigi.cfg (as of the layout refactor), minus what does not enter a key.
CONFIG = {
    "silentmine": {"data_root": "data", "stem_root": "stems", "catalog": "catalog", "seed": "0",
                   "catalog_truth": "data/demo/catalog_truth.parquet"},
    "ScanCatalog": {"shard_size": "8"},
    "TrainDetector": {"width": "0.125", "epochs": "6", "patience": "3", "crop_seconds": "5.0",
                      "gain_db": "12", "shift_rows": "2"},
    "TrainSeparator": {"channels": "8", "depth": "4", "model_config": '{"sample_rate": 16000}',
                       "train_config": '{"lr": 1e-3}', "max_updates": "500", "epochs": "14",
                       "batches_per_epoch": "50", "batch_size": "8", "window_s": "3.0", "lr_decay_every": "100"},
    "Evaluate": {"max_tracks": "4",
                 "runs": '{"with remix": {"remix": true}, "without remix": {"remix": false}, '
                         '"tasnet with remix": {"remix": true, "model": "tasnet", "max_updates": 300, '
                         '"model_config": {"filters": 32, "lstm_layers": 2, "hidden": 32, "sample_rate": 16000}}}',
                 "contrasts": '[["with remix", "without remix"]]'},
    "Calibrate": {"rule": "windows"},
    "Extract": {"max_gap": "0", "separator": "{}"},
}

RECORDED = {
    'Audit': '6ee690ea4c9166a5',
    'Calibrate(excerpt_grid=null, rule=windows)': '8b203b5245dfef44',
    'Calibrate(excerpt_grid=ranks of all windows, rule=bound)': '99d1aba68750a139',
    'Calibrate(excerpt_grid=ranks of all windows, rule=catalog)': 'ac79c2a6aac621d5',
    'Calibrate(excerpt_grid=ranks of all windows, rule=excerpts)': '62424d26a1aab795',
    'CatalogFeatures': '187e4f1708ede1c5',
    'DetectCatalog': '1205147ed66fdbb1',
    'DetectStems': '770ff4b772e375d9',
    'DetectorReport': 'fecc44e752f41af6',
    'Evaluate': '7542f00f78eec9ff',
    'Export': '6263666ea2931b7a',
    'Extract': 'ec2ef1e34f9b9b79',
    'ExtractShard': '5d68e1e690c634b5',
    'Labels': '526ec2a36955a78d',
    'MeasureExtraction': '26ec304a1373a76b',
    'PretrainEncoder': '13555c3bf2d8d4c0',
    'ScanCatalog': '7105d69246201df4',
    'StemFeatures(split=calibration)': '2dc5d87f898c9b2c',
    'StemFeatures(split=test)': '29ef6917cadd9512',
    'StemFeatures(split=train)': '413e9ee3630bc261',
    'StemFeatures(split=valid)': 'f7fea5b5e4a8918a',
    'TrainDetector': 'e2308aeb7d3f2d46',
    ('TrainSeparator(adversarial_losses=gradient ratios to L_s; L_add per element, budget=main, channels=8, '
     'decoder=paper, depth=4, max_updates=500, model=demucs, model_config={"sample_rate":16000}, remix=null, '
     'scheme=adversarial)'): '1f472234cd2f4c28',
    ('TrainSeparator(adversarial_losses=null, budget=main, channels=8, decoder=paper, depth=4, max_updates=500, '
     'model=demucs, model_config={"sample_rate":16000}, remix=true, scheme=null)'): '2d06ae6c46073131',
    ('TrainSeparator(adversarial_losses=null, budget=main, channels=null, decoder=null, depth=null, '
     'max_updates=300, model=tasnet, model_config={"filters":32,"hidden":32,"lstm_layers":2,"sample_rate":16000}, '
     'remix=true, scheme=null)'): '8852e98b1bc0e477',
    ('TrainSeparator(adversarial_losses=null, budget=null, channels=8, decoder=paper, depth=4, max_updates=500, '
     'model=demucs, model_config={"sample_rate":16000}, remix=false, scheme=null)'): 'a654075aa94f3c58',
    ('TrainSeparator(adversarial_losses=null, budget=null, channels=8, decoder=paper, depth=4, max_updates=500, '
     'model=demucs, model_config={"sample_rate":16000}, remix=null, scheme=contrastive)'): '2e211f46b0482352',
}


@pytest.fixture
def fixed_inputs(tmp_path, monkeypatch, luigi_options):
    """The configuration above alone (luigi.cfg left out), with machine-independent fingerprints."""
    import pipeline.corpora.catalog as catalog
    import pipeline.corpora.stemset as stemset
    import tasks.audit
    import tasks.base
    import tasks.catalog
    import tasks.measure

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "demo").mkdir(parents=True)
    (tmp_path / "data" / "demo" / "catalog_truth.parquet").write_bytes(b"")  # [silentmine] catalog_truth
    monkeypatch.setattr(tasks.base, "decoder_fingerprint", lambda: {"decoders": "fixed"})
    monkeypatch.setattr(stemset, "list_tracks", lambda root, split: [f"{root}/{split}"])
    monkeypatch.setattr(stemset, "fingerprint", lambda tracks: "stems:" + ",".join(map(str, tracks)))
    monkeypatch.setattr(stemset, "calibration_tracks", lambda root, splits, **kwargs: [f"{root}/{s}" for s in splits])
    monkeypatch.setattr(catalog, "listing", lambda path: path)
    monkeypatch.setattr(catalog, "listing_fingerprint", lambda listing: f"listing:{listing}")
    for module in (tasks.audit, tasks.catalog, tasks.measure):
        monkeypatch.setattr(module, "resolved", lambda path: f"/root/{path}")
    from tasks.graph import kept_config

    with kept_config() as config:
        for section in config.sections():  # luigi.cfg's options left out
            config.remove_section(section)
        with luigi_options(CONFIG):
            yield


def current_keys() -> dict[str, str]:
    """Task label -> key over the DAG of ``All``, an export, a contrastive and an adversarial run
    and one shard of each per-shard stage (those appear in ``All`` only once a scan exists)."""
    import tasks
    from tasks.graph import describe, walk
    from tasks.inputs import forget_inputs

    forget_inputs()
    shard = dict(shard=0, shard_key="shard0", tracks_file="tracks.parquet")
    roots = [tasks.All(), tasks.Export(format="lhotse"), tasks.TrainSeparator(scheme="contrastive"),
             tasks.TrainSeparator(scheme="adversarial"), tasks.ExtractShard(**shard), tasks.DetectCatalog(**shard)]
    found, seen = [], set()
    for root in roots:
        for task in walk(root):
            if task.task_id not in seen:
                seen.add(task.task_id)
                found.append(task)
    return {d.task: d.key for d in describe(found)}


def test_the_stage_keys_of_a_fixed_configuration_are_unchanged(fixed_inputs):
    keys = current_keys()
    if os.environ.get("SILENTMINE_PRINT_KEYS"):
        for label, key in sorted(keys.items()):
            print(f"    {label!r}: {key!r},")  # long labels: split them over lines
    assert keys == RECORDED


def test_the_detector_recipe_options_enter_the_key_only_off_the_papers_values(fixed_inputs):
    """``lr``, ``batch_size``, ``silent_db`` and ``crop_stride_seconds`` at the paper's values leave
    TrainDetector's key as recorded; any other value gives a new key (and so a new detector and
    everything below it)."""
    import tasks

    recorded = RECORDED["TrainDetector"]
    assert tasks.TrainDetector(lr=5e-4, batch_size=64, silent_db=-13.0, crop_stride_seconds=0.5).key == recorded
    others = {tasks.TrainDetector(**change).key
              for change in ({"lr": 2e-3}, {"batch_size": 32}, {"silent_db": -20.0}, {"crop_stride_seconds": 1.0})}
    assert recorded not in others and len(others) == 4


def test_the_equal_total_budget_keeps_the_keys_of_runs_trained_under_it(fixed_inputs):
    """Remix runs under ``budget = total`` (every update counted, the remix steps included) have no
    budget in their key, so they keep the keys such runs had before the paper's protocol became the
    default; the default budget (``main``) is in the key; a run without a budget, or without extra
    steps, has no budget in its key."""
    import tasks

    total = tasks.TrainSeparator(remix=True, budget="total")
    assert "budget" not in total.key_params() and total.key == "282536c976601e29"
    assert tasks.TrainSeparator(remix=True, budget="total", model="tasnet", max_updates=300, model_config={
        "filters": 32, "lstm_layers": 2, "hidden": 32, "sample_rate": 16000}).key == "f101d11c2ad8e588"
    assert tasks.TrainSeparator(remix=True).key == "2d06ae6c46073131"  # budget main: more main steps
    assert tasks.TrainSeparator(remix=False, budget="total").key == tasks.TrainSeparator(remix=False).key
    assert "budget" not in tasks.TrainSeparator(remix=True, max_updates=0).key_params()


def test_the_remix_options_enter_the_detector_key_only_with_remixes(fixed_inputs):
    """Without remixes (``remix_songs = 0``) the other remix options leave TrainDetector's key as
    recorded; with them each option is part of the key."""
    import tasks

    recorded = RECORDED["TrainDetector"]
    assert tasks.TrainDetector(remix_seconds=10.0, remix_every=3, remix_gain_db=1.0).key == recorded
    remixed = {tasks.TrainDetector(remix_songs=24, **change).key
               for change in ({}, {"remix_seconds": 10.0}, {"remix_every": 3}, {"remix_gain_db": 1.0},
                              {"remix_silence_prob": 0.2})}
    assert recorded not in remixed and len(remixed) == 5


def test_a_detector_seed_names_another_detector_and_everything_mined_from_it(fixed_inputs):
    """``detector_seed``: None and ``[silentmine] seed`` (0 here) are the same task and key as
    before the parameter existed; seed 1 trains another detector, and every stage that reads it
    (detection, calibration, extraction, a remix run on its D_i) gets a key of its own, while a
    run that reads no D_i ignores the parameter."""
    import tasks

    shard = dict(shard=0, shard_key="shard0", tracks_file="tracks.parquet")
    for make, recorded in ((lambda **kw: tasks.TrainDetector(**kw), RECORDED["TrainDetector"]),
                           (lambda **kw: tasks.DetectCatalog(**shard, **kw), RECORDED["DetectCatalog"]),
                           (lambda **kw: tasks.ExtractShard(**shard, **kw), RECORDED["ExtractShard"]),
                           (lambda **kw: tasks.Extract(**kw), RECORDED["Extract"])):
        default, zero, one = make(), make(detector_seed=0), make(detector_seed=1)
        assert zero.task_id == default.task_id and zero.key == default.key == recorded
        assert one.task_id != default.task_id and one.key != recorded
    assert tasks.TrainDetector(detector_seed=1).key_params()["seed"] == 1
    assert tasks.Calibrate(detector_seed=1).key != tasks.Calibrate().key
    assert tasks.Extract(detector_seed=1).calibration_task().detector_seed == 1
    remix = tasks.TrainSeparator(remix=True, detector_seed=1)
    assert remix.requires()["datasets"].detector_seed == 1
    assert remix.key != RECORDED[[label for label in RECORDED if "remix=true" in label and "demucs" in label][0]]
    plain = [label for label in RECORDED if "remix=false" in label][0]
    assert tasks.TrainSeparator(remix=False, detector_seed=1).key == RECORDED[plain]
