"""Stage 3, ocr: every page of every kept book -> `pages` (runs before classify, which reads the first pages).

Two paths, and `method` on each row says which one made it:
- `text_layer`: the PDF's own text through olmOCR's anchor-text utilities (`ocr.text_engine`: pdfium, pypdf or
  pdftotext), newlines normalised. No model involved.
- `olmocr`: the page rendered with olmOCR's renderer, olmOCR's prompt, the `ocr` role called through the LLM layer
  with the image in the request, the answer parsed in olmOCR's format (front matter + natural text). A page the
  model says is not upright is rendered again, turned by its `rotation_correction`, and asked again, at most
  `ocr.rotation_retries` times; then it fails (`ocr_rotation_unresolved`).
`ocr.method: auto` takes the text layer of a page when it passes the quality checks (`ocr.min_chars`,
`ocr.min_printable_ratio`, `ocr.min_letter_ratio`) and sends the page to the vision model otherwise (the failed
checks become the row's `detail`); `text_layer` and `olmocr` force one path for every page.

Work is spread by page ranges: each kept book's missing pages are grouped into units of `ocr.pages_per_task`
consecutive page numbers and the units are spread over the cluster, so a 1,000-page book keeps many tasks busy.
Every page ends as one row: a page that cannot be read, rendered, answered or parsed is a failed row with its
reason while the rest of the book carries on; a page the model finds blank is dropped. Incremental: pages that
already have a row in `pages` (by book_id and page_number, whatever its status) are not read again.
"""

from __future__ import annotations

from functools import partial, reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, IntegerType, StringType, StructField, StructType

from jobs.config import Config, ConfigError
from jobs.llm import STATUS_ENGINE_ERROR, STATUS_OK, STATUS_PARSE_ERROR, STATUS_PROMPT_ERROR, resolve_role
from jobs.outcome import commit_rows, llm_failure_reason, table_rows
from jobs.qa_common import pending_rows
from jobs.session import default_parallelism
from jobs.stage import Stage, StageContext, StageOutcome
from schemas import status as S
from udfs.ocr import TEXT_LAYER, QualityChecks, page_request, parse_page_answer, read_text_layers

METHOD_AUTO, METHOD_TEXT_LAYER, METHOD_OLMOCR = "auto", "text_layer", "olmocr"
TEXT_ENGINES = ("pdfium", "pypdf", "pdftotext")

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


def ocr_settings(config: Config) -> dict:
    settings = config["ocr"]
    if settings["method"] not in (METHOD_AUTO, METHOD_TEXT_LAYER, METHOD_OLMOCR):
        raise ConfigError(f"ocr.method must be auto, text_layer or olmocr, got {settings['method']!r}")
    if settings["text_engine"] not in TEXT_ENGINES:
        raise ConfigError(f"ocr.text_engine must be one of {', '.join(TEXT_ENGINES)}, got {settings['text_engine']!r}")
    if settings["pages_per_task"] < 1 or settings["rotation_retries"] < 0:
        raise ConfigError("ocr.pages_per_task must be at least 1 and ocr.rotation_retries at least 0")
    return settings


# --- transforms (pure DataFrame -> DataFrame) ----------------------------------------------------------------------


def kept_books(books: DataFrame) -> DataFrame:
    return books.where(F.col("status") == S.KEPT).select("book_id", "source_uri", "page_count")


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


def read_pages(units: DataFrame, settings: dict) -> DataFrame:
    """One TEXT_LAYER row per page of the units, read on the executors (no text with ocr.method=olmocr)."""
    checks = QualityChecks(settings["min_chars"], settings["min_printable_ratio"], settings["min_letter_ratio"])
    body = partial(
        read_text_layers, engine=settings["text_engine"], checks=checks, read_text=settings["method"] != METHOD_OLMOCR
    )
    return units.mapInPandas(body, TEXT_LAYER)


def _goes_to_vision_model(method: str) -> Column:
    readable = F.col("read_error").isNull()
    if method == METHOD_OLMOCR:
        return readable
    if method == METHOD_AUTO:
        return readable & F.col("text_layer_problems").isNotNull()
    return F.lit(False)


