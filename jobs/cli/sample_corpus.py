"""The bundled sample corpus: original textbook-style books rendered to PDFs, byte-for-byte reproducibly.

Sources live in conf/sample/books/*.md (a `key: value` header between `---` lines, then text; `<<<PAGE>>>` forces a
page break). Besides one born-digital book per subject, the corpus holds the cases ingest and OCR must handle: an
image-only (scanned) book, a book whose rights metadata excludes it, an encrypted PDF, a corrupt PDF and a file
that is not a PDF at all. Fixed dates and content-derived file ids make every build produce identical bytes, so
book ids are stable across machines.
"""

from __future__ import annotations

import datetime
import io
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

PAGE_BREAK = "<<<PAGE>>>"
FIXED_DATE = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
SCANNED_BOOK = "scanned_physics_notes"
RESTRICTED_BOOK = "restricted_statistics"


@dataclass(frozen=True)
class BookSource:
    slug: str
    header: dict[str, str]
    pages: list[str]


def parse_book(slug: str, text: str) -> BookSource:
    """Split a book source into its header fields and its pages."""
    if not text.startswith("---\n"):
        raise ValueError(f"{slug}.md: must start with a '---' header block")
    header_text, _, body = text[4:].partition("\n---\n")
    header = {}
    for line in header_text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            header[key.strip()] = value.strip()
    pages = [page.strip("\n") for page in body.split(PAGE_BREAK)]
    return BookSource(slug, header, [page for page in pages if page.strip()])


def book_sources() -> list[BookSource]:
    folder = resources.files("megascience.conf").joinpath("sample", "books")
    entries = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".md")), key=lambda entry: entry.name
    )
    return [parse_book(entry.name[:-3], entry.read_text(encoding="utf-8")) for entry in entries]


def _font_path(bold: bool = False, name: str | None = None) -> str:
    # DejaVu Sans covers the Greek letters and math symbols of the books; STIX (for typeset formulas) has the math
    # italic letters. matplotlib ships both.
    import matplotlib

    name = name or ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf", name)


def _new_pdf(source: BookSource):
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_auto_page_break(auto=True, margin=18)
    pdf.set_margins(20, 18, 20)
    pdf.add_font("body", "", _font_path())
    pdf.add_font("body", "B", _font_path(bold=True))
    pdf.add_font("math", "", _font_path(name="STIXGeneral.ttf"))
    pdf.set_title(source.header.get("title", source.slug))
    pdf.set_author(source.header.get("author", ""))
    pdf.set_subject(source.header.get("subject", ""))
    pdf.set_keywords(source.header.get("keywords", ""))
    pdf.set_creator("megascience sample corpus")
    return pdf


FORMULA_PREFIX = "$$ "  # a line of a book source holding a display formula (see _render_formula)
_FORMULA_TOKEN = re.compile(r"\\frac\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}|([\^_])\{([^{}]*)\}|\\([a-z]+)|(.)")
_FORMULA_WORDS = {"int": "\u222b", "sum": "\u2211", "pi": "\U0001d70b", "lim": "lim", "sqrt": "\u221a"}


def _math_italic(text: str) -> str:
    """Letters as the math italic glyphs a math font prints (h has its own code point), minus signs as U+2212."""
    def glyph(c: str) -> str:
        if c == "h":
            return "\u210e"
        if "a" <= c <= "z":
            return chr(0x1D44E + ord(c) - ord("a"))
        if "A" <= c <= "Z":
            return chr(0x1D434 + ord(c) - ord("A"))
        return "\u2212" if c == "-" else c

    return "".join(glyph(c) for c in text)


def _render_formula(pdf, formula: str) -> None:
    """A display formula laid out as TeX prints one: exponents and limits raised or lowered in a smaller size,
    fractions stacked over a rule, letters in math italic. Every piece is placed on its own, so the text layer
    reads it back in fragments, as it does from real typeset books."""
    pdf.ln(4)
    baseline, x = pdf.get_y() + 6, pdf.l_margin + 12

    def put(text: str, dx: float, dy: float, size: float) -> float:
        pdf.set_font("math", "", size)
        pdf.text(x + dx, baseline + dy, text)
        return pdf.get_string_width(text)

    for frac_num, frac_den, script, script_text, word, char in _FORMULA_TOKEN.findall(formula):
        if frac_num or frac_den:
            num, den = _math_italic(re.sub(r"[{}^]", "", frac_num)), _math_italic(re.sub(r"[{}^]", "", frac_den))
            pdf.set_font("math", "", 11)
            width = max(pdf.get_string_width(num), pdf.get_string_width(den))
            put(num, (width - pdf.get_string_width(num)) / 2, -3.2, 11)
            put(den, (width - pdf.get_string_width(den)) / 2, 4.2, 11)
            pdf.line(x, baseline - 1.2, x + width, baseline - 1.2)
            x += width + 1.5
        elif script:
            script_text = re.sub(r"\\([a-z]+)", lambda m: _FORMULA_WORDS.get(m.group(1), m.group(1)), script_text)
            x += put(_math_italic(script_text), 0.2, -2.6 if script == "^" else 1.8, 7.5) + 0.4
        elif word:
            x += put(_FORMULA_WORDS.get(word, word), 0, 0, 13 if word in ("int", "sum") else 11) + 0.8
        elif char.strip():
            x += put(_math_italic(char), 0, 0, 11) + (1.2 if char in "=+-" else 0.2)
        else:
            x += 1.0
    pdf.set_y(baseline + 6)


