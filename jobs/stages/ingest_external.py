"""MegaScience part 2, ingest_external: public QA datasets (NaturalReasoning, Nemotron-Science, ...) -> `external_qa`.

Sources are configuration, read by the code that reads the benchmark sources (jobs/platform/sources.py):
`external.sources_file` (conf/external.yaml) gives each dataset as a Hugging Face id or a jsonl/parquet/csv file with
the mapping of its fields to ours (question required; reference_answer, response, subject, source_id optional), and
`external.datasets` names the ones a run uses. Each record becomes one row: dataset (the source's name), source,
source_id, subject (lower-cased and mapped to our subjects by the source's `subject_map`), question,
reference_answer, response.

Nothing is lost silently. A record without a mapped field, or with an empty question, is a failed row naming the
field; a source that cannot be read at all (a missing file, a Hugging Face dataset without the `datasets` library or
one the hub refuses) is one failed row saying why, and the other sources still load. Records repeating an earlier
question of their dataset (same normalised text) are one row, the first read; their number is logged
(`repeated_records`).

qa_id = sha256 of (dataset, normalised question) (of the raw record for a failed row): a record read again is the
same row, so a rerun commits nothing and a dataset added later adds only its own rows. Records are read on the
driver, as benchmark items are.

The rows then go through the textbook pairs' own stages, made for these tables by their factories (jobs/stages/external.py):
dedup_external (near-duplicates within each dataset) -> external_clusters, then decontaminate_external and
drop_contaminated_external -> external_contamination, external_decontaminated.
"""

from __future__ import annotations

from typing import Any, Iterator

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from megascience.jobs.platform import sources
from megascience.jobs.platform.settings import ExternalSettings
from megascience.jobs.platform.sources import Catalogue, MissingField, Source, SourceError
from megascience.jobs.platform.stage import (
    Stage,
    StageContext,
    StageOutcome,
    commit_new_rows,
    content_id,
    normalised,
    with_run,
)
from megascience.schemas import status as S
from megascience.schemas.tables import EXTERNAL_QA

FIELDS = ("question", "reference_answer", "response", "subject", "source_id")
EXTERNAL_SOURCES = Catalogue("external dataset", "external", "sources_file", "datasets", FIELDS)

LOADED = sources.loaded_schema("dataset", "source", "source_id", "subject", "question", "reference_answer", "response")


# --- extract and map: one record -> one row (pure) ------------------------------------------------------------------


def _empty_row(source: Source, config: str | None) -> dict[str, str | None]:
    row: dict[str, str | None] = {name: None for name in LOADED.names if name != "position"}
    row.update(dataset=source.name, source=source.describe(config), status=S.KEPT, reason=S.REASON_OK)
    return row


def record_row(source: Source, config: str | None, where: str, record: Any) -> dict[str, str | None]:
    """A LOADED row (without position) from one record: kept with its fields, or failed naming what is missing."""
    row = _empty_row(source, config)
    row["source_id"] = where
    problem = sources.record_problem(record)
    if problem:
        return sources.failed_row(row, record, where, S.REASON_EXTERNAL_UNREADABLE_RECORD, problem)
    try:
        row.update(sources.mapped_texts(record, source.fields, ("question",)))
    except MissingField as err:
        detail = sources.missing_detail(err, source.fields)
        return sources.failed_row(row, record, where, S.REASON_EXTERNAL_MISSING_FIELD, detail)
    row["source_id"] = row["source_id"] or where
    row["subject"] = mapped_subject(row["subject"], dict(source.subject_map))
    return row


def mapped_subject(value: str | None, subject_map: dict[str, str]) -> str | None:
    """The dataset's subject in our vocabulary where its `subject_map` (or the same word) says so, else as given
    (annotate asks the classifier for a question whose subject is not one of ours)."""
    if value is None:
        return None
    key = value.strip().lower()
    return subject_map.get(key, key)


def source_rows(source: Source) -> Iterator[dict[str, str | None]]:
    """The rows of every record of a source, then one failed row if reading it stopped (or never started)."""
    try:
        for config, where, record in sources.source_records(source):
            yield record_row(source, config, where, record)
    except SourceError as err:
        row = _empty_row(source, None)
        yield {**row, "status": S.FAILED, "reason": S.REASON_EXTERNAL_SOURCE_UNREADABLE, "detail": str(err)}


# --- transform (pure DataFrame -> DataFrame) ------------------------------------------------------------------------


def keyed_rows(loaded: DataFrame) -> DataFrame:
    """Adds qa_id: the dataset and normalised question of a kept row, the raw record (or source) of a failed one.

    Records with one key are one row, the one read first.
    """
    kept = F.col("status") == S.KEPT
    qa_id = F.when(kept, content_id("dataset", normalised(F.col("question")))).otherwise(
        content_id("dataset", "source", F.coalesce("raw", F.lit("")))
    )
    return sources.first_read(loaded.withColumn("qa_id", qa_id), "qa_id")


def new_rows(keyed: DataFrame, existing: DataFrame) -> DataFrame:
    return keyed.join(existing.select("qa_id"), "qa_id", "left_anti")


# --- the stage -----------------------------------------------------------------------------------------------------


def run(ctx: StageContext) -> StageOutcome:
    chosen = sources.configured_sources(ctx.config, EXTERNAL_SOURCES)
    loaded = sources.loaded_rows(ctx, chosen, source_rows, LOADED)
    keyed = keyed_rows(loaded).cache()
    try:
        repeated = loaded.count() - keyed.count()
        ctx.recorder.counts(repeated_records=repeated)
        if repeated:
            ctx.progress(f"{repeated} records repeat an earlier question of their dataset (one row each)")
        rows = with_run(new_rows(keyed, ctx.read_input("external_qa")), ctx).select(*EXTERNAL_QA.schema.names)
        return commit_new_rows(ctx, "external_qa", rows, "external rows")
    finally:
        keyed.unpersist()


STAGE = Stage(
    name="ingest_external",
    inputs=("external_qa",),
    output="external_qa",
    settings=ExternalSettings,
    run=run,
    description="questions of public QA datasets (Hugging Face or local files) with their answers, keyed by content",
)
