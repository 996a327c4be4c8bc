"""Luigi tasks: one module per stage, each a thin wrapper around one library call.

``luigi --module tasks All --local-scheduler`` runs the whole pipeline.
"""

from tasks.base import Stage, ShardStage, silentmine  # noqa: F401
from tasks.catalog import ScanCatalog  # noqa: F401
from tasks.labels import Labels  # noqa: F401
from tasks.pipeline import All  # noqa: F401
