"""The mining value ladder's upper rungs (docs/evaluation.md), where the catalog has ground truth.

Beside ``plain`` and ``remix`` on the mined D_i, Evaluate can train (a run's parameters in
``[Evaluate] runs`` name the rung; :func:`ladder_task`):

- ``{"d_i": "oracle"}``: the remix step on the oracle D_i (:class:`OracleDatasets`: the run rule
  applied to the catalog's true ``V_i <= -20 dB``, from ``[silentmine] catalog_truth``), i.e. what a
  perfect detector would have mined (:class:`TrainOnOracleDatasets`);
- ``{"catalog_stems": true}``: the catalog's true stems (``[silentmine] catalog_stems``) added to
  the labelled train split (:class:`CatalogStemSet`, :class:`TrainWithCatalogStems`): what the
  catalog would bring as labelled data.

Both are explicit options, never a guess from the working folder: a rung whose option is empty
is left out of Evaluate (its summary says so), one that names a missing path is an error.
"""

from pathlib import Path

import luigi

from pipeline.audio.io import file_checksum
from pipeline.corpora.stem_union import build_stem_union
from pipeline.mining.datasets import DatasetRun, ShardStore, view_manifest_fields
from pipeline.mining.extraction import RunRule
from pipeline.mining.ground_truth import ORACLE_KEY, build_oracle_datasets
from pipeline.mining.schema import INDEX_PART_FORMAT
from pipeline.sources import TRULY_SILENT_DB
from tasks.base import Stage, config, run_rule_key
from tasks.catalog import ScanCatalog
from tasks.extract import Extract
from tasks.inputs import resolved, stem_set_fingerprint
from tasks.separator import TrainSeparator

D_I = ("mined", "oracle")  # where a remix run's excerpts come from


def missing_ground_truth(params: dict) -> str | None:
    """Why the run of Evaluate's row ``params`` cannot be trained here (its rung's ground truth,
    ``[silentmine] catalog_truth`` or ``catalog_stems``, is empty: the catalog has none), or
    None; ``FileNotFoundError`` when the option names a path that is not there."""
    name = ("catalog_truth" if params.get("d_i") == "oracle" else
            "catalog_stems" if params.get("catalog_stems") else None)
    if name is None:
        return None
    if not getattr(config(), name):
        return f"[silentmine] {name} is empty"
    configured_path(name)
    return None


def configured_path(name: str) -> str:
    """``[silentmine] <name>`` (``catalog_truth`` or ``catalog_stems``); ``ValueError`` when empty
    or missing: the ladder's upper rungs need the catalog's ground truth."""
    path = getattr(config(), name)
    if not path:
        raise ValueError(f"this rung of the ladder needs the catalog's ground truth: set [silentmine] {name}")
    if not Path(path).exists():
        raise FileNotFoundError(f"[silentmine] {name} = {path}: no such file or folder (leave it empty for a "
                                "catalog without known stems)")
    return path


class OracleDatasets(Stage):
    """The oracle D_i: Extract's run rule (``min_seconds``, ``max_gap`` of ``[Extract]``) on the
    true ``V_i <= silent_db`` of ``[silentmine] catalog_truth``, cut from the scanned catalog
    into the shard-store layout, so the remix step reads it as it reads a mined D_i.  Keyed by
    the scan, the truth file's contents and the rule."""

    stage_name = "oracle_datasets"
    decodes_audio = True
    silent_db = luigi.FloatParameter(default=TRULY_SILENT_DB, description="truly silent: V_i at or below, dB")

    def requires(self):
        return {"scan": ScanCatalog()}

    @property
    def run_rule(self) -> RunRule:
        """Extract's run rule (``[Extract] min_seconds``, ``max_gap``)."""
        return Extract().run_rule

    def key_params(self):
        return {**super().key_params(), **run_rule_key(self.run_rule, keep_no_gap=True),
                "index_part_format": INDEX_PART_FORMAT}

    def external_keys(self):
        return {"truth": file_checksum(configured_path("catalog_truth"))}

    def build(self, folder):
        scan = self.requires()["scan"]
        return build_oracle_datasets(configured_path("catalog_truth"), scan.tracks_file, scan.catalog_path, folder,
                                     config().data_root, self.run_rule, self.silent_db)

    def manifest_extra(self):
        return view_manifest_fields(ShardStore(self.folder), config().data_root, self.key,
                                    self.requires()["scan"].key, [ORACLE_KEY])

    @property
    def dataset(self) -> DatasetRun:
        return DatasetRun(self.folder, Path(config().data_root))


class CatalogStemSet(Stage):
    """The labelled stem set plus the catalog's true stems in its train split (its valid split
    unchanged): :func:`pipeline.corpora.stem_union.build_stem_union`."""

    stage_name = "labelled_with_catalog"

    def key_params(self):
        return {"stem_root": resolved(config().stem_root), "catalog_stems": resolved(configured_path("catalog_stems"))}

    def external_keys(self):
        return {"stem_set": stem_set_fingerprint(config().stem_root, ("train", "valid")),
                "catalog_stems": stem_set_fingerprint(configured_path("catalog_stems"), ("train",))}

    def build(self, folder):
        return build_stem_union(folder, config().stem_root, configured_path("catalog_stems"))


class TrainOnOracleDatasets(TrainSeparator):
    """A TrainSeparator whose remix step draws its excerpts from the oracle D_i.  Evaluate gives it
    every parameter as ``[TrainSeparator]`` resolves it (:func:`ladder_task`), not from a section
    of its own."""

    def requires(self):
        needs = super().requires()
        if "datasets" not in needs:
            raise ValueError(f"the oracle D_i feeds the remix step: scheme {self.effective_scheme!r} has none")
        return {**needs, "datasets": OracleDatasets()}


class TrainWithCatalogStems(TrainSeparator):
    """A TrainSeparator trained on the labelled set plus the catalog's true stems.  Evaluate gives it
    every parameter as ``[TrainSeparator]`` resolves it (:func:`ladder_task`), not from a section
    of its own."""

    def requires(self):
        return {**super().requires(), "labelled": CatalogStemSet()}

    def labelled_root(self) -> str:
        return str(self.requires()["labelled"].folder)


def ladder_task(params: dict) -> TrainSeparator:
    """The training task of one row of Evaluate: ``params`` are TrainSeparator's, plus optionally
    ``d_i`` (``"mined"``, the default, or ``"oracle"``) and ``catalog_stems`` (bool).  A rung's task
    gets every TrainSeparator parameter explicitly, as ``[TrainSeparator]`` resolves it (Luigi
    would read the subclass's own section otherwise)."""
    params = dict(params)
    d_i, catalog_stems = params.pop("d_i", "mined"), bool(params.pop("catalog_stems", False))
    if d_i not in D_I:
        raise ValueError(f"d_i must be one of {D_I}, got {d_i!r}")
    if d_i == "oracle" and catalog_stems:
        raise ValueError("one rung per run: the oracle D_i or the catalog stems, not both")
    task = TrainSeparator(**params)
    if d_i == "oracle":
        if not task.reads_datasets:
            raise ValueError(f"the oracle D_i feeds the remix step: scheme {task.effective_scheme!r} has none")
        return TrainOnOracleDatasets(**task.param_kwargs)
    if catalog_stems:
        return TrainWithCatalogStems(**task.param_kwargs)
    return task
