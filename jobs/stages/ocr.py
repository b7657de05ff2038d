"""Stage 3, ocr: every page of every book classify kept -> `pages` (as in the paper, dropped books are never OCR'd;
with classify.before_ocr false it runs before classify, on every kept book, and classify reads its first pages).

Two paths, and `method` on each row says which one made it:
- `text_layer`: the PDF's own text through olmOCR's anchor-text utilities (`ocr.text_engine`: pdfium, pypdf or
  pdftotext), newlines normalised. No model involved.
- `olmocr`: the page rendered with olmOCR's renderer, olmOCR's prompt, the `ocr` role called through the LLM layer
  with the image in the request, the answer parsed in olmOCR's format (front matter + natural text). A page the
  model says is not upright is rendered again, turned by its `rotation_correction`, and asked again, at most
  `ocr.rotation_retries` times; then it fails (`ocr_rotation_unresolved`).
`ocr.method: auto` takes the text layer of a page when it passes the quality checks (`ocr.min_chars`,
`ocr.min_printable_ratio`, `ocr.min_letter_ratio`, and the flattened-math check `ocr.math_min_lines` /
`ocr.math_min_line_ratio`: exponents, limits and fractions left as fragment lines, math-font glyphs) and sends the
page to the vision model otherwise (the failed checks become the row's `detail`); `text_layer` and `olmocr` force
one path for every page. `ocr.method_by_subject` overrides the method for the books of a subject (the cluster
profile sends every page of math and physics books to olmOCR, whose LaTeX keeps the equations).

Blank pages never reach a model: a page with no text layer whose small render has (almost) no ink
(`ocr.blank_max_ink_ratio`) is dropped (`blank_page`) before any call, whatever the method; so is a page the model
reads as empty.

Work is spread by page ranges: each book's missing pages are grouped into units of `ocr.pages_per_task`
consecutive page numbers and the units are spread over the cluster, so a 1,000-page book keeps many tasks busy.
Every page ends as one row: a page that cannot be read, rendered, answered or parsed is a failed row with its
reason while the rest of the book carries on. Incremental: pages that already have a finished row in `pages` (by
book_id and page_number) are not read again.
"""

from __future__ import annotations

from functools import partial, reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, IntegerType, StringType, StructField, StructType

from megascience.jobs.platform.llm import resolve_role
from megascience.jobs.platform.session import default_parallelism
from megascience.jobs.platform.settings import OCR_METHODS, ClassifySettings, OcrSettings
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
from megascience.udfs.ocr import TEXT_LAYER, QualityChecks, page_request, parse_page_answer, read_text_layers

METHOD_AUTO, METHOD_TEXT_LAYER, METHOD_OLMOCR = OCR_METHODS

# The fields of olmOCR's PageResponse, as udfs.ocr.parse_page_answer returns them.
PAGE_ANSWER = StructType(
    [
        StructField("natural_text", StringType()),
        StructField("is_rotation_valid", BooleanType()),
        StructField("rotation_correction", IntegerType()),
        StructField("primary_language", StringType()),
        StructField("is_table", BooleanType()),
        StructField("is_diagram", BooleanType()),
    ]
)


def quality_checks(settings: OcrSettings) -> QualityChecks:
    return QualityChecks(
        settings.min_chars,
        settings.min_printable_ratio,
        settings.min_letter_ratio,
        settings.math_min_lines,
        settings.math_min_line_ratio,
        settings.blank_max_ink_ratio,
    )


# --- transforms (pure DataFrame -> DataFrame) ----------------------------------------------------------------------


def books_to_read(books: DataFrame, labels: DataFrame | None) -> DataFrame:
    """(book_id, source_uri, page_count, subject) of the kept books; with `labels` (classify ran first), only the
    books classify kept, with their subject."""
    kept = books.where(F.col("status") == S.KEPT).select("book_id", "source_uri", "page_count")
    if labels is None:
        return kept.withColumn("subject", F.lit(None).cast("string"))
    return kept.join(labels.where(F.col("status") == S.KEPT).select("book_id", "subject"), "book_id")


