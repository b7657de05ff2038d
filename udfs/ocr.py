"""Executor side of the ocr stage, built on olmOCR's own utilities (the `olmocr` base package, no GPU extras).

- The text layer of a page: `olmocr.prompts.anchor.get_anchor_text` (pdfium, pypdf or poppler's pdftotext).
- The quality checks that send a page to the vision model instead (pure: `text_layer_problems`).
- The vision request: the page rendered by `olmocr.data.renderpdf.render_pdf_to_base64png` (poppler's pdftoppm),
  turned by the rotation the model asked for, with olmOCR's prompt (`build_no_anchoring_v4_yaml_prompt`), as an
  OpenAI chat message with the image as a PNG data URL — the request `olmocr.pipeline.build_page_query` builds.
  That module is not imported here: importing it creates boto3 clients and attaches handlers to the `vllm` logger
  of the worker process, where our vLLM engine runs.
- The answer: olmOCR's format (YAML front matter, then the page's natural text) parsed with olmOCR's
  `FrontMatterParser` into `PageResponse`'s fields (pure: `parse_page_answer`).
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import io
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

import pandas as pd
from pyspark.sql.types import IntegerType, StringType, StructField, StructType

from megascience.udfs.llm_calls import ParseError

# olmOCR's rotation of a page image (olmocr.pipeline.build_page_query): PIL transposes by the rotation asked for.
_TRANSPOSE_BY_ROTATION = {90: "ROTATE_90", 180: "ROTATE_180", 270: "ROTATE_270"}
_REPLACEMENT_CHAR = "\ufffd"
_REMOTE_COPIES_KEPT = 4  # remote books cached per worker while their pages are read and rendered


@dataclass(frozen=True)
class QualityChecks:
    min_chars: int
    min_printable_ratio: float
    min_letter_ratio: float
    math_min_lines: int = 0  # 0: no flattened-math check
    math_min_line_ratio: float = 1.0
    blank_max_ink_ratio: float = 0.0  # a page without text whose render has at most this share of ink is blank


# Glyphs only math fonts print: the Mathematical Alphanumeric Symbols block, Planck's h, the letterlike math
# symbols, and the private-use area (TeX's symbol fonts often map there).
_MATH_FONT_GLYPHS = re.compile("[\U0001d400-\U0001d7ff\u210e\u2102\u2115\u2119\u211a\u211d\u2124\ue000-\uf8ff]")
_FRAGMENT_MAX_CHARS = 4
_FRAGMENT_MARKS = re.compile(r"[\d=+\-\u2212*/^_()\[\]|<>\u2200-\u22ff\u0391-\u03c9']")


def formula_fragment_line(line: str) -> bool:
    """A line a flattened formula leaves: a few characters holding a digit, an operator, a bracket, a Greek or a
    single letter ("2", "= 6", "n-1", "dx" in math italic); or any line holding math-font glyphs. Prose, headings
    and numbered section titles ("1.6 Exercises") are longer than that."""
    visible = "".join(line.split())
    if not visible:
        return False
    if _MATH_FONT_GLYPHS.search(visible):
        return True
    return len(visible) <= _FRAGMENT_MAX_CHARS and (len(visible) == 1 or bool(_FRAGMENT_MARKS.search(visible)))


def flattened_math_problem(text: str, checks: QualityChecks) -> str | None:
    """Why the text layer looks like typeset math lost in extraction (exponents, limits and fractions as fragment
    lines, math-font glyphs), or None. Such pages go to olmOCR, which writes the equations as LaTeX."""
    if checks.math_min_lines <= 0:
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    suspect = sum(1 for line in lines if formula_fragment_line(line))
    if lines and suspect >= checks.math_min_lines and suspect / len(lines) >= checks.math_min_line_ratio:
        return (
            f"flattened math: {suspect} of {len(lines)} lines are formula fragments or math-font glyphs "
            f"(ocr.math_min_lines={checks.math_min_lines}, ocr.math_min_line_ratio={checks.math_min_line_ratio})"
        )
    return None


def clean_text_layer(text: str) -> str:
    """Newlines as "\\n" (pdfium gives "\\r\\n") and no form feeds (pdftotext ends each page with one)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "")


_CONTROL_CHARACTERS = dict.fromkeys(c for c in range(0x20) if chr(c) not in "\n\t") | dict.fromkeys(range(0x7F, 0xA0))


