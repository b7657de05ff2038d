"""Stage 1, ingest: register PDFs as `books` and apply the copyright filter to their metadata.

The copyright filter reads two sources: the rights fields embedded in the PDF, and the crawl's rights manifest
(`ingest.copyright.manifest`: CSV / JSONL / parquet keyed by file name, URI or book_id, columns mapped by
`ingest.copyright.manifest_fields`), where crawls actually keep licence, rights and access statements. The rules
apply to the fields of both in `rights_fields` order; the first that decides is named on the row with its value
(`rights_field`, `rights_value`). A book with no rights statement anywhere follows `ingest.copyright.no_metadata`
(keep, the default, with reason no_rights_metadata so the funnel counts it; drop; fail).

book_id is the sha256 of the file's bytes, so the same file under two names is one book. A rerun lists the sources,
skips every (uri, size) already in `books`, and inspects only new files; files whose content is already known add
nothing. Files that cannot be used (not a PDF, corrupt, encrypted, empty, unreadable) become failed rows.
"""

from __future__ import annotations

import fnmatch
import operator
import os
import stat
from dataclasses import asdict
from functools import partial, reduce
from importlib import resources

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, MapType, StringType, StructField, StructType

from megascience.jobs.platform.session import default_parallelism
from megascience.jobs.platform.settings import MANIFEST_FIELDS, CopyrightSettings, IngestSettings
from megascience.jobs.platform.sources import SourceError
from megascience.jobs.platform.stage import Stage, StageContext, StageOutcome, commit_rows
from megascience.schemas import status as S
from megascience.schemas.tables import BOOKS
from megascience.udfs.pdf import FACT_COLUMNS, inspect_files

LISTED_FILES = StructType(
    [
        StructField("source_uri", StringType(), False),
        StructField("size_bytes", LongType(), False),
        StructField("list_error", StringType(), True),  # why a listed entry cannot be read (a broken symlink, ...)
    ]
)


class ManifestError(SourceError):
    """A rights manifest that cannot be read or holds a row that cannot be applied."""


# the fields that state rights (keywords and the crawl source do not): none of them set = no rights metadata
RIGHTS_STATEMENTS = ("manifest.license", "manifest.rights", "manifest.access", "pdf_rights", "pdf_license")
STATUS_OF_NO_METADATA = {"keep": S.KEPT, "drop": S.DROPPED, "fail": S.FAILED}  # settings.NO_METADATA_POLICIES
BUNDLED_PREFIX = "conf:"


# --- extract -------------------------------------------------------------------------------------------------------


