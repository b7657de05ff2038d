"""Stage 2, classify: subject and academic level of every kept book -> `book_labels`.

As in the paper, books are classified before OCR, so a dropped book is never OCR'd (`classify.before_ocr`, the
default; the decision is logged as the run's `classify.first_pages_from`). The first `classify.first_pages`
non-blank pages are read from the PDF's text layer on the executors (udfs.ocr.read_text_layers, which also finds
blank pages); a book whose first pages have no text layer (a scan) has them rendered and attached as images for the
`classifier` role (`classify.page_images`; never for the text-only smoke model), else its title and metadata alone. With
classify.before_ocr false, ocr runs first and classify reads the first kept pages of `pages` instead.

The `classifier` role reads the book's title, its PDF metadata and that page text (at most
`classify.max_page_chars` characters) and answers JSON under CLASSIFICATION_SCHEMA: a subject (math,
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

from megascience.jobs.platform.llm import resolve_role
from megascience.jobs.platform.prompts import ChatPrompt, PromptTemplate, load_prompt
from megascience.jobs.platform.settings import ClassifySettings, OcrSettings
from megascience.jobs.platform.stage import (
    Stage,
    StageContext,
    StageOutcome,
    commit_rows,
    llm_failure_reason,
    pending_rows,
    table_rows,
)
from megascience.schemas import status as S
from megascience.schemas.vocabulary import LEVELS, SUBJECTS
from megascience.udfs.ocr import TEXT_LAYER, local_pdf, read_text_layers
from megascience.udfs.parsers import parse_choices

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


# --- extract -------------------------------------------------------------------------------------------------------


def read_labels_file(location: str) -> list[dict[str, str | None]]:
    """The rows of a label file, checked: a known subject and level, and a book_id or file_name, each listed once."""
    import fsspec

    try:
        if location.startswith(BUNDLED_PREFIX):
            bundled = resources.files("megascience.conf").joinpath(*location[len(BUNDLED_PREFIX) :].split("/"))
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
    """(book_id, pages_text, image_pages): each book's first `first_pages` pages (of `pages`: book_id, page_number,
    text) in page order, their texts joined by a blank line and cut short; when none of them has any text (a scan),
    pages_text is null and image_pages lists them for rendering."""
    in_order = Window.partitionBy("book_id").orderBy("page_number")
    first = pages.withColumn("_rank", F.row_number().over(in_order)).where(F.col("_rank") <= first_pages)
    first = first.withColumn("text", F.nullif(F.trim(F.coalesce("text", F.lit(""))), F.lit("")))
    ordered = F.array_sort(F.collect_list(F.struct("page_number", "text")))
    joined = F.array_join(F.transform(ordered, lambda page: page["text"]), PAGE_SEPARATOR)  # nulls are skipped
    texts = first.groupBy("book_id").agg(
        F.nullif(F.substring(joined, 1, max_chars), F.lit("")).alias("pages_text"),
        F.transform(ordered, lambda page: page["page_number"]).alias("_pages"),
    )
    return texts.select("book_id", "pages_text", F.when(F.col("pages_text").isNull(), F.col("_pages")).alias("image_pages"))


def ocr_first_pages(pages: DataFrame) -> DataFrame:
    """classify.before_ocr false: the kept pages of `pages` (book_id, page_number, text)."""
    return pages.where(F.col("status") == S.KEPT).select("book_id", "page_number", "text")


def first_page_units(books: DataFrame, first_pages: int) -> DataFrame:
    """Work units (book_id, source_uri, page_numbers) of each book's first pages, with room for as many blank ones."""
    last = F.least(F.col("page_count"), F.lit(2 * first_pages))
    return books.where(F.col("page_count") > 0).select("book_id", "source_uri", F.sequence(F.lit(1), last).alias("page_numbers"))


def text_layer_first_pages(read: DataFrame) -> DataFrame:
    """classify.before_ocr: the readable, non-blank first pages (book_id, page_number, text) of read_text_layers."""
    usable = F.col("read_error").isNull() & F.col("blank").isNull()
    return read.where(usable).select("book_id", "page_number", F.col("text_layer").alias("text"))