def text_layer_page_rows(ctx: StageContext, read: DataFrame, settings: dict) -> DataFrame:
    """`pages` rows of the pages the vision model does not see: text-layer pages and unreadable files."""
    method = settings["method"]
    unreadable, poor = F.col("read_error").isNotNull(), F.col("text_layer_problems").isNotNull()
    kept = ~unreadable & ~poor
    text = F.when(kept, F.col("text_layer"))
    return table_rows(
        ctx,
        "pages",
        read.where(~_goes_to_vision_model(method)),
        text=text,
        char_count=F.length(text),
        method=F.lit(METHOD_OLMOCR if method == METHOD_OLMOCR else METHOD_TEXT_LAYER),
        model=F.when(kept, F.lit(settings["text_engine"])),
        status=F.when(kept, F.lit(S.KEPT)).otherwise(F.lit(S.FAILED)),
        reason=F.when(unreadable, F.lit(S.REASON_PDF_UNREADABLE))
        .when(poor, F.lit(S.REASON_TEXT_LAYER_POOR))
        .otherwise(F.lit(S.REASON_OK)),
        detail=F.coalesce(F.col("read_error"), F.col("text_layer_problems")),
    )


def vision_candidates(read: DataFrame, method: str) -> DataFrame:
    """Pages for the vision model, upright at first, with why they were sent as their detail."""
    if method == METHOD_AUTO:
        why = F.concat(F.lit("text layer: "), F.col("text_layer_problems"))
    else:
        why = F.lit("ocr.method=olmocr")
    return read.where(_goes_to_vision_model(method)).select(
        "book_id", "source_uri", "page_number", why.alias("detail"), F.lit(0).alias("rotation")
    )


def vision_page_rows(ctx: StageContext, answered: DataFrame, rotation_retries: int) -> DataFrame:
    """`pages` rows from the vision model's last answer for each page."""
    failure = llm_failure_reason(
        {
            STATUS_PROMPT_ERROR: S.REASON_OCR_RENDER_ERROR,
            STATUS_ENGINE_ERROR: S.REASON_OCR_ENGINE_ERROR,
            STATUS_PARSE_ERROR: S.REASON_OCR_UNPARSED,
        }
    )
    truncated = (F.col("llm_status") == STATUS_OK) & (F.col("llm_finish_reason") == "length")
    failure = F.coalesce(failure, F.when(truncated, F.lit(S.REASON_OCR_TRUNCATED)))
    answered_ok = (F.col("llm_status") == STATUS_OK) & ~truncated
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


def ask_vision_model(ctx: StageContext, candidates: DataFrame, settings: dict, persisted: list[DataFrame]) -> DataFrame:
    """Every candidate page with the model's last answer; a page answered "not upright" is asked again, turned."""
    build = partial(page_request, target_longest_image_dim=settings["target_longest_image_dim"])
    retries = settings["rotation_retries"]
    turned = (F.col("llm_status") == STATUS_OK) & ~F.col("is_rotation_valid") & (F.col("rotation_correction") != 0)
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
    settings = ocr_settings(ctx.config)
    pending = missing_pages(kept_books(ctx.read_input("books")), ctx.read_input("pages")).persist()
    persisted = [pending]
    try:
        pending_count = pending.count()
        if pending_count == 0:
            ctx.progress("every page of the kept books has a row already")
            return StageOutcome(0, 0, 0, 0, None)
        units = page_ranges(pending, settings["pages_per_task"]).persist()
        persisted.append(units)
        unit_count = units.count()
        ctx.progress(f"{pending_count} pages to read in {unit_count} units (ocr.pages_per_task={settings['pages_per_task']})")
        # round-robin over a fixed number of partitions: adaptive execution leaves it alone, so units stay spread
        spread = units.repartition(max(1, min(unit_count, default_parallelism(ctx.spark) * 4)))
        read = read_pages(spread, settings).persist()
        persisted.append(read)
        rows = text_layer_page_rows(ctx, read, settings)
        candidates = vision_candidates(read, settings["method"])
        vision_count = candidates.count()
        ocr_role = resolve_role(ctx.config, "ocr") if vision_count else None
        if ocr_role is not None and ocr_role.smoke:
            ctx.progress(f"{vision_count} pages need a vision model; the ocr role has the text-only smoke model: not asked")
            rows = rows.unionByName(no_vision_model_rows(ctx, candidates, ocr_role.model_id))
        elif vision_count:
            ctx.progress(f"{vision_count} pages go to the vision model (role ocr)")
            answered = ask_vision_model(ctx, candidates, settings, persisted)
            rows = rows.unionByName(vision_page_rows(ctx, answered, settings["rotation_retries"]))
        return commit_rows(ctx, "pages", rows, pending_count, update_matched=True)
    finally:
        for frame in persisted:
            frame.unpersist()


STAGE = Stage(
    name="ocr",
    inputs=("books", "pages"),
    output="pages",
    config_section="ocr",
    run=run,
    description="page text of every kept book: the PDF text layer, or olmOCR's vision model where it is unusable",
    roles=("ocr",),
)