def _unreadable_entry(path: str) -> str:
    """Why a listed entry that is not a regular file cannot be read as one (never opened: a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:  # a broken or looping symlink, permission denied on the way
        return f"{type(err).__name__}: {err}"
    return f"not a regular file (mode {stat.filemode(mode)})"


def list_source_files(sources: list[str], pattern: str) -> list[tuple[str, int, str | None]]:
    """(uri, size, error) of every entry matching `pattern` (case-insensitive) under the sources, sorted by uri.

    error is None for a regular file; an entry that cannot be read as one (a broken or looping symlink, a FIFO,
    permission denied) is listed with why, so that it becomes a failed `books` row instead of vanishing."""
    import fsspec

    found: dict[str, tuple[int, str | None]] = {}
    for source in sources:
        fs, path = fsspec.core.url_to_fs(source)
        if not fs.exists(path) and not os.path.lexists(path):
            raise SourceError(f"ingest source {source!r} does not exist (ingest.sources)")
        local = fs.protocol in ("file", ("file", "local"))
        entries = fs.find(path, detail=True) if fs.isdir(path) else {path: _entry_info(fs, path)}
        for name, info in entries.items():
            if info.get("type") == "directory" or not fnmatch.fnmatch(os.path.basename(name).lower(), pattern.lower()):
                continue
            uri = os.path.abspath(name) if local else fs.unstrip_protocol(name)
            error = None if info.get("type") == "file" else (_unreadable_entry(name) if local else f"listed as {info.get('type')!r}, not a file")
            found[uri] = (int(info.get("size") or 0), error)
    return sorted((uri, size, error) for uri, (size, error) in found.items())


def _entry_info(fs, path: str) -> dict:
    try:
        return fs.info(path)
    except OSError:  # a source naming a broken symlink itself
        return {"type": "other", "size": 0}


def _manifest_table(location: str):
    """The manifest file as a pandas frame of strings, by its extension (.csv, .jsonl / .json, .parquet)."""
    import fsspec
    import pandas as pd

    name = location.lower()
    if location.startswith(BUNDLED_PREFIX):
        handle = resources.files("megascience.conf").joinpath(*location[len(BUNDLED_PREFIX) :].split("/")).open("rb")
    else:
        handle = fsspec.open(location, "rb").open()
    with handle:
        if name.endswith(".csv"):
            return pd.read_csv(handle, dtype=str, keep_default_na=False)
        if name.endswith((".jsonl", ".json")):
            return pd.read_json(handle, lines=True, dtype=False).astype(object)
        if name.endswith(".parquet"):
            return pd.read_parquet(handle)
    raise ManifestError(f"ingest.copyright.manifest {location}: give a .csv, .jsonl or .parquet file")


def read_manifest(location: str, fields: dict[str, str]) -> list[dict[str, str | None]]:
    """The manifest's rows as {key, license, rights, access, source} (empty values as None), checked: every
    mapped column exists and no key is listed twice."""
    try:
        table = _manifest_table(location)
    except (OSError, ValueError) as err:
        raise ManifestError(f"ingest.copyright.manifest {location}: {type(err).__name__}: {err}") from None
    mapped = {ours: theirs for ours, theirs in fields.items() if theirs}
    missing = sorted(theirs for theirs in mapped.values() if theirs not in table.columns)
    if missing:
        raise ManifestError(
            f"{location}: no column {', '.join(missing)} (ingest.copyright.manifest_fields); columns: {', '.join(map(str, table.columns))}"
        )

    def text(value) -> str | None:
        return None if value is None or (isinstance(value, float) and value != value) else (str(value).strip() or None)

    rows, seen = [], set()
    for line, record in enumerate(table.to_dict("records"), start=1):
        row = {ours: text(record[theirs]) for ours, theirs in mapped.items()}
        if row["key"] is None:
            raise ManifestError(f"{location} row {line}: no {mapped['key']}")
        if row["key"] in seen:
            raise ManifestError(f"{location} row {line}: {mapped['key']} {row['key']} is listed twice")
        seen.add(row["key"])
        rows.append(row)
    return rows


MANIFEST = StructType([StructField("key", StringType(), False), StructField("manifest_rights", MapType(StringType(), StringType()))])


def manifest_frame(spark: SparkSession, rows: list[dict[str, str | None]]) -> DataFrame:
    return spark.createDataFrame(
        [(r["key"], {n: r[n] for n in MANIFEST_FIELDS if r.get(n)}) for r in rows], MANIFEST
    )


# --- transform (pure DataFrame -> DataFrame) -----------------------------------------------------------------------


def with_manifest(books: DataFrame, manifest: DataFrame, key: str) -> DataFrame:
    """Adds manifest_rights: the manifest row of each book (matched on `key`), null for a book it does not list."""
    return books.join(manifest.withColumnRenamed("key", key), key, "left")


def unseen_files(listed: DataFrame, books: DataFrame) -> DataFrame:
    """Listed files whose (uri, size) is not already in `books`."""
    return listed.join(books.select("source_uri", "size_bytes"), ["source_uri", "size_bytes"], "left_anti")


def inspect_pdfs(files: DataFrame, max_bytes: int) -> DataFrame:
    """Read and inspect every file on the executors (udfs.pdf)."""
    facts = [f for f in BOOKS.schema.fields if f.name in FACT_COLUMNS]
    schema = StructType(list(LISTED_FILES.fields) + [StructField(f.name, f.dataType, True) for f in facts])
    return files.mapInPandas(partial(inspect_files, max_bytes=max_bytes), schema).drop("list_error")


def rights_value(field: str) -> Column:
    """The value of a rights field: manifest.<name> from the manifest's row, else the books column; empty = null."""
    value = F.col("manifest_rights")[field.split(".", 1)[1]] if field.startswith("manifest.") else F.col(field)
    return F.nullif(F.trim(value), F.lit(""))


