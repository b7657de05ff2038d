"""Stage 10 (first part), benchmarks: the benchmark items training questions are checked against -> `benchmarks`.

Sources are configuration, read by jobs/platform/sources.py (as are the external QA datasets): `decontamination.sources_file`
(conf/benchmarks.yaml) describes Hugging Face datasets and local files (jsonl, parquet, csv) with the mapping of their
fields to ours, and `decontamination.benchmarks` names the sources a run uses. Each record becomes one row:
benchmark, subset, split, item_id, question (the item's text with its answer options appended, one "A. ..." line
each, so that the options are embedded too), answer, source.
A record that lacks a mapped field, or whose question is empty, becomes a failed row naming the field; the rest of
the source loads. A source that cannot be read at all (a missing file, a Hugging Face source without the `datasets`
library) stops the stage with an error that says so.

item_key = sha256 of (benchmark, subset, split, question text), so an item read again is the same row: a rerun
commits nothing, and a source added later adds only its own items (and decontaminate searches only those). A second
item of a benchmark with an id already taken is a failed row (duplicate_item_id): (benchmark, item_id) names one
item in `contamination`.
"""

from __future__ import annotations

from typing import Any, Iterator

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from megascience.jobs.platform import sources
from megascience.jobs.platform.config import Config
from megascience.jobs.platform.settings import DecontaminationSettings
from megascience.jobs.platform.sources import Catalogue, MissingField, Source, lookup, text
from megascience.jobs.platform.stage import Stage, StageContext, StageOutcome, commit_new_rows, content_id, with_run
from megascience.schemas import status as S
from megascience.schemas.tables import BENCHMARKS

FIELDS = ("benchmark", "subset", "split", "item_id", "question", "options", "answer")
REQUIRED_VALUES = ("benchmark", "item_id", "question")  # when mapped, an empty value fails the record
OPTION_LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
BENCHMARK_SOURCES = Catalogue("benchmark source", "decontamination", "sources_file", "benchmarks", FIELDS)

LOADED = sources.loaded_schema("benchmark", "subset", "split", "item_id", "question", "answer", "source")


def configured_sources(config: Config) -> list[Source]:
    """The sources `decontamination.benchmarks` names, from `decontamination.sources_file`."""
    return sources.configured_sources(config, BENCHMARK_SOURCES)


# --- transform: one record -> one row (pure) ------------------------------------------------------------------------


def _options(record: dict, spec: Any) -> list[tuple[str, str]]:
    """(label, text) of each answer option: a list gets A, B, C, ...; a mapping keeps its keys as labels."""
    if spec is None:
        return []
    if isinstance(spec, list):
        values: Any = [lookup(record, "options", path) for path in spec]
    else:
        values = lookup(record, "options", spec)
    if values is None:
        return []
    if isinstance(values, dict):
        return [(str(label), text(option) or "") for label, option in values.items()]
    if isinstance(values, (list, tuple)):
        labels = [OPTION_LABELS[i] if i < len(OPTION_LABELS) else str(i + 1) for i in range(len(values))]
        return [(label, text(value) or "") for label, value in zip(labels, values)]
    return [("", text(values) or "")]


def with_options(question: str, options: list[tuple[str, str]]) -> str:
    """The question with one "A. option" line per option: the fixed format in which options are embedded."""
    lines = [f"{label}. {text}" if label else text for label, text in options]
    return "\n".join([question, *lines])


