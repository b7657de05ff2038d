"""Stage 2 of the recipe (run after ocr), classify: subject and academic level of every kept book -> `book_labels`.

The `classifier` role reads the book's title, its PDF metadata and its first kept pages (`classify.first_pages`,
at most `classify.max_page_chars` characters) and answers JSON under CLASSIFICATION_SCHEMA: a subject (math,
physics, chemistry, biology, medicine, cs, economics, other) and a level (primary_school, high_school,
undergraduate, graduate, research). keep = the level is in `classify.keep_levels` (university level and above)
and the subject in `classify.keep_subjects` (the recipe's seven); other books are dropped with the reason. An
answer that does not parse is a failed row (`classify_unparsed`), never a silent drop. The prompt is the versioned
template `classify.prompt` (conf/prompts/), its sha256 logged to the stage's MLflow run.

A label file (`classify.labels_file`, CSV with subject, level and book_id or file_name) overrides the model: the
books it lists take its labels without a model call (`label_source` = override), and a rerun applies a changed or
new label to a book labelled before. Incremental otherwise: books that already have a row are not asked again.
"""

from __future__ import annotations

import csv
import io
from functools import partial
from importlib import resources
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from jobs.config import Config, ConfigError
from jobs.llm import STATUS_ENGINE_ERROR, STATUS_PARSE_ERROR, STATUS_PROMPT_ERROR
from jobs.outcome import commit_rows, llm_failure_reason, table_rows
from jobs.qa_common import pending_rows
from jobs.prompts import PromptTemplate, load_prompt
from jobs.stage import Stage, StageContext, StageOutcome
from schemas import status as S
from udfs.parsers import parse_choices

SUBJECTS = ("math", "physics", "chemistry", "biology", "medicine", "cs", "economics", "other")
LEVELS = ("primary_school", "high_school", "undergraduate", "graduate", "research")
SOURCE_MODEL, SOURCE_OVERRIDE = "model", "override"
PAGE_SEPARATOR = "\n\n"
BUNDLED_PREFIX = "conf:"  # classify.labels_file naming a file shipped in the package's conf/ directory

CLASSIFICATION_SCHEMA = {
    "type": "object",
    "properties": {
        "subject": {"type": "string", "enum": list(SUBJECTS)},
        "level": {"type": "string", "enum": list(LEVELS)},
    },
    "required": ["subject", "level"],
    "additionalProperties": False,
}
CLASSIFICATION = StructType([StructField("subject", StringType()), StructField("level", StringType())])
# Spellings models use for the labels ("Computer Science", "high school", "undergraduate level" read as the labels).
LABEL_ALIASES = {"computer_science": "cs", "mathematics": "math", "maths": "math", "undergrad": "undergraduate", "postgraduate": "graduate"}


def parse_classification(text: str, finish_reason: str | None) -> dict:
    return parse_choices(text, finish_reason, {"subject": SUBJECTS, "level": LEVELS}, LABEL_ALIASES)


LABELS = StructType([StructField(name, StringType()) for name in ("book_id", "file_name", "subject", "level")])


class LabelsFileError(ValueError):
    """A label file that cannot be read or holds a row that cannot be applied."""