def with_page_method(books: DataFrame, settings: OcrSettings) -> DataFrame:
    """Adds ocr_method (ocr.method, or ocr.method_by_subject for the book's subject) and why it was chosen."""
    method, chosen_by = F.lit(settings.method), F.lit(f"ocr.method={settings.method}")
    for subject, subject_method in sorted(settings.method_by_subject.items()):
        is_subject = F.col("subject") == subject
        method = F.when(is_subject, F.lit(subject_method)).otherwise(method)
        chosen_by = F.when(is_subject, F.lit(f"ocr.method_by_subject.{subject}={subject_method}")).otherwise(chosen_by)
    return books.withColumns({"ocr_method": method, "method_chosen_by": chosen_by})


def missing_pages(books: DataFrame, pages: DataFrame) -> DataFrame:
    """(book_id, source_uri, page_number) of every page of the books without a finished row in `pages` yet; pages
    that failed before (say, no OCR model could take images) are read again."""
    every_page = books.select(
        "book_id", "source_uri", F.explode(F.sequence(F.lit(1), F.col("page_count"))).alias("page_number")
    )
    return pending_rows(every_page, pages, ["book_id", "page_number"])


def page_ranges(pages: DataFrame, pages_per_task: int) -> DataFrame:
    """Work units: (book_id, source_uri, page_numbers) with the pages of each run of `pages_per_task` page numbers."""
    unit = F.floor((F.col("page_number") - 1) / pages_per_task)
    return (
        pages.groupBy("book_id", "source_uri", unit.alias("unit"))
        .agg(F.sort_array(F.collect_list("page_number")).alias("page_numbers"))
        .drop("unit")
    )


def read_pages(units: DataFrame, settings: OcrSettings) -> DataFrame:
    """One TEXT_LAYER row per page of the units, read on the executors (text layer, quality and blank checks)."""
    body = partial(read_text_layers, engine=settings.text_engine, checks=quality_checks(settings))
    return units.mapInPandas(body, TEXT_LAYER)


def _goes_to_vision_model() -> Column:
    """Readable, not blank, and either forced to olmOCR or (auto) failing a text-layer check; per page's ocr_method."""
    readable = F.col("read_error").isNull() & F.col("blank").isNull()
    method = F.col("ocr_method")
    poor = F.col("text_layer_problems").isNotNull()
    return readable & ((method == METHOD_OLMOCR) | ((method == METHOD_AUTO) & poor))


def text_layer_page_rows(ctx: StageContext, read: DataFrame, settings: OcrSettings) -> DataFrame:
    """`pages` rows of the pages the vision model does not see: text-layer pages, blank pages, unreadable files."""
    unreadable, blank = F.col("read_error").isNotNull(), F.col("blank").isNotNull()
    poor = F.col("text_layer_problems").isNotNull()
    kept = ~unreadable & ~blank & ~poor
    text = F.when(kept, F.col("text_layer")).when(blank, F.lit(""))
    forced_olmocr = unreadable & (F.col("ocr_method") == METHOD_OLMOCR)
    return table_rows(
        ctx,
        "pages",
        read.where(~_goes_to_vision_model()),
        text=text,
        char_count=F.length(text),
        method=F.when(forced_olmocr, F.lit(METHOD_OLMOCR)).otherwise(F.lit(METHOD_TEXT_LAYER)),
        model=F.when(kept | blank, F.lit(settings.text_engine)),
        status=F.when(kept, F.lit(S.KEPT)).when(blank, F.lit(S.DROPPED)).otherwise(F.lit(S.FAILED)),
        reason=F.when(unreadable, F.lit(S.REASON_PDF_UNREADABLE))
        .when(blank, F.lit(S.REASON_BLANK_PAGE))
        .when(poor, F.lit(S.REASON_TEXT_LAYER_POOR))
        .otherwise(F.lit(S.REASON_OK)),
        detail=F.coalesce(F.col("read_error"), F.col("blank"), F.col("text_layer_problems")),
    )


