"""Stage 1, ingest: register PDFs as `books` and apply the copyright filter to their metadata.

book_id is the sha256 of the file's bytes, so the same file under two names is one book. A rerun lists the sources,
skips every (uri, size) already in `books`, and inspects only new files; files whose content is already known add
nothing. Files that cannot be used (not a PDF, corrupt, encrypted, empty, unreadable) become failed rows.
"""

from __future__ import annotations

import fnmatch
import operator
import os
from functools import partial, reduce
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from jobs.session import default_parallelism
from jobs.stage import Stage, StageContext, StageOutcome
from schemas import status as S
from schemas.tables import BOOKS
from udfs.pdf import inspect_files

LISTED_FILES = StructType([StructField("source_uri", StringType(), False), StructField("size_bytes", LongType(), False)])


class SourceError(ValueError):
    """An ingest source that does not exist or cannot be listed."""


# --- extract -------------------------------------------------------------------------------------------------------


def list_source_files(sources: list[str], pattern: str) -> list[tuple[str, int]]:
    """(uri, size) of every file matching `pattern` (case-insensitive) under the sources, sorted by uri."""
    import fsspec

    found: dict[str, int] = {}
    for source in sources:
        fs, path = fsspec.core.url_to_fs(source)
        if not fs.exists(path):
            raise SourceError(f"ingest source {source!r} does not exist (ingest.sources)")
        entries = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
        for name, info in entries.items():
            if info.get("type") == "file" and fnmatch.fnmatch(os.path.basename(name).lower(), pattern.lower()):
                uri = os.path.abspath(name) if fs.protocol in ("file", ("file", "local")) else fs.unstrip_protocol(name)
                found[uri] = int(info.get("size") or 0)
    return sorted(found.items())


# --- transform (pure DataFrame -> DataFrame) -----------------------------------------------------------------------


def unseen_files(listed: DataFrame, books: DataFrame) -> DataFrame:
    """Listed files whose (uri, size) is not already in `books`."""
    return listed.join(books.select("source_uri", "size_bytes"), ["source_uri", "size_bytes"], "left_anti")


def inspect_pdfs(files: DataFrame, max_bytes: int) -> DataFrame:
    """Read and inspect every file on the executors (udfs.pdf)."""
    facts = [f for f in BOOKS.schema.fields if f.name not in ("source_uri", "size_bytes", "file_name", "run_id", "processed_at")]
    schema = StructType(list(LISTED_FILES.fields) + [StructField(f.name, f.dataType, True) for f in facts])
    return files.mapInPandas(partial(inspect_files, max_bytes=max_bytes), schema)


def _matches_any(columns: list[str], patterns: list[str]):
    """True where any pattern (case-insensitive regex) occurs in any of the columns."""
    text = F.concat_ws(" \n ", *[F.coalesce(F.col(c), F.lit("")) for c in columns])
    return reduce(operator.or_, [text.rlike(f"(?i){pattern}") for pattern in patterns], F.lit(False))


def apply_copyright_filter(books: DataFrame, rules: dict[str, Any]) -> DataFrame:
    """Drop kept books whose metadata restricts public use; the first rule that applies names the reason."""
    kept = F.col("status") == S.KEPT
    rights_hit = _matches_any(rules["rights_fields"], rules["exclude_rights_patterns"])
    allowlist = rules["license_allowlist"]
    license_refused = ~_matches_any(["pdf_license"], allowlist) if allowlist else F.lit(False)
    permissions_refused = (
        F.coalesce(~F.col("text_extraction_allowed"), F.lit(False)) if rules["respect_pdf_permissions"] else F.lit(False)
    )
    verdicts = [
        (rights_hit, S.REASON_RIGHTS_PATTERN, "rights metadata matches an excluded pattern (ingest.copyright.exclude_rights_patterns)"),
        (license_refused, S.REASON_LICENSE_NOT_ALLOWED, "licence is not in ingest.copyright.license_allowlist"),
        (permissions_refused, S.REASON_PERMISSIONS, "PDF permissions forbid text extraction"),
    ]
    status, reason, detail = F.col("status"), F.col("reason"), F.col("detail")
    for condition, code, text in reversed(verdicts):
        hit = kept & condition
        status = F.when(hit, F.lit(S.DROPPED)).otherwise(status)
        reason = F.when(hit, F.lit(code)).otherwise(reason)
        detail = F.when(hit, F.lit(text)).otherwise(detail)
    return books.withColumns({"status": status, "reason": reason, "detail": detail})


def one_row_per_book(books: DataFrame) -> DataFrame:
    """The same bytes under several names are one book: keep the smallest uri (deterministic)."""
    first = Window.partitionBy("book_id").orderBy("source_uri")
    return books.withColumn("_n", F.row_number().over(first)).where("_n = 1").drop("_n")


def to_book_rows(inspected: DataFrame, rules: dict[str, Any], run_id: str, processed_at) -> DataFrame:
    with_names = inspected.withColumns(
        {
            "file_name": F.regexp_extract("source_uri", r"([^/\\]+)$", 1),
            "run_id": F.lit(run_id),
            "processed_at": F.lit(processed_at).cast("timestamp"),
        }
    )
    return one_row_per_book(apply_copyright_filter(with_names, rules))


# --- the stage -----------------------------------------------------------------------------------------------------


def _listed_frame(spark: SparkSession, files: list[tuple[str, int]]) -> DataFrame:
    partitions = max(1, min(len(files), default_parallelism(spark) * 4))
    return spark.createDataFrame(files, LISTED_FILES).repartition(partitions, "source_uri")


def run(ctx: StageContext) -> StageOutcome:
    settings = ctx.config["ingest"]
    listed = list_source_files(settings["sources"], settings["pattern"])
    books = ctx.read_input("books")
    new_files = unseen_files(_listed_frame(ctx.spark, listed), books).cache()
    new_count = new_files.count()
    ctx.progress(f"{len(listed)} files listed, {new_count} not ingested before")
    if new_count == 0:
        return StageOutcome(0, 0, 0, 0, None)
    inspected = inspect_pdfs(new_files, settings["max_file_mb"] << 20)
    rows = to_book_rows(inspected, settings["copyright"], ctx.run_id, ctx.started_at)
    new_books = rows.join(books.select("book_id"), "book_id", "left_anti").cache()
    counts = {r["status"]: r["count"] for r in new_books.groupBy("status").count().collect()}
    ctx.progress(f"{sum(counts.values())} new books: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    commit = ctx.lake.merge("books", new_books) if counts else None
    new_books.unpersist()
    new_files.unpersist()
    return StageOutcome(
        rows_in=new_count,
        rows_kept=counts.get(S.KEPT, 0),
        rows_dropped=counts.get(S.DROPPED, 0),
        rows_failed=counts.get(S.FAILED, 0),
        commit=commit,
    )


STAGE = Stage(
    name="ingest",
    inputs=("books",),
    output="books",
    config_section="ingest",
    run=run,
    description="register PDFs (content-hashed book_id), read their metadata, apply the copyright filter",
)
