"""Executor side of the chunk stage: lossless token-bounded chunking of one book's text.

A book's text is its kept pages' texts in page order joined by BOOK_PAGE_SEPARATOR (a blank line). It is cut into
consecutive pieces of at most `max_tokens` tokens each, counted by tokenizing the piece on its own: from the
current position take as much as fits, then move the cut back to just after the last newline in that span (the
newline stays with the earlier chunk; a newline that would be the chunk's first character does not count), or cut
hard where the tokens run out if there is none. Nothing is added, trimmed or overlapped, so the chunks in order
concatenate to exactly the book's text.

Tokenizers are loaded once per Python worker (module-global cache) from a `TokenizerSpec` resolved on the driver.
"""

from __future__ import annotations

import hashlib
import sys
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Protocol

import pandas as pd

from megascience.schemas import status as S

BOOK_PAGE_SEPARATOR = "\n\n"
KIND_TIKTOKEN, KIND_TRANSFORMERS = "tiktoken", "transformers"


@dataclass(frozen=True)
class TokenizerSpec:
    kind: str  # tiktoken | transformers
    source: str  # a tiktoken encoding name, or a model directory / hub id
    label: str  # what chunk rows and lineage record, e.g. tiktoken:cl100k_base


class Tokenizer(Protocol):
    def token_starts(self, text: str) -> list[int]:
        """The character offset where each token of `text` starts, non-decreasing."""

    def count(self, text: str) -> int:
        """How many tokens `text` is on its own (no special tokens)."""


class TiktokenTokenizer:
    def __init__(self, encoding):
        self.encoding = encoding

    def token_starts(self, text: str) -> list[int]:
        _, offsets = self.encoding.decode_with_offsets(self.encoding.encode_ordinary(text))
        return list(accumulate(offsets, max))

    def count(self, text: str) -> int:
        return len(self.encoding.encode_ordinary(text))


class TransformersTokenizer:
    def __init__(self, tokenizer):
        if not tokenizer.is_fast:
            raise ValueError(f"{tokenizer.name_or_path}: chunking needs a fast tokenizer (character offsets)")
        tokenizer.model_max_length = sys.maxsize  # whole books are tokenized here; silence the long-input warning
        self.tokenizer = tokenizer

    def token_starts(self, text: str) -> list[int]:
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return list(accumulate((start for start, _ in offsets), max))

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


_TOKENIZERS: dict[TokenizerSpec, Tokenizer] = {}


def load_tokenizer(spec: TokenizerSpec) -> Tokenizer:
    """The worker's tokenizer for `spec`, loaded on first use."""
    if spec not in _TOKENIZERS:
        if spec.kind == KIND_TIKTOKEN:
            import tiktoken

            _TOKENIZERS[spec] = TiktokenTokenizer(tiktoken.get_encoding(spec.source))
        elif spec.kind == KIND_TRANSFORMERS:
            from transformers import AutoTokenizer

            _TOKENIZERS[spec] = TransformersTokenizer(AutoTokenizer.from_pretrained(spec.source))
        else:
            raise ValueError(f"unknown tokenizer kind {spec.kind!r}")
    return _TOKENIZERS[spec]


def count_tokens(texts: pd.Series, spec: TokenizerSpec) -> pd.Series:
    """Tokens of each text on its own (null stays null): the body of a pandas UDF over answers."""
    tokenizer = load_tokenizer(spec)
    return texts.map(lambda text: None if text is None else tokenizer.count(text)).astype("Int32")


class ChunkingError(ValueError):
    """Text that cannot be cut under the token limit (a single character over it)."""


def chunk_spans(text: str, tokenizer: Tokenizer, max_tokens: int) -> list[tuple[int, int, int]]:
    """(start, end, token count) of each chunk of `text`; the spans tile the text exactly."""
    starts = tokenizer.token_starts(text)
    spans: list[tuple[int, int, int]] = []
    position = 0
    while position < len(text):
        first_token = bisect_left(starts, position)
        budget = max_tokens
        while True:
            limit = first_token + budget
            hard_end = max(starts[limit] if limit < len(starts) else len(text), position + 1)
            end = hard_end
            if hard_end < len(text):
                newline = text.rfind("\n", position + 1, hard_end)
                end = newline + 1 if newline != -1 else hard_end
            count = tokenizer.count(text[position:end])
            if count <= max_tokens:
                break
            # a piece can tokenize longer alone than inside the whole text: give back the excess and look again
            budget -= count - max_tokens
            if budget < 1:
                raise ChunkingError(f"the text at character {position} does not fit in {max_tokens} tokens")
        spans.append((position, end, count))
        position = end
    return spans


CHUNK_COLUMNS = [
    "chunk_id",
    "book_id",
    "subject",
    "chunk_index",
    "first_page",
    "last_page",
    "token_count",
    "text",
    "tokenizer",
    "status",
    "reason",
    "detail",
]


def chunk_id(book_id: str, index: int, text: str) -> str:
    """Content-derived: the same book text cut the same way gives the same ids on every run."""
    return hashlib.sha256(f"{book_id}\n{index}\n{text}".encode("utf-8")).hexdigest()


def chunk_book(
    book_id: str, subject: str | None, pages: list[tuple[int, str]], tokenizer: Tokenizer, max_tokens: int, label: str
) -> list[dict[str, Any]]:
    """The chunk rows of one book from its kept (page_number, text) pages; one failed row if it yields none."""
    pages = sorted(pages)
    text = BOOK_PAGE_SEPARATOR.join(page_text for _, page_text in pages)
    page_starts = list(accumulate((len(t) + len(BOOK_PAGE_SEPARATOR) for _, t in pages[:-1]), initial=0))
    base = {**dict.fromkeys(CHUNK_COLUMNS), "book_id": book_id, "subject": subject, "tokenizer": label}
    failed = {**base, "chunk_id": chunk_id(book_id, -1, ""), "status": S.FAILED}
    try:
        spans = chunk_spans(text, tokenizer, max_tokens)
    except Exception as err:  # one book's bad text must not fail the others
        return [{**failed, "reason": S.REASON_CHUNK_ERROR, "detail": f"{type(err).__name__}: {err}"}]
    if not spans:
        detail = "no kept page with text (see pages)" if not pages else "the kept pages hold no text"
        return [{**failed, "reason": S.REASON_NO_TEXT, "detail": detail}]
    rows = []
    for index, (start, end, count) in enumerate(spans):
        piece = text[start:end]
        rows.append(
            {
                **base,
                "chunk_id": chunk_id(book_id, index, piece),
                "chunk_index": index,
                # a separator belongs to the page before it
                "first_page": pages[bisect_right(page_starts, start) - 1][0],
                "last_page": pages[bisect_right(page_starts, end - 1) - 1][0],
                "token_count": count,
                "text": piece,
                "status": S.KEPT,
                "reason": S.REASON_OK,
                "detail": None,
            }
        )
    return rows




def chunk_books(pages: pd.DataFrame, spec: TokenizerSpec, max_tokens: int) -> pd.DataFrame:
    """applyInPandas body: all (book_id, subject, page_number, text) rows of one book -> its chunk rows.

    A book without kept pages arrives as one row with a null page_number.
    """
    present = pages[pages["page_number"].notna()]
    rows = chunk_book(
        pages["book_id"].iloc[0],
        pages["subject"].iloc[0],
        [(int(p), t or "") for p, t in zip(present["page_number"], present["text"])],
        load_tokenizer(spec),
        max_tokens,
        spec.label,
    )
    # object columns keep None as None (a float NaN cannot become a string or an int column)
    return pd.DataFrame(rows, columns=CHUNK_COLUMNS, dtype=object)
