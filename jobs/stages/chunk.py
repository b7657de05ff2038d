"""Stage 4, chunk: each kept book's text cut into chunks of at most `chunk.max_tokens` tokens -> `chunks`.

Only books whose label keeps them (`book_labels`, status kept) are chunked. A book's text is its kept pages'
texts in page order joined by a blank line ("\\n\\n", udfs.chunking.BOOK_PAGE_SEPARATOR); failed and dropped pages
are not part of it (their rows in `pages` say why). The text is cut without overlap, each cut moved back to just
after the last newline (a hard cut if there is none), so a book's chunks in chunk_index order concatenate to
exactly its text. Each chunk records its first and last page, its token count (the chunk tokenized on its own)
and the tokenizer; chunk_id = sha256(book_id, chunk_index, text), stable across reruns.

Tokenizer (`chunk.tokenizer`): `cl100k` (tiktoken's cl100k_base, as in the authors' scripts) when its file is
available (TIKTOKEN_CACHE_DIR, or downloadable); otherwise, per `chunk.if_cl100k_missing`, the extractor model's
own tokenizer with a message, or an error. `extractor` always uses the tokenizer of the model the `extractor` role
resolves to (for an endpoint: the served model's name as a hub id). Anything else names a transformers tokenizer
(a local directory or a hub id). The choice is logged to the stage's MLflow run and written on every row.

Chunking runs on the executors, one book per group (groupBy(book_id).applyInPandas), with the tokenizer loaded
once per Python worker. A kept book without any kept page text gets one failed row (`no_text`). Incremental:
books that already have rows in `chunks` are not chunked again.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, StructField, StructType

from megascience.jobs.platform.config import Config, ConfigError
from megascience.jobs.platform.llm import resolve_role
from megascience.jobs.platform.settings import ChunkSettings
from megascience.jobs.platform.stage import Stage, StageContext, StageOutcome, commit_rows, table_rows
from megascience.schemas import status as S
from megascience.schemas.tables import CHUNKS
from megascience.udfs.chunking import (
    CHUNK_COLUMNS,
    KIND_TIKTOKEN,
    KIND_TRANSFORMERS,
    TokenizerSpec,
    chunk_books,
    count_tokens,
    load_tokenizer,
)

CL100K = TokenizerSpec(KIND_TIKTOKEN, "cl100k_base", "tiktoken:cl100k_base")

# what chunk_books returns: the table's columns but the run columns, all nullable (pandas decides)
CHUNK_ROWS = StructType([StructField(name, CHUNKS.schema[name].dataType, True) for name in CHUNK_COLUMNS])


class TokenizerUnavailableError(ConfigError):
    """The configured tokenizer cannot be loaded here; the message says what to change."""


def resolve_tokenizer(config: Config, progress: Callable[[str], None]) -> tuple[TokenizerSpec, str | None]:
    """The tokenizer to chunk with, loaded once here so a missing one fails now; and why cl100k was not used, if so."""
    settings = ChunkSettings.of(config)
    choice, fallback_note = settings.tokenizer, None
    if choice == "cl100k":
        try:
            load_tokenizer(CL100K)
            return CL100K, None
        except Exception as err:  # tiktoken raises requests' ConnectionError offline, ValueError on a damaged file
            fallback_note = (
                f"tiktoken's cl100k_base file is not available here ({type(err).__name__}); "
                "put it in TIKTOKEN_CACHE_DIR to use it"
            )
            if settings.if_cl100k_missing == "error":
                raise TokenizerUnavailableError(f"{fallback_note}, or set chunk.tokenizer=extractor") from None
            progress(f"{fallback_note}; chunking with the extractor model's tokenizer (chunk.if_cl100k_missing)")
    if choice in ("cl100k", "extractor"):
        role = resolve_role(config, "extractor")
        spec = TokenizerSpec(KIND_TRANSFORMERS, role.engine.model, f"transformers:{role.model_id}")
        what = f"the extractor model {spec.source!r}"
    else:
        spec = TokenizerSpec(KIND_TRANSFORMERS, choice, f"transformers:{choice}")
        what = f"{choice!r} (chunk.tokenizer)"
    try:
        load_tokenizer(spec)
    except Exception as err:  # transformers raises OSError, ValueError, ... for a model it cannot load
        raise TokenizerUnavailableError(
            f"cannot load the tokenizer of {what} ({type(err).__name__}: {err}); set chunk.tokenizer to a "
            "tokenizer directory or hub id that is available here, or make cl100k available"
        ) from None
    return spec, fallback_note


def token_count(texts: Column, spec: TokenizerSpec) -> Column:
    """Tokens of each text by the tokenizer of `spec`, counted on the executors (the mixture's answer lengths)."""

    @F.pandas_udf(IntegerType())
    def counted(values: pd.Series) -> pd.Series:
        return count_tokens(values, spec)

    return counted(texts)


# --- transforms (pure DataFrame -> DataFrame) ----------------------------------------------------------------------


def books_to_chunk(labels: DataFrame, chunks: DataFrame) -> DataFrame:
    """(book_id, subject) of the kept books that have no chunk rows yet."""
    kept = labels.where(F.col("status") == S.KEPT).select("book_id", "subject")
    return kept.join(chunks.select("book_id").distinct(), "book_id", "left_anti")


def book_pages(books: DataFrame, pages: DataFrame) -> DataFrame:
    """(book_id, subject, page_number, text) of the books' kept pages; a book without any has one row of nulls."""
    kept_pages = pages.where(F.col("status") == S.KEPT).select("book_id", "page_number", "text")
    return books.join(kept_pages, "book_id", "left")


def chunk_book_pages(pages: DataFrame, spec: TokenizerSpec, max_tokens: int) -> DataFrame:
    """CHUNK_ROWS of every book, one book per pandas group on the executors."""

    def chunk_group(group):  # a plain function: Spark cannot read the eval type off a functools.partial
        return chunk_books(group, spec, max_tokens)

    return pages.groupBy("book_id").applyInPandas(chunk_group, CHUNK_ROWS)


# --- the stage -----------------------------------------------------------------------------------------------------


def run(ctx: StageContext) -> StageOutcome:
    settings = ctx.settings
    books = books_to_chunk(ctx.read_input("book_labels"), ctx.read_input("chunks")).persist()
    try:
        book_count = books.count()
        if book_count == 0:
            ctx.progress("every kept book has chunks already")
            return StageOutcome(0, 0, 0, 0, None)
        spec, fallback_note = resolve_tokenizer(ctx.config, ctx.progress)
        used = {"chunk.tokenizer_used": spec.label}
        ctx.recorder.params({**used, "chunk.tokenizer_fallback": fallback_note} if fallback_note else used)
        ctx.progress(f"{book_count} books to chunk with {spec.label}, at most {settings.max_tokens} tokens a chunk")
        chunks = chunk_book_pages(book_pages(books, ctx.read_input("pages")), spec, settings.max_tokens)
        return commit_rows(ctx, "chunks", table_rows(ctx, "chunks", chunks), book_count)
    finally:
        books.unpersist()


STAGE = Stage(
    name="chunk",
    inputs=("book_labels", "pages", "chunks"),
    output="chunks",
    settings=ChunkSettings,
    run=run,
    description="each kept book's text in chunks of at most chunk.max_tokens tokens, cut at newlines, lossless",
)