def classify_settings(config: Config) -> dict:
    settings = config["classify"]
    for key, allowed in (("keep_levels", LEVELS), ("keep_subjects", SUBJECTS)):
        unknown = sorted(set(settings[key]) - set(allowed))
        if unknown:
            raise ConfigError(f"classify.{key}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    if settings["first_pages"] < 0 or settings["max_page_chars"] < 0:
        raise ConfigError("classify.first_pages and classify.max_page_chars must not be negative")
    return settings


# --- extract -------------------------------------------------------------------------------------------------------


def read_labels_file(location: str) -> list[dict[str, str | None]]:
    """The rows of a label file, checked: a known subject and level, and a book_id or file_name, each listed once."""
    import fsspec

    try:
        if location.startswith(BUNDLED_PREFIX):
            bundled = resources.files("conf").joinpath(*location[len(BUNDLED_PREFIX) :].split("/"))
            text = bundled.read_text(encoding="utf-8")
        else:
            with fsspec.open(location, "r", encoding="utf-8") as handle:
                text = handle.read()
    except OSError as err:
        raise LabelsFileError(f"classify.labels_file {location}: {type(err).__name__}: {err}") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = set(reader.fieldnames or ())
    if not {"subject", "level"} <= columns or not columns & {"book_id", "file_name"}:
        raise LabelsFileError(
            f"{location}: the header must name subject, level and book_id or file_name, got {sorted(columns)}"
        )
    labels, seen = [], set()
    for line, row in enumerate(reader, start=2):
        label = {name: (row.get(name) or "").strip() or None for name in LABELS.fieldNames()}
        where = f"{location} line {line}"
        if label["subject"] not in SUBJECTS:
            raise LabelsFileError(f"{where}: subject {label['subject']!r} is not one of {', '.join(SUBJECTS)}")
        if label["level"] not in LEVELS:
            raise LabelsFileError(f"{where}: level {label['level']!r} is not one of {', '.join(LEVELS)}")
        key = ("book_id", label["book_id"]) if label["book_id"] else ("file_name", label["file_name"])
        if key[1] is None:
            raise LabelsFileError(f"{where}: give a book_id or a file_name")
        if key in seen:
            raise LabelsFileError(f"{where}: {key[0]} {key[1]} is listed twice")
        seen.add(key)
        labels.append(label if key[0] == "file_name" else {**label, "file_name": None})
    return labels


def labels_frame(spark: SparkSession, location: str) -> DataFrame:
    rows = read_labels_file(location) if location else []
    return spark.createDataFrame([tuple(r[name] for name in LABELS.fieldNames()) for r in rows], LABELS)


# --- transforms (pure DataFrame -> DataFrame) ----------------------------------------------------------------------


def kept_books(books: DataFrame) -> DataFrame:
    return books.where(F.col("status") == S.KEPT)


def override_labels(books: DataFrame, labels: DataFrame) -> DataFrame:
    """(book_id, subject, level) of the books the label file lists; a book_id row wins over a file_name row."""
    by_id = books.join(labels.where(F.col("book_id").isNotNull()).select("book_id", "subject", "level"), "book_id")
    by_name = books.join(
        labels.where(F.col("book_id").isNull()).select("file_name", "subject", "level"), "file_name"
    ).join(by_id.select("book_id"), "book_id", "left_anti")
    return by_id.select("book_id", "subject", "level").unionByName(by_name.select("book_id", "subject", "level"))


def changed_overrides(overrides: DataFrame, labelled: DataFrame) -> DataFrame:
    """Override labels that are not yet in `book_labels` exactly as given (new books, or changed labels)."""
    before = labelled.select(
        "book_id",
        F.col("label_source").alias("_source"),
        F.col("subject").alias("_subject"),
        F.col("level").alias("_level"),
    )
    same = (
        (F.col("_source") == SOURCE_OVERRIDE)
        & F.col("subject").eqNullSafe(F.col("_subject"))
        & F.col("level").eqNullSafe(F.col("_level"))
    )
    changed = overrides.join(before, "book_id", "left").where(~F.coalesce(same, F.lit(False)))
    return changed.drop("_source", "_subject", "_level")


def first_pages_text(pages: DataFrame, first_pages: int, max_chars: int) -> DataFrame:
    """(book_id, pages_text): each book's first kept pages in page order, joined by a blank line and cut short."""
    in_order = Window.partitionBy("book_id").orderBy("page_number")
    first = pages.where(F.col("status") == S.KEPT).withColumn("_rank", F.row_number().over(in_order))
    first = first.where(F.col("_rank") <= first_pages)
    ordered = F.array_sort(F.collect_list(F.struct("page_number", "text")))
    joined = F.array_join(F.transform(ordered, lambda page: page["text"]), PAGE_SEPARATOR)
    return first.groupBy("book_id").agg(F.substring(joined, 1, max_chars).alias("pages_text"))


def verdict(settings: dict) -> tuple[Column, Column, Column]:
    """keep, status and reason from the subject and level columns."""
    level_kept = F.col("level").isin(*settings["keep_levels"])
    keep = level_kept & F.col("subject").isin(*settings["keep_subjects"])
    status = F.when(keep, F.lit(S.KEPT)).otherwise(F.lit(S.DROPPED))
    reason = (
        F.when(keep, F.lit(S.REASON_OK))
        .when(~level_kept, F.lit(S.REASON_LEVEL_NOT_KEPT))
        .otherwise(F.lit(S.REASON_SUBJECT_NOT_KEPT))
    )
    return keep, status, reason


def override_rows(ctx: StageContext, overrides: DataFrame, settings: dict) -> DataFrame:
    keep, status, reason = verdict(settings)
    detail = F.lit(f"label from {settings['labels_file']}")
    source = F.lit(SOURCE_OVERRIDE)
    return table_rows(
        ctx, "book_labels", overrides, keep=keep, label_source=source, status=status, reason=reason, detail=detail
    )


def model_rows(ctx: StageContext, answered: DataFrame, settings: dict) -> DataFrame:
    failure = llm_failure_reason(
        {
            STATUS_PROMPT_ERROR: S.REASON_CLASSIFY_PROMPT_ERROR,
            STATUS_ENGINE_ERROR: S.REASON_CLASSIFY_ENGINE_ERROR,
            STATUS_PARSE_ERROR: S.REASON_CLASSIFY_UNPARSED,
        }
    )
    failed = failure.isNotNull()
    keep, status, reason = verdict(settings)
    return table_rows(
        ctx,
        "book_labels",
        answered,
        keep=F.when(~failed, keep),
        label_source=F.lit(SOURCE_MODEL),
        model=F.col("llm_model"),
        status=F.when(failed, F.lit(S.FAILED)).otherwise(status),
        reason=F.coalesce(failure, reason),
        detail=F.when(failed, F.col("llm_error")),
    )


# --- the model's request (built on the executors) ------------------------------------------------------------------


def classify_request(row: dict[str, Any], template: PromptTemplate) -> list[dict[str, Any]]:
    prompt = template.render(
        subjects=", ".join(SUBJECTS),
        levels=", ".join(LEVELS),
        title=row["pdf_title"] or row["file_name"],
        author=row["pdf_author"] or "(not given)",
        pdf_subject=row["pdf_subject"] or "(not given)",
        pdf_keywords=row["pdf_keywords"] or "(not given)",
        pages=row["pages_text"] or "(no page text)",
    )
    return [{"role": "user", "content": prompt}]


# --- the stage -----------------------------------------------------------------------------------------------------


def run(ctx: StageContext) -> StageOutcome:
    settings = classify_settings(ctx.config)
    labels = labels_frame(ctx.spark, settings["labels_file"])
    books = kept_books(ctx.read_input("books"))
    labelled = ctx.read_input("book_labels")
    overrides = override_labels(books, labels).persist()
    relabelled = changed_overrides(overrides, labelled).persist()
    unlabelled = pending_rows(books, labelled, ["book_id"])  # failed labels are asked again
    unlabelled = unlabelled.join(overrides.select("book_id"), "book_id", "left_anti")
    first_pages = first_pages_text(ctx.read_input("pages"), settings["first_pages"], settings["max_page_chars"])
    to_ask = unlabelled.join(first_pages, "book_id", "left").persist()
    try:
        override_count, ask_count = relabelled.count(), to_ask.count()
        source = settings["labels_file"] or "(no label file)"
        ctx.progress(f"{override_count} books take new labels from {source}, {ask_count} go to the classifier")
        rows = override_rows(ctx, relabelled, settings)
        if ask_count:
            template = load_prompt(settings["prompt"])
            ctx.recorder.prompts_used([template])
            answered = ctx.llm.generate(
                to_ask,
                "classifier",
                partial(classify_request, template=template),
                parse=parse_classification,
                output_schema=CLASSIFICATION,
                json_schema=CLASSIFICATION_SCHEMA,
            )
            rows = rows.unionByName(model_rows(ctx, answered, settings))
        return commit_rows(ctx, "book_labels", rows, override_count + ask_count, update_matched=True)
    finally:
        for frame in (overrides, relabelled, to_ask):
            frame.unpersist()


STAGE = Stage(
    name="classify",
    inputs=("books", "pages", "book_labels"),
    output="book_labels",
    config_section="classify",
    run=run,
    description="subject and academic level of each kept book (model or label file); keep university level and up",
    roles=("classifier",),
)
