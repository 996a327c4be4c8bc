"""How many CPU threads a process uses: cores, the per-worker share, torch and BLAS pools."""

from __future__ import annotations

import os
import sys

# BLAS/OpenMP pools read these when their library loads: set them before numpy and torch start.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def effective_threads(configured: int, workers: int, cores: int) -> int:
    """torch/BLAS threads per worker process: ``configured`` when it is positive, else the
    ``cores`` shared among the ``workers`` processes of this machine (at least 1)."""
    return configured if configured > 0 else max(1, cores // max(1, workers))


def set_process_threads(threads: int, variables: tuple[str, ...] = ()) -> None:
    """Give this process (and the processes it forks) ``threads`` threads: torch's intra-op pool,
    and the environment ``variables`` (OpenMP/MKL/OpenBLAS: they act only on libraries loaded
    after they are set)."""
    for name in variables:
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)


def torch_threads() -> int | None:
    """torch's intra-op thread count in this process; None when torch is not loaded.  It orders
    floating-point sums, so an output's bytes depend on it (manifests record it; it is in no key)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None
