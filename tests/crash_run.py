"""Run a Luigi task in this process and SIGKILL it in the middle of a chosen write.

Used by ``tests/test_crash.py``::

    python tests/crash_run.py TASK [--kill-at GLOB --nth N]

Every output of the pipeline is written through ``pipeline.storage.outputs.atomic_path`` (a hidden
temporary, then a rename).  With ``--kill-at``, the ``N``-th write whose final path (relative to
the data root, posix) matches ``GLOB`` is fully written to its temporary and then the process
kills itself with SIGKILL before the rename: the state a power cut or an OOM kill leaves in the
middle of a stage, with no chance for cleanup handlers to run.  The Luigi configuration comes
from ``LUIGI_CONFIG_PATH``.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.storage import outputs as storage  # noqa: E402  (patched before anything imports atomic_path)


def install_kill(pattern: str, nth: int, data_root: Path) -> None:
    """Make the ``nth`` atomic write matching ``pattern`` SIGKILL the process before its rename."""
    original = storage.atomic_path
    seen = {"count": 0}

    @contextlib.contextmanager
    def killing_atomic_path(final):
        with original(final) as tmp:
            yield tmp
            try:
                relative = Path(final).resolve().relative_to(data_root.resolve()).as_posix()
            except ValueError:
                relative = None
            if relative is not None and fnmatch.fnmatch(relative, pattern):
                seen["count"] += 1
                if seen["count"] == nth:
                    os.kill(os.getpid(), signal.SIGKILL)

    storage.atomic_path = killing_atomic_path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("task")
    parser.add_argument("--kill-at", default=None, help="glob of final paths relative to the data root")
    parser.add_argument("--nth", type=int, default=1)
    args = parser.parse_args()

    import luigi

    if args.kill_at:
        data_root = Path(luigi.configuration.get_config().get("silentmine", "data_root"))
        install_kill(args.kill_at, args.nth, data_root)
    import tasks

    result = luigi.build([getattr(tasks, args.task)()], local_scheduler=True, workers=1, detailed_summary=True)
    return 0 if result.scheduling_succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