def vision_candidates(read: DataFrame) -> DataFrame:
    """Pages for the vision model, upright at first, with why they were sent as their detail."""
    why = F.when(F.col("ocr_method") == METHOD_AUTO, F.concat(F.lit("text layer: "), F.col("text_layer_problems")))
    return read.where(_goes_to_vision_model()).select(
        "book_id",
        "source_uri",
        "page_number",
        F.coalesce(why, F.col("method_chosen_by")).alias("detail"),
        F.lit(0).alias("rotation"),
    )


def vision_page_rows(ctx: StageContext, answered: DataFrame, rotation_retries: int) -> DataFrame:
    """`pages` rows from the vision model's last answer for each page."""
    failure = llm_failure_reason(
        {
            S.LLM_PROMPT_ERROR: S.REASON_OCR_RENDER_ERROR,
            S.LLM_ENGINE_ERROR: S.REASON_OCR_ENGINE_ERROR,
            S.LLM_PARSE_ERROR: S.REASON_OCR_UNPARSED,
        }
    )
    truncated = (F.col("llm_status") == S.LLM_OK) & (F.col("llm_finish_reason") == "length")
    failure = F.coalesce(failure, F.when(truncated, F.lit(S.REASON_OCR_TRUNCATED)))
    answered_ok = (F.col("llm_status") == S.LLM_OK) & ~truncated
    turned = answered_ok & ~F.col("is_rotation_valid")
    blank = answered_ok & (F.coalesce(F.trim("natural_text"), F.lit("")) == "")
    status = (
        F.when(failure.isNotNull() | turned, F.lit(S.FAILED)).when(blank, F.lit(S.DROPPED)).otherwise(F.lit(S.KEPT))
    )
    text = F.when(status == S.KEPT, F.col("natural_text")).when(blank, F.lit(""))
    unresolved = F.format_string(
        "the model still finds the page turned (rotation_correction %d) in the image rotated by %d, "
        "after at most ocr.rotation_retries=%d re-renders",
        F.col("rotation_correction"),
        F.col("rotation"),
        F.lit(rotation_retries),
    )
    return table_rows(
        ctx,
        "pages",
        answered,
        text=text,
        char_count=F.length(text),
        method=F.lit(METHOD_OLMOCR),
        model=F.col("llm_model"),
        status=status,
        reason=F.coalesce(
            failure,
            F.when(turned, F.lit(S.REASON_OCR_ROTATION_UNRESOLVED)).when(blank, F.lit(S.REASON_BLANK_PAGE)),
            F.lit(S.REASON_OK),
        ),
        detail=F.when(truncated, F.lit("the answer stopped at llm.roles.ocr.max_tokens"))
        .when(failure.isNotNull(), F.col("llm_error"))
        .when(turned, unresolved)
        .otherwise(F.col("detail")),
    )


def no_vision_model_rows(ctx: StageContext, candidates: DataFrame, model: str) -> DataFrame:
    """Failed `pages` rows for the vision candidates when the ocr role has the smoke model, which reads no images:
    asking it would fail the same way on every run."""
    return table_rows(
        ctx,
        "pages",
        candidates,
        method=F.lit(METHOD_OLMOCR),
        model=F.lit(model),
        status=F.lit(S.FAILED),
        reason=F.lit(S.REASON_OCR_NO_VISION_MODEL),
        detail=F.concat(
            F.col("detail"),
            F.lit("; the smoke model reads no images: set llm.roles.ocr.model to an olmOCR model or an endpoint serving one"),
        ),
    )


# --- the vision model ----------------------------------------------------------------------------------------------