def _first_match(fields: list[str], patterns: list[str]) -> dict[str, Column]:
    """_rights_field, _rights_found, _rights_match: the first field (in order) whose value matches any pattern
    (case-insensitive), its value and the text that matched. Flat coalesces, so the plan stays small."""
    combined = "(?i)" + "|".join(f"(?:{p})" for p in patterns) if patterns else None
    hits = [(name, rights_value(name)) for name in fields]
    matches = [(name, value, value.rlike(combined)) for name, value in hits] if combined else []
    none = F.lit(None).cast("string")
    return {
        "_rights_field": F.coalesce(none, *[F.when(hit, F.lit(name)) for name, _, hit in matches]),
        "_rights_found": F.coalesce(none, *[F.when(hit, value) for _, value, hit in matches]),
        "_rights_match": F.coalesce(none, *[F.when(hit, F.regexp_extract(value, combined, 0)) for _, value, hit in matches]),
    }


def _first_set(fields: list[str]) -> dict[str, Column]:
    """_license_field, _license_found: the first field that has a value, and the value."""
    none = F.lit(None).cast("string")
    return {
        "_license_field": F.coalesce(none, *[F.when(rights_value(name).isNotNull(), F.lit(name)) for name in fields]),
        "_license_found": F.coalesce(none, *[rights_value(name) for name in fields]),
    }


def apply_copyright_filter(books: DataFrame, rules: CopyrightSettings) -> DataFrame:
    """Drop kept books whose metadata (embedded or in the manifest) restricts public use; the first rule that
    applies names the reason, and the field and value that decided go on the row."""
    if "manifest_rights" not in books.columns:
        books = books.withColumn("manifest_rights", F.lit(None).cast(MapType(StringType(), StringType())))
    books = books.withColumns(
        {
            **_first_match(rules.rights_fields, rules.exclude_rights_patterns),
            **_first_set(rules.license_fields),
            "_no_metadata": reduce(operator.and_, [rights_value(name).isNull() for name in RIGHTS_STATEMENTS]),
        }
    )
    kept = F.col("status") == S.KEPT
    no_field = F.lit(None).cast("string")
    license_found = F.col("_license_found")
    allowlist = rules.license_allowlist
    license_allowed = license_found.rlike("(?i)" + "|".join(f"(?:{p})" for p in allowlist)) if allowlist else F.lit(True)
    permissions_refused = (
        F.coalesce(~F.col("text_extraction_allowed"), F.lit(False)) if rules.respect_pdf_permissions else F.lit(False)
    )
    policy = rules.no_metadata
    verdicts = [  # (condition, status, reason, detail, field, value)
        (
            F.col("_rights_field").isNotNull(),
            S.DROPPED,
            S.REASON_RIGHTS_PATTERN,
            F.format_string(
                "%s = '%s' matches an excluded pattern at '%s' (ingest.copyright.exclude_rights_patterns)",
                "_rights_field",
                "_rights_found",
                "_rights_match",
            ),
            F.col("_rights_field"),
            F.col("_rights_found"),
        ),
        (
            ~F.coalesce(license_allowed, F.lit(False)),
            S.DROPPED,
            S.REASON_LICENSE_NOT_ALLOWED,
            F.format_string("licence %s is not in ingest.copyright.license_allowlist", F.coalesce(license_found, F.lit("(none)"))),
            F.col("_license_field"),
            license_found,
        ),
        (permissions_refused, S.DROPPED, S.REASON_PERMISSIONS, F.lit("PDF permissions forbid text extraction"), F.lit("pdf_permissions"), F.lit("no text extraction")),
        (
            F.col("_no_metadata"),
            STATUS_OF_NO_METADATA[policy],
            S.REASON_NO_RIGHTS_METADATA,
            F.lit(f"no licence, rights or access statement in the PDF or the rights manifest (ingest.copyright.no_metadata={policy})"),
            no_field,
            no_field,
        ),
    ]
    status, reason, detail = F.col("status"), F.col("reason"), F.col("detail")
    field, value = F.col("_license_field"), license_found  # a kept book names the licence it was kept under, if any
    for condition, verdict, code, text, decided_by, decided_value in reversed(verdicts):
        hit = kept & condition
        status = F.when(hit, F.lit(verdict)).otherwise(status)
        reason = F.when(hit, F.lit(code)).otherwise(reason)
        detail = F.when(hit, text).otherwise(detail)
        field = F.when(hit, decided_by).otherwise(field)
        value = F.when(hit, decided_value).otherwise(value)
    decided = books.withColumns(
        {
            "status": status,
            "reason": reason,
            "detail": detail,
            "rights_field": F.when(kept, field),
            "rights_value": F.when(kept, value),
        }
    )
    return decided.drop("_rights_field", "_rights_found", "_rights_match", "_license_field", "_license_found", "_no_metadata")


