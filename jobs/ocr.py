"""Stage 3, ocr: every page of every kept book -> `pages` (runs before classify, which reads the first pages).

Two paths, and `method` on each row says which one made it:
- `text_layer`: the PDF's own text through olmOCR's anchor-text utilities (`ocr.text_engine`: pdfium, pypdf or
  pdftotext), newlines normalised. No model involved.
- `olmocr`: the page rendered with olmOCR's renderer, olmOCR's prompt, the `ocr` role called through the LLM layer
  with the image in the request, the answer parsed in olmOCR's format (front matter + natural text). A page the
  model says is not upright is rendered again turned by its `rotation_correction` and asked again, at most
  `ocr.rotation_retries` times; then it fails (`ocr_rotation_unresolved`).
`ocr.method: auto` takes the text layer of a page when it passes the quality checks (`ocr.min_chars`,
`ocr.min_printable_ratio`, `ocr.min_letter_ratio`) and sends the page to the vision model otherwise (the failed
checks are the row's `detail`); `text_layer` and `olmocr` force one path for every page.

Work is spread by page ranges: each kept book's missing pages are grouped into units of `ocr.pages_per_task`
pages, and the units are spread over the cluster, so a 1,000-page book keeps many tasks busy. Every page ends as
one row: a page that cannot be read, rendered, answered or parsed is a failed row with the reason and the rest of
the book carries on; a page the model finds blank is dropped. Incremental: pages already in `pages` (by book_id
and page_number, whatever their status) are not read again; rows are merged by that key.
"""

from __future__ import annotations

from functools import partial

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, IntegerType, StringType, StructField, StructType

from jobs.config import ConfigError
from jobs.llm import STATUS_ENGINE_ERROR, STATUS_OK, STATUS_PARSE_ERROR, STATUS_PROMPT_ERROR
from jobs.outcome import commit_rows, llm_failure_reason, table_rows
from jobs.stage import Stage, StageContext, StageOutcome
from schemas import status as S
from udfs.ocr import TEXT_LAYER_COLUMNS, QualityChecks, page_request, parse_page_answer, read_text_layers

METHOD_AUTO, METHOD_TEXT_LAYER, METHOD_OLMOCR = "auto", "text_layer", "olmocr"
TEXT_ENGINES = ("pdfium", "pypdf", "pdftotext")

TEXT_LAYER = StructType(
    [
        StructField("book_id", StringType()),
        StructField("source_uri", StringType()),
        StructField("page_number", IntegerType()),
        StructField("text_layer", StringType()),
        StructField("text_layer_problems", StringType()),
        StructField("read_error", StringType()),
    ]
)
assert TEXT_LAYER.fieldNames() == TEXT_LAYER_COLUMNS

# olmOCR's PageResponse fields, as parse_page_answer returns them
PAGE_ANSWER = StructType(
    [
        StructField("natural_text", StringType()),
        StructField("is_rotation_valid", StringType().__class__() if False else __import__("pyspark.sql.types", fromlist=["BooleanType"]).BooleanType()),
    ]
)
