"""ScanCatalog: list the catalog, checksum its files, give them track ids and shards."""

import luigi

from pipeline.corpora.catalog import STAGE, build_catalog
from pipeline.storage.outputs import completed_outputs
from tasks.base import Stage, config
from tasks.inputs import catalog_fingerprint, resolved


class ScanCatalog(Stage):
    """``catalog/<key>/tracks.parquet`` (path, size, mtime_ns, checksum, track_id, shard) and
    ``rejects.parquet``: every audio file of the catalog, its SHA-256, its track id and shard.
    A rescan re-hashes only new or changed files (same path, size and mtime: the checksum is
    reused, and the manifest counts how many); shard assignment is append-only."""

    stage_name = STAGE
    catalog = luigi.Parameter(default="", description="folder or list of paths; default [silentmine] catalog")
    shard_size = luigi.IntParameter(default=64, description="tracks per shard (one Luigi task per shard)")

    @property
    def catalog_path(self):
        return resolved(self.catalog or config().catalog)

    def key_params(self):
        return {"catalog": self.catalog_path, "shard_size": self.shard_size}

    def external_keys(self):
        return {"listing": catalog_fingerprint(self.catalog_path)}

    def reused_outputs(self):
        """Earlier outputs that ``build()`` reads: the latest complete scan of the same catalog and
        shard size, whose checksums and shard assignment it reuses (``silentmine gc`` keeps it)."""
        earlier = [f for f, _ in completed_outputs(self.folder.parent, **self.key_params()) if f != self.folder]
        return earlier[-1:]

    def build(self, folder):
        previous = self.reused_outputs()
        return build_catalog(
            self.catalog_path, self.shard_size, folder, previous[0] / "tracks.parquet" if previous else None
        )

    @property
    def tracks_file(self):
        return str(self.folder / "tracks.parquet")