def one_row_per_book(books: DataFrame) -> DataFrame:
    """The same bytes under several names are one book: keep the smallest uri (deterministic)."""
    first = Window.partitionBy("book_id").orderBy("source_uri")
    return books.withColumn("_n", F.row_number().over(first)).where("_n = 1").drop("_n")


def to_book_rows(inspected: DataFrame, manifest: DataFrame, rules: CopyrightSettings, run_id: str, processed_at) -> DataFrame:
    with_names = inspected.withColumns(
        {
            "file_name": F.regexp_extract("source_uri", r"([^/\\]+)$", 1),
            "run_id": F.lit(run_id),
            "processed_at": F.lit(processed_at).cast("timestamp"),
        }
    )
    merged = with_manifest(with_names, manifest, rules.manifest_key)
    return one_row_per_book(apply_copyright_filter(merged, rules))


# --- the stage -----------------------------------------------------------------------------------------------------


def _listed_frame(spark: SparkSession, files: list[tuple[str, int]]) -> DataFrame:
    partitions = max(1, min(len(files), default_parallelism(spark) * 4))
    return spark.createDataFrame(files, LISTED_FILES).repartition(partitions, "source_uri")


def load_manifest(ctx: StageContext, rules: CopyrightSettings) -> DataFrame:
    rows = read_manifest(rules.manifest, asdict(rules.manifest_fields)) if rules.manifest else []
    if rules.manifest:
        ctx.progress(f"{len(rows)} rows in the rights manifest {rules.manifest} (matched on {rules.manifest_key})")
    ctx.recorder.counts(manifest_rows=len(rows))
    return manifest_frame(ctx.spark, rows)


def run(ctx: StageContext) -> StageOutcome:
    settings = ctx.settings
    rules = settings.copyright
    listed = list_source_files(settings.sources, settings.pattern)
    books = ctx.read_input("books")
    new_files = unseen_files(_listed_frame(ctx.spark, listed), books).cache()
    new_count = new_files.count()
    unreadable = sum(1 for _, _, error in listed if error)
    ctx.progress(f"{len(listed)} files listed ({unreadable} unreadable), {new_count} not ingested before")
    if new_count == 0:
        return StageOutcome(0, 0, 0, 0, None)
    inspected = inspect_pdfs(new_files, settings.max_file_mb << 20)
    manifest = load_manifest(ctx, rules)
    rows = to_book_rows(inspected, manifest, rules, ctx.run_id, ctx.started_at)
    new_books = rows.join(books.select("book_id"), "book_id", "left_anti")
    try:
        return commit_rows(ctx, "books", new_books, rows_in=new_count)
    finally:
        new_files.unpersist()


STAGE = Stage(
    name="ingest",
    inputs=("books",),
    output="books",
    settings=IngestSettings,
    run=run,
    description="register PDFs (content-hashed book_id), read their metadata, apply the copyright filter",
)
