"""silentmine library: audio I/O, labels, features, calibration, extraction, Demucs, training.

Importable and testable without Luigi; `tasks/` wraps these functions as pipeline stages.
"""

__version__ = "0.1.0"
