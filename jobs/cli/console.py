"""The quiet console of `megascience run` and `megascience stage`: the terminal shows our lines only.

Everything else the process and its children write (the Spark JVM and its Python workers, vLLM, torch,
transformers, MLflow's warnings) goes to a log file in the lake, `<lake.root>/logs/<pipeline run id>.log` (a lake on
an object store: the temp dir's megascience-logs/), whose path is printed at the end and tagged on the pipeline's
MLflow run. The redirection is of the file descriptors 1 and 2, made before Spark starts, so the JVM and every process
it starts inherit it; our own lines are printed to a copy of the terminal kept aside. `--verbose` leaves the console
as it is.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

LOG_FILE_TAG = "megascience.log_file"


def log_dir(lake_root: str) -> Path:
    if "://" in lake_root or lake_root.startswith("dbfs:"):
        return Path(tempfile.gettempdir()) / "megascience-logs"
    return Path(lake_root) / "logs"


class QuietConsole:
    """While open, fds 1 and 2 write to the log file and `sys.stdout` to the terminal."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}.log"

    def __enter__(self) -> QuietConsole:
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        log = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        self._stdout = sys.stdout
        sys.stdout = os.fdopen(os.dup(self._saved[0]), "w", buffering=1)
        return self

    def name_after(self, run_id: str) -> Path:
        """Rename the log after the pipeline's MLflow run (the open descriptors keep writing to it)."""
        named = self.path.with_name(f"{run_id}.log")
        os.replace(self.path, named)
        self.path = named
        return named

    def __exit__(self, *exc) -> None:
        print(f"full log (Spark, engines, warnings): {self.path}")
        sys.stdout.flush()
        sys.stdout.close()
        sys.stdout = self._stdout
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self._saved):
            os.dup2(saved, fd)
            os.close(saved)
