"""Ingest throughput: the Spark ingest stage vs a plain one-process loop over the same files.

The peer is `udfs.pdf.inspect_file` called in a for loop: the same per-file work without Spark, Delta or MLflow.
The ratio shows what the distributed stage (task scheduling, Arrow transfer, the Delta commit, lineage) costs
on one machine, at two corpus sizes, so growth with input size is visible too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

WARM_UP = 12  # one untimed run first: Spark's JVM warm-up and MLflow's store creation are not per-file costs
SIZES = (240, 480)


def _corpus(directory: Path, files: int) -> None:
    """`files` distinct PDFs: the sample books with a unique trailing comment each (distinct bytes, same work)."""
    from megascience.jobs.cli.sample_corpus import build_sample_corpus

    seed = directory / "seed"
    books = [p for p in build_sample_corpus(seed) if p.read_bytes().startswith(b"%PDF") and "encrypted" not in p.name]
    target = directory / f"corpus_{files}"
    target.mkdir()
    for n in range(files):
        source = books[n % len(books)]
        (target / f"{source.stem}_{n:05d}.pdf").write_bytes(source.read_bytes() + f"\n% copy {n}\n".encode())
    shutil.rmtree(seed)


def run() -> dict:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from megascience.jobs.pipeline import run_pipeline, select_stages
    from megascience.jobs.platform.config import load_config
    from megascience.jobs.platform.session import get_spark
    from megascience.jobs.platform.tables import Lakehouse
    from megascience.udfs.pdf import inspect_file

    rows = []
    with tempfile.TemporaryDirectory(prefix="megascience-bench-") as tmp:
        tmp_path = Path(tmp)
        spark = None
        for size in (WARM_UP, *SIZES):
            _corpus(tmp_path, size)
            corpus = tmp_path / f"corpus_{size}"
            files = sorted(corpus.iterdir())
            started = time.perf_counter()
            for path in files:
                inspect_file(str(path), path.stat().st_size, 1 << 30)
            loop_s = time.perf_counter() - started

            config = load_config(
                "local", [f"lake.root={tmp_path / f'lake_{size}'}", f"ingest.sources=[{corpus}]", "run.progress=false"]
            )
            spark = spark or get_spark(config)
            lake = Lakehouse.open(spark, config)
            started = time.perf_counter()
            run_pipeline(spark, config, lake, select_stages("ingest", "ingest"))
            stage_s = time.perf_counter() - started
            assert lake.count("books") == size
            if size == WARM_UP:
                continue
            rows.append(
                {
                    "files": size,
                    "stage_s": round(stage_s, 2),
                    "loop_s": round(loop_s, 2),
                    "stage_files_per_s": round(size / stage_s, 1),
                    "loop_files_per_s": round(size / loop_s, 1),
                    "stage_over_loop_time": round(stage_s / loop_s, 2),
                }
            )
    headers = list(rows[0])
    table = "\n".join(
        ["  ".join(f"{h:>20}" for h in headers)] + ["  ".join(f"{row[h]:>20}" for h in headers) for row in rows]
    )
    return {"rows": rows, "table": table, "note": "stage = Spark ingest stage incl. Delta commit and MLflow lineage"}
