"""Where the exports lived before :mod:`pipeline.exports`: the names other modules still import
from here (the remix sampler reads WebDataset shards through them)."""

from pipeline.exports import FORMATS, build_exports
from pipeline.exports.nemo import NEMO_REFERENCES
from pipeline.exports.records import SHARD_SIZE
from pipeline.exports.webdataset import TarMember, webdataset_members, webdataset_shards

__all__ = ["FORMATS", "NEMO_REFERENCES", "SHARD_SIZE", "TarMember", "build_exports", "webdataset_members",
           "webdataset_shards"]
