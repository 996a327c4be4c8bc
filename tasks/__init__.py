"""Luigi tasks: one module per stage, each a thin wrapper around one library call.

``luigi --module tasks All --local-scheduler`` runs the whole pipeline.
"""

from tasks.audit import Audit  # noqa: F401
from tasks.base import CatalogStage, ShardStage, Stage, silentmine  # noqa: F401
from tasks.calibrate import Calibrate  # noqa: F401
from tasks.catalog import ScanCatalog  # noqa: F401
from tasks.detector import DetectCatalog, DetectorReport, DetectStems, TrainDetector  # noqa: F401
from tasks.evaluate import Evaluate  # noqa: F401
from tasks.export import Export  # noqa: F401
from tasks.extract import Extract, ExtractShard  # noqa: F401
from tasks.features import CatalogFeatures, StemFeatures  # noqa: F401
from tasks.labels import Labels  # noqa: F401
from tasks.ladder import CatalogStemSet, OracleDatasets, TrainOnOracleDatasets, TrainWithCatalogStems  # noqa: F401
from tasks.measure import MeasureExtraction  # noqa: F401
from tasks.pipeline import All  # noqa: F401
from tasks.pretrain import PretrainEncoder  # noqa: F401
from tasks.separator import TrainSeparator  # noqa: F401