def without_control_characters(text: str) -> str:
    """The text without C0/C1 control characters but newline and tab (a font encoding can map glyphs to them)."""
    return text.translate(_CONTROL_CHARACTERS)


def text_layer_problems(text: str, checks: QualityChecks) -> list[str]:
    """Why a page's text layer is not good enough to use (empty when it is)."""
    visible = [c for c in text if not c.isspace()]
    problems = []
    if len(visible) < checks.min_chars:
        problems.append(f"{len(visible)} non-space characters < ocr.min_chars={checks.min_chars}")
    if text:
        printable = sum(1 for c in text if (c.isprintable() or c in "\n\t") and c != _REPLACEMENT_CHAR)
        ratio = printable / len(text)
        if ratio < checks.min_printable_ratio:
            problems.append(f"printable ratio {ratio:.2f} < ocr.min_printable_ratio={checks.min_printable_ratio}")
    if visible:
        ratio = sum(1 for c in visible if c.isalpha()) / len(visible)
        if ratio < checks.min_letter_ratio:
            problems.append(f"letter ratio {ratio:.2f} < ocr.min_letter_ratio={checks.min_letter_ratio}")
    math = flattened_math_problem(text, checks)
    return problems + ([math] if math else [])


def page_ink_ratio(document, page_number: int, longest_side_px: int = 128) -> float:
    """Share of pixels of a small grey render that differ clearly from the page's background (median) level:
    0.0 for an empty or uniformly scanned page, about 0.1 for a page of text. `document`: a pypdfium2 PdfDocument."""
    import numpy as np

    page = document[page_number - 1]
    try:
        if not any(True for _ in page.get_objects()):  # nothing is drawn at all
            return 0.0
        width, height = page.get_size()
        bitmap = page.render(scale=longest_side_px / max(width, height, 1.0), grayscale=True)
        pixels = np.asarray(bitmap.to_pil().convert("L"), dtype=np.int16)
    finally:
        page.close()
    return float((np.abs(pixels - np.median(pixels)) > 32).mean())


# --- the book's file, on this worker ----------------------------------------------------------------------------

_copies: OrderedDict[str, str] = OrderedDict()
_copies_dir: str | None = None


def _forget_copies() -> None:
    if _copies_dir:
        shutil.rmtree(_copies_dir, ignore_errors=True)


def local_pdf(uri: str) -> str:
    """A local path of the book: the file itself, or a copy of a remote one (kept for the next pages of the book)."""
    import fsspec

    global _copies_dir
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.protocol in ("file", ("file", "local")):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{uri} no longer exists")
        return path
    if uri in _copies:
        _copies.move_to_end(uri)
        return _copies[uri]
    if _copies_dir is None:
        _copies_dir = tempfile.mkdtemp(prefix="megascience-ocr-")
        atexit.register(_forget_copies)
    target = os.path.join(_copies_dir, hashlib.sha256(uri.encode("utf-8")).hexdigest() + ".pdf")
    fs.get_file(path, target)
    _copies[uri] = target
    while len(_copies) > _REMOTE_COPIES_KEPT:
        os.remove(_copies.popitem(last=False)[1])
    return target


# --- the text layer (mapInPandas body) ----------------------------------------------------------------------------

# One row per page read (read_text_layers' output).
TEXT_LAYER = StructType(
    [
        StructField("book_id", StringType()),
        StructField("source_uri", StringType()),
        StructField("page_number", IntegerType()),
        StructField("text_layer", StringType()),
        StructField("text_layer_problems", StringType()),  # the failed quality checks, "; "-joined
        StructField("read_error", StringType()),  # the book's file could not be opened
        StructField("blank", StringType()),  # why the page is blank (no text layer, nothing drawn): no model sees it
    ]
)


def read_text_layers(batches: Iterator[pd.DataFrame], engine: str, checks: QualityChecks) -> Iterator[pd.DataFrame]:
    """(book_id, source_uri, page_numbers) work units -> one row per page with its text layer and its problems.

    `read_error` is set on every page of a unit whose file cannot be opened; a page whose text layer cannot be read
    gets that as a problem (so it can still go to the vision model). A page with no text layer and (almost) no ink
    in a small render is `blank`.
    """
    for batch in batches:
        rows = []
        for unit in batch.to_dict("records"):
            pages = [int(p) for p in unit["page_numbers"]]
            try:
                path = local_pdf(unit["source_uri"])
            except Exception as err:  # moved, deleted or unreachable since ingest: every page says so
                error = f"{type(err).__name__}: {err}"
                rows += [(unit["book_id"], unit["source_uri"], page, None, None, error, None) for page in pages]
                continue
            document = _open_document(path)
            try:
                for page in pages:
                    text, problems, blank = _read_page(path, document, page, engine, checks)
                    rows.append((unit["book_id"], unit["source_uri"], page, text, "; ".join(problems) or None, None, blank))
            finally:
                if document is not None:
                    document.close()
        yield pd.DataFrame(rows, columns=TEXT_LAYER.fieldNames())