def verdict(settings: ClassifySettings) -> tuple[Column, Column, Column]:
    """keep, status and reason from the subject and level columns."""
    level_kept = F.col("level").isin(*settings.keep_levels)
    keep = level_kept & F.col("subject").isin(*settings.keep_subjects)
    status = F.when(keep, F.lit(S.KEPT)).otherwise(F.lit(S.DROPPED))
    reason = (
        F.when(keep, F.lit(S.REASON_OK))
        .when(~level_kept, F.lit(S.REASON_LEVEL_NOT_KEPT))
        .otherwise(F.lit(S.REASON_SUBJECT_NOT_KEPT))
    )
    return keep, status, reason


def override_rows(ctx: StageContext, overrides: DataFrame, settings: ClassifySettings) -> DataFrame:
    keep, status, reason = verdict(settings)
    detail = F.lit(f"label from {settings.labels_file}")
    source = F.lit(SOURCE_OVERRIDE)
    return table_rows(
        ctx, "book_labels", overrides, keep=keep, label_source=source, status=status, reason=reason, detail=detail
    )


def model_rows(ctx: StageContext, answered: DataFrame, settings: ClassifySettings) -> DataFrame:
    failure = llm_failure_reason(
        {
            S.LLM_PROMPT_ERROR: S.REASON_CLASSIFY_PROMPT_ERROR,
            S.LLM_ENGINE_ERROR: S.REASON_CLASSIFY_ENGINE_ERROR,
            S.LLM_PARSE_ERROR: S.REASON_CLASSIFY_UNPARSED,
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


def classify_request(
    row: dict[str, Any], template: PromptTemplate, image_dim: int | None = None
) -> list[dict[str, Any]]:
    """The classifier's request; with `image_dim`, the first pages of a book without page text are attached as
    PNG images (rendered like olmOCR's pages), so a vision classifier sees the scan."""
    listed = row.get("image_pages")  # an array column: a list or a numpy array, never tested for truth
    images = [int(page) for page in listed] if image_dim and listed is not None else []
    if row["pages_text"]:
        pages = row["pages_text"]
    elif images:
        pages = f"(no text layer: the first {len(images)} pages are attached as images)"
    else:
        pages = "(no page text)"
    prompt = template.render(
        subjects=", ".join(SUBJECTS),
        levels=", ".join(LEVELS),
        title=row["pdf_title"] or row["file_name"],
        author=row["pdf_author"] or "(not given)",
        pdf_subject=row["pdf_subject"] or "(not given)",
        pdf_keywords=row["pdf_keywords"] or "(not given)",
        pages=pages,
    )
    if not images:
        return [{"role": "user", "content": prompt}]
    from olmocr.data.renderpdf import render_pdf_to_base64png

    path = local_pdf(row["source_uri"])
    content = [{"type": "text", "text": prompt}]
    for page in images:
        image = render_pdf_to_base64png(path, page, target_longest_image_dim=image_dim)
        content.append({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}})
    return [{"role": "user", "content": content}]


def first_pages(ctx: StageContext, books: DataFrame, settings: ClassifySettings) -> DataFrame:
    """(book_id, pages_text, image_pages) of the books to ask: from the PDFs (before ocr) or from `pages`."""
    if not settings.before_ocr:
        return first_pages_text(ocr_first_pages(ctx.read_input("pages")), settings.first_pages, settings.max_page_chars)
    from megascience.jobs.stages.ocr import quality_checks

    ocr = OcrSettings.of(ctx.config)
    units = first_page_units(books, settings.first_pages)
    read = units.mapInPandas(partial(read_text_layers, engine=ocr.text_engine, checks=quality_checks(ocr)), TEXT_LAYER)
    return first_pages_text(text_layer_first_pages(read), settings.first_pages, settings.max_page_chars)


# --- a question's subject (the MegaScience mixture's external rows) ------------------------------------------------

QUESTION_SUBJECT_SCHEMA = {
    "type": "object",
    "properties": {"subject": {"type": "string", "enum": list(SUBJECTS)}},
    "required": ["subject"],
    "additionalProperties": False,
}
QUESTION_SUBJECT = StructType([StructField("subject", StringType())])
SUBJECT_FROM_DATASET, SUBJECT_FROM_MODEL = "dataset", "model"


def parse_question_subject(text: str, finish_reason: str | None) -> dict:
    return parse_choices(text, finish_reason, {"subject": SUBJECTS}, LABEL_ALIASES)


def question_subjects(ctx: StageContext, questions: DataFrame) -> DataFrame:
    """(qa_id, subject, subject_source, subject_call_id, subject_status, subject_error) of questions (qa_id,
    question, subject): the dataset's subject where it is one of ours, else the `classifier` role's reading of the
    question (prompt classify_question.v1, JSON under a schema; cached in llm_calls like every call)."""
    known = F.coalesce(F.col("subject").isin(*SUBJECTS), F.lit(False))
    none = F.lit(None).cast("string")
    given = questions.where(known).select(
        "qa_id", "subject", F.lit(SUBJECT_FROM_DATASET).alias("subject_source"), *[none.alias(c) for c in ("subject_call_id", "subject_status", "subject_error")]
    )
    template = load_prompt("classify_question.v1")
    ctx.recorder.prompts_used([template])
    asked = ctx.llm.generate(
        questions.where(~known).select("qa_id", "question", F.lit(", ".join(SUBJECTS)).alias("subjects")),
        "classifier",
        ChatPrompt(template),
        parse=parse_question_subject,
        output_schema=QUESTION_SUBJECT,
        json_schema=QUESTION_SUBJECT_SCHEMA,
    )
    read = asked.select(
        "qa_id",
        "subject",
        F.lit(SUBJECT_FROM_MODEL).alias("subject_source"),
        F.col("llm_call_id").alias("subject_call_id"),
        F.col("llm_status").alias("subject_status"),
        F.col("llm_error").alias("subject_error"),
    )
    return given.unionByName(read)


# --- the stage -----------------------------------------------------------------------------------------------------


def run(ctx: StageContext) -> StageOutcome:
    settings = ctx.settings
    labels = labels_frame(ctx.spark, settings.labels_file)
    books = kept_books(ctx.read_input("books"))
    labelled = ctx.read_input("book_labels")
    overrides = override_labels(books, labels).persist()
    relabelled = changed_overrides(overrides, labelled).persist()
    unlabelled = pending_rows(books, labelled, ["book_id"])  # failed labels are asked again
    unlabelled = unlabelled.join(overrides.select("book_id"), "book_id", "left_anti").persist()
    ctx.recorder.params({"classify.first_pages_from": "pdf text layer" if settings.before_ocr else "pages (ocr ran first)"})
    to_ask = None
    try:
        override_count, ask_count = relabelled.count(), unlabelled.count()
        source = settings.labels_file or "(no label file)"
        ctx.progress(f"{override_count} books take new labels from {source}, {ask_count} go to the classifier")
        rows = override_rows(ctx, relabelled, settings)
        if ask_count:
            to_ask = unlabelled.join(first_pages(ctx, unlabelled, settings), "book_id", "left").persist()
            template = load_prompt(settings.prompt)
            ctx.recorder.prompts_used([template])
            role = resolve_role(ctx.config, "classifier")
            reads_images = settings.page_images and not role.smoke
            image_dim = OcrSettings.of(ctx.config).target_longest_image_dim if reads_images else None
            scans = to_ask.where(F.col("image_pages").isNotNull()).count()
            if scans:
                why = "the smoke model reads no images" if role.smoke else "classify.page_images"
                how = "with their first pages as images" if image_dim else f"from title and metadata ({why})"
                ctx.progress(f"{scans} books have no text on their first pages: classified {how}")
            answered = ctx.llm.generate(
                to_ask,
                "classifier",
                partial(classify_request, template=template, image_dim=image_dim),
                parse=parse_classification,
                output_schema=CLASSIFICATION,
                json_schema=CLASSIFICATION_SCHEMA,
            )
            rows = rows.unionByName(model_rows(ctx, answered, settings))
        return commit_rows(ctx, "book_labels", rows, override_count + ask_count, update_matched=True)
    finally:
        for frame in (overrides, relabelled, unlabelled, to_ask):
            if frame is not None:
                frame.unpersist()


STAGE = Stage(
    name="classify",
    inputs=("books", "pages", "book_labels"),  # pages: only with classify.before_ocr false
    output="book_labels",
    settings=ClassifySettings,
    run=run,
    description="subject and academic level of each kept book (model or label file); keep university level and up",
    roles=("classifier",),
)