def item_row(source: Source, config: str | None, where: str, record: Any) -> dict[str, str | None]:
    """A LOADED row (without position) from one source record: kept with the item's fields, or failed naming what is
    missing."""
    row: dict[str, str | None] = {name: None for name in LOADED.names if name != "position"}
    row.update(benchmark=source.name, subset=config, split=source.split or None, source=source.describe(config))
    row.update(status=S.KEPT, reason=S.REASON_OK)
    problem = sources.record_problem(record)
    if problem:
        return sources.failed_row(row, record, where, S.REASON_BENCHMARK_UNREADABLE_RECORD, problem)
    if "item_id" in source.fields:  # a failed row still names the item when its id can be read
        try:
            row["item_id"] = text(lookup(record, "item_id", source.fields["item_id"]))
        except MissingField:
            pass
    plain = {column: path for column, path in source.fields.items() if column != "options"}
    try:
        row.update(sources.mapped_texts(record, plain, REQUIRED_VALUES))
        options = _options(record, source.fields.get("options"))
    except MissingField as err:
        detail = sources.missing_detail(err, source.fields)
        return sources.failed_row(row, record, where, S.REASON_BENCHMARK_MISSING_FIELD, detail)
    row["question"] = with_options(row["question"], options)
    return row


# --- transform (pure DataFrame -> DataFrame) ------------------------------------------------------------------------


def keyed_items(loaded: DataFrame) -> DataFrame:
    """Adds item_key (the item's content; the raw record's for a failed row) and the default item ids.

    The same item read twice is one row: of rows sharing a key the one read first stays.
    """
    content = content_id("benchmark", F.coalesce("subset", F.lit("")), F.coalesce("split", F.lit("")), "question")
    kept = F.col("status") == S.KEPT
    keyed = loaded.withColumn("item_key", F.when(kept, content).otherwise(content_id("source", "raw")))
    default_id = F.coalesce("item_id", F.substring("item_key", 1, 16))
    keyed = keyed.withColumn("item_id", F.when(kept, default_id).otherwise(F.col("item_id")))
    return sources.first_read(keyed, "item_key")


def new_items(keyed: DataFrame, existing: DataFrame) -> DataFrame:
    """Keyed rows not yet in `benchmarks`; a kept one whose (benchmark, item_id) is taken fails as duplicate_item_id.

    Items already in the table hold their ids; among new items the one read first wins.
    """
    new = keyed.join(existing.select("item_key"), "item_key", "left_anti")
    kept = F.col("status") == S.KEPT
    holders = existing.where(kept).select("benchmark", "item_id", "item_key", F.lit(-1).cast("long").alias("position"))
    claims = new.where(kept).select("benchmark", "item_id", "item_key", "position")
    order = Window.partitionBy("benchmark", "item_id").orderBy("position")
    holder = holders.unionByName(claims).select("item_key", F.first("item_key").over(order).alias("_holder"))
    duplicate = F.col("_holder") != F.col("item_key")
    return new.join(holder, "item_key", "left").select(
        *[c for c in new.columns if c not in ("status", "reason", "detail")],
        F.when(duplicate, F.lit(S.FAILED)).otherwise(F.col("status")).alias("status"),
        F.when(duplicate, F.lit(S.REASON_DUPLICATE_ITEM_ID)).otherwise(F.col("reason")).alias("reason"),
        F.when(duplicate, F.format_string("item id %s of %s is held by item %.16s", "item_id", "benchmark", "_holder"))
        .otherwise(F.col("detail"))
        .alias("detail"),
    )


# --- the stage -----------------------------------------------------------------------------------------------------


def run(ctx: StageContext) -> StageOutcome:
    def rows_of(source: Source) -> Iterator[dict[str, str | None]]:
        return (item_row(source, *read) for read in sources.source_records(source))

    loaded = sources.loaded_rows(ctx, configured_sources(ctx.config), rows_of, LOADED)
    rows = new_items(keyed_items(loaded), ctx.read_input("benchmarks"))
    return commit_new_rows(ctx, "benchmarks", with_run(rows, ctx).select(*BENCHMARKS.schema.names), "benchmark items")


STAGE = Stage(
    name="benchmarks",
    inputs=("benchmarks",),
    output="benchmarks",
    settings=DecontaminationSettings,
    run=run,
    description="benchmark items (Hugging Face datasets or local files) with their options, keyed by content",
)