def _render_text_page(pdf, page: str) -> None:
    pdf.add_page()
    for line in page.splitlines():
        stripped = line.strip()
        if stripped.startswith(FORMULA_PREFIX.strip()):
            _render_formula(pdf, stripped[len(FORMULA_PREFIX.strip()):].strip())
        elif not stripped:
            pdf.ln(2.5)
        elif stripped.startswith("## "):
            pdf.set_font("body", "B", 12.5)
            pdf.multi_cell(0, 7, stripped[3:], new_x="LMARGIN", new_y="NEXT")
        elif stripped.startswith("# "):
            pdf.set_font("body", "B", 15)
            pdf.multi_cell(0, 8, stripped[2:], new_x="LMARGIN", new_y="NEXT")
        else:
            pdf.set_font("body", "", 10.5)
            pdf.multi_cell(0, 5.4, stripped, new_x="LMARGIN", new_y="NEXT")


def _page_image(page: str):
    """A page of text drawn as a grey-scale 'scan' (no text layer)."""
    from PIL import Image, ImageDraw, ImageFont

    width, height, margin = 1240, 1754, 110  # A4 at 150 dpi
    image = Image.new("L", (width, height), 250)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(_font_path(), 30)
    bold = ImageFont.truetype(_font_path(bold=True), 36)
    y = margin
    for line in page.splitlines():
        is_heading = line.startswith("#")
        draw.text((margin, y), line.lstrip("# "), fill=25, font=bold if is_heading else font)
        y += 52 if is_heading else 42
    return image


def _with_info(pdf_bytes: bytes, extra: dict[str, str]) -> bytes:
    """Add Info-dictionary entries fpdf2 has no setter for (/Rights, /License)."""
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=io.BytesIO(pdf_bytes))
    writer.add_metadata({f"/{key.capitalize()}": value for key, value in extra.items() if value})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def render_book(source: BookSource, scanned: bool = False, user_password: str | None = None) -> bytes:
    pdf = _new_pdf(source)
    if user_password:
        from fpdf.enums import EncryptionMethod

        pdf.set_encryption(owner_password="sample-owner", user_password=user_password, encryption_method=EncryptionMethod.RC4)
    for page in source.pages:
        if scanned:
            pdf.add_page()
            buffer = io.BytesIO()
            _page_image(page).save(buffer, format="PNG")
            pdf.image(buffer, x=0, y=0, w=pdf.w, h=pdf.h)
        else:
            _render_text_page(pdf, page)
    data = bytes(pdf.output())
    if user_password:
        return data  # rewriting would need the password; an encrypted file's metadata is unreadable anyway
    return _with_info(data, {key: source.header.get(key, "") for key in ("rights", "license")})


def corrupt_copy(pdf_bytes: bytes) -> bytes:
    """A PDF cut short and overwritten mid-file, as a failed download leaves it."""
    cut = len(pdf_bytes) * 2 // 5
    return pdf_bytes[:cut] + bytes((i * 37) % 256 for i in range(2048))


NOT_A_PDF = b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body>Access denied.</body></html>\n"


def build_sample_corpus(directory: str | os.PathLike) -> list[Path]:
    """Write every sample file into `directory`; returns the paths written, sorted."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    sources = book_sources()
    for source in sources:
        files[f"{source.slug}.pdf"] = render_book(source, scanned=source.slug == SCANNED_BOOK)
    first_book = next(s for s in sources if s.slug not in (SCANNED_BOOK, RESTRICTED_BOOK))
    files["encrypted_solutions_manual.pdf"] = render_book(
        BookSource("encrypted_solutions_manual", {"title": "Solutions manual (password protected)"}, first_book.pages[:1]),
        user_password="sample-user",
    )
    files["corrupt_chapter.pdf"] = corrupt_copy(files[f"{first_book.slug}.pdf"])
    files["lecture_slides.pdf"] = NOT_A_PDF
    written = []
    for name, data in sorted(files.items()):
        path = target / name
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        written.append(path)
    return written
