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
    folder = resources.files("conf").joinpath("sample", "books")
    entries = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".md")), key=lambda entry: entry.name
    )
    return [parse_book(entry.name[:-3], entry.read_text(encoding="utf-8")) for entry in entries]


def _font_path(bold: bool = False) -> str:
    # DejaVu Sans covers the Greek letters and math symbols of the books; matplotlib ships it.
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf", name)


def _new_pdf(source: BookSource):
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_auto_page_break(auto=True, margin=18)
    pdf.set_margins(20, 18, 20)
    pdf.add_font("body", "", _font_path())
    pdf.add_font("body", "B", _font_path(bold=True))
    pdf.set_title(source.header.get("title", source.slug))
    pdf.set_author(source.header.get("author", ""))
    pdf.set_subject(source.header.get("subject", ""))
    pdf.set_keywords(source.header.get("keywords", ""))
    pdf.set_creator("megascience sample corpus")
    return pdf


def _render_text_page(pdf, page: str) -> None:
    pdf.add_page()
    for line in page.splitlines():
        stripped = line.strip()
        if not stripped:
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