def ask_vision_model(ctx: StageContext, candidates: DataFrame, settings: OcrSettings, persisted: list[DataFrame]) -> DataFrame:
    """Every candidate page with the model's last answer; a page answered "not upright" is asked again, turned."""
    build = partial(page_request, target_longest_image_dim=settings.target_longest_image_dim)
    retries = settings.rotation_retries
    turned = (F.col("llm_status") == S.LLM_OK) & ~F.col("is_rotation_valid") & (F.col("rotation_correction") != 0)
    to_turn = F.coalesce(turned, F.lit(False))
    final, pending = [], candidates
    for attempt in range(retries + 1):
        answered = ctx.llm.generate(pending, "ocr", build, parse=parse_page_answer, output_schema=PAGE_ANSWER).persist()
        persisted.append(answered)
        if attempt == retries:
            final.append(answered)
            break
        final.append(answered.where(~to_turn))
        pending = answered.where(to_turn).select(
            *[c for c in candidates.columns if c != "rotation"],
            F.pmod(F.col("rotation") + F.col("rotation_correction"), F.lit(360)).alias("rotation"),
        )
        turned_count = pending.count()
        if turned_count == 0:
            break
        ctx.progress(f"{turned_count} pages answered as turned: asking again with the image rotated")
    return reduce(DataFrame.unionByName, final)


# --- the stage -----------------------------------------------------------------------------------------------------


def run(ctx: StageContext) -> StageOutcome:
    settings = ctx.settings
    after_classify = ClassifySettings.of(ctx.config).before_ocr
    books = books_to_read(ctx.read_input("books"), ctx.read_input("book_labels") if after_classify else None)
    books = with_page_method(books, settings).persist()
    ctx.recorder.params({"ocr.books": "kept by classify" if after_classify else "every kept book (classify.before_ocr=false)"})
    if settings.method_by_subject:
        if after_classify:
            ctx.progress("pages of " + ", ".join(f"{s} books: {m}" for s, m in sorted(settings.method_by_subject.items())) + " (ocr.method_by_subject)")
        else:
            ctx.progress("ocr.method_by_subject is not applied: books have no subject before classify (classify.before_ocr=false)")
    pending = missing_pages(books, ctx.read_input("pages")).persist()
    persisted = [books, pending]
    try:
        pending_count = pending.count()
        if pending_count == 0:
            ctx.progress("every page of the kept books has a row already")
            return StageOutcome(0, 0, 0, 0, None)
        units = page_ranges(pending, settings.pages_per_task).persist()
        persisted.append(units)
        unit_count = units.count()
        ctx.progress(f"{pending_count} pages to read in {unit_count} units (ocr.pages_per_task={settings.pages_per_task})")
        # round-robin over a fixed number of partitions: adaptive execution leaves it alone, so units stay spread
        spread = units.repartition(max(1, min(unit_count, default_parallelism(ctx.spark) * 4)))
        methods = books.select("book_id", "ocr_method", "method_chosen_by")
        read = read_pages(spread, settings).join(F.broadcast(methods), "book_id").persist()
        persisted.append(read)
        blank_count = read.where(F.col("blank").isNotNull()).count()
        if blank_count:
            ctx.progress(f"{blank_count} blank pages dropped before any model call (ocr.blank_max_ink_ratio)")
        rows = text_layer_page_rows(ctx, read, settings)
        candidates = vision_candidates(read)
        vision_count = candidates.count()
        ocr_role = resolve_role(ctx.config, "ocr") if vision_count else None
        if ocr_role is not None and ocr_role.smoke:
            ctx.progress(f"{vision_count} pages need a vision model; the ocr role has the text-only smoke model: not asked")
            rows = rows.unionByName(no_vision_model_rows(ctx, candidates, ocr_role.model_id))
        elif vision_count:
            ctx.progress(f"{vision_count} pages go to the vision model (role ocr)")
            answered = ask_vision_model(ctx, candidates, settings, persisted)
            rows = rows.unionByName(vision_page_rows(ctx, answered, settings.rotation_retries))
        return commit_rows(ctx, "pages", rows, pending_count, update_matched=True)
    finally:
        for frame in persisted:
            frame.unpersist()


STAGE = Stage(
    name="ocr",
    inputs=("books", "book_labels", "pages"),
    output="pages",
    settings=OcrSettings,
    run=run,
    description="page text of every book classify kept: the PDF text layer, or olmOCR's vision model where it is unusable",
    roles=("ocr",),
)