def _open_document(path: str):
    """The book as a pypdfium2 document for the blank check, or None if pdfium cannot open it (the text-layer
    path then reports the damage page by page)."""
    import pypdfium2

    try:
        return pypdfium2.PdfDocument(path)
    except Exception:  # pdfium refuses what pypdf repaired at ingest: no blank check, never a lost page
        return None


def _read_page(path: str, document, page: int, engine: str, checks: QualityChecks) -> tuple[str | None, list[str], str | None]:
    """(text, problems, blank) of one page: its cleaned text layer, the failed quality checks, why it is blank."""
    from olmocr.prompts.anchor import get_anchor_text

    try:
        layer = clean_text_layer(get_anchor_text(path, page, engine))
    except Exception as err:  # a damaged page must not stop the rest of the book
        return None, [f"text layer unreadable: {type(err).__name__}: {err}"], None
    problems = text_layer_problems(layer, checks)  # control characters count against the layer here
    text = without_control_characters(layer)  # ... but never reach the pages table
    if document is None or text.strip():
        return text, problems, None
    try:
        ink = page_ink_ratio(document, page)
    except Exception:  # an unrenderable page is the vision path's to report
        return text, problems, None
    if ink > checks.blank_max_ink_ratio:
        return text, problems, None
    return text, problems, f"no text layer, ink on {ink:.4f} of a small render <= ocr.blank_max_ink_ratio={checks.blank_max_ink_ratio}"


# --- the vision model's request and answer ------------------------------------------------------------------------


def _turned(image_base64: str, rotation: int) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(image_base64))) as image:
        turned = image.transpose(getattr(Image.Transpose, _TRANSPOSE_BY_ROTATION[rotation]))
        buffer = io.BytesIO()
        turned.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def page_request(row: dict[str, Any], target_longest_image_dim: int) -> list[dict[str, Any]]:
    """olmOCR's chat request for one page (`row`: source_uri, page_number, rotation)."""
    from olmocr.data.renderpdf import render_pdf_to_base64png
    from olmocr.prompts import build_no_anchoring_v4_yaml_prompt

    rotation = int(row["rotation"])
    if rotation not in (0, *_TRANSPOSE_BY_ROTATION):
        raise ValueError(f"rotation must be 0, 90, 180 or 270, got {rotation}")
    path = local_pdf(row["source_uri"])
    image = render_pdf_to_base64png(path, int(row["page_number"]), target_longest_image_dim=target_longest_image_dim)
    if rotation:
        image = _turned(image, rotation)
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": build_no_anchoring_v4_yaml_prompt()},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
            ],
        }
    ]


def parse_page_answer(text: str | None, finish_reason: str | None = None) -> dict[str, Any]:
    """olmOCR's answer (front matter + natural text) -> PageResponse's fields; ParseError if it is not that format.

    (The parse contract's finish_reason: a page cut off at max_tokens is failed by the ocr stage, which sees it.)"""
    from olmocr.prompts import PageResponse
    from olmocr.train.front_matter import FrontMatterParser

    if not text or not text.strip():
        raise ParseError("empty answer")
    parser = FrontMatterParser(front_matter_class=PageResponse)
    front_matter, natural_text = parser._extract_front_matter_and_text(text)
    if not isinstance(front_matter, dict) or not front_matter:
        snippet = text.strip()[:80].replace("\n", " ")
        raise ParseError(f"no olmOCR front matter (the answer starts {snippet!r})")
    try:
        page = parser._parse_front_matter(front_matter, natural_text)
    except (ValueError, TypeError) as err:
        raise ParseError(f"olmOCR front matter: {err}") from None
    return {
        "natural_text": page.natural_text,
        "is_rotation_valid": page.is_rotation_valid,
        "rotation_correction": page.rotation_correction,
        "primary_language": page.primary_language,
        "is_table": page.is_table,
        "is_diagram": page.is_diagram,
    }
