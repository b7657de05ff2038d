"""udfs.pdf: the facts of good PDFs and a clear failure for every kind of bad file."""

import hashlib
import io

from fpdf import FPDF
from fpdf.enums import AccessPermission, EncryptionMethod
from pypdf import PdfWriter

from megascience.schemas import status as S
from megascience.udfs.pdf import clean_text, inspect_file, inspect_pdf


def small_pdf(pages: int = 1, **encryption) -> bytes:
    pdf = FPDF()
    pdf.set_title("A\x07 title")  # a control character, as real metadata sometimes holds
    pdf.set_font("helvetica", size=11)
    if encryption:
        pdf.set_encryption(encryption_method=EncryptionMethod.RC4, **encryption)
    for n in range(pages):
        pdf.add_page()
        pdf.cell(text=f"page {n}")
    return bytes(pdf.output())


def with_info(data: bytes, info: dict) -> bytes:
    writer = PdfWriter(clone_from=io.BytesIO(data))
    writer.add_metadata(info)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_good_pdf_facts():
    facts = inspect_pdf(with_info(small_pdf(3), {"/Rights": "CC BY 4.0 rights", "/License": "CC BY 4.0"}))
    assert (facts["status"], facts["reason"], facts["page_count"]) == (S.KEPT, S.REASON_OK, 3)
    assert facts["pdf_title"] == "A title"
    assert (facts["pdf_rights"], facts["pdf_license"]) == ("CC BY 4.0 rights", "CC BY 4.0")
    assert facts["encrypted"] is False and facts["text_extraction_allowed"] is True
    assert facts["pdf_metadata"]["/License"] == "CC BY 4.0"


def test_not_a_pdf():
    facts = inspect_pdf(b"<html>403</html>")
    assert (facts["status"], facts["reason"]) == (S.FAILED, S.REASON_NOT_PDF)
    assert "no %PDF- header" in facts["detail"]


def test_corrupt_and_truncated_pdfs():
    data = small_pdf(2)
    for broken in (b"%PDF-1.7\n" + bytes(range(256)) * 8, data[: len(data) // 3]):
        facts = inspect_pdf(broken)
        assert (facts["status"], facts["reason"]) == (S.FAILED, S.REASON_CORRUPT_PDF), facts
        assert facts["detail"]


def test_encrypted_with_a_user_password():
    facts = inspect_pdf(small_pdf(owner_password="o", user_password="u"))
    assert (facts["status"], facts["reason"], facts["encrypted"]) == (S.FAILED, S.REASON_ENCRYPTED_PDF, True)


def test_owner_password_only_opens_and_reports_permissions():
    no_copy = small_pdf(owner_password="o", permissions=AccessPermission.none())  # empty user password
    facts = inspect_pdf(no_copy)
    assert (facts["status"], facts["encrypted"], facts["page_count"]) == (S.KEPT, True, 1)
    assert facts["text_extraction_allowed"] is False


def test_zero_pages():
    out = io.BytesIO()
    PdfWriter().write(out)
    facts = inspect_pdf(out.getvalue())
    assert (facts["status"], facts["reason"], facts["page_count"]) == (S.FAILED, S.REASON_ZERO_PAGES, 0)


def test_inspect_file_hashes_bytes_and_bounds_size(tmp_path):
    data = small_pdf()
    path = tmp_path / "book.pdf"
    path.write_bytes(data)
    assert inspect_file(str(path), len(data), 1 << 20)["book_id"] == hashlib.sha256(data).hexdigest()
    too_big = inspect_file(str(path), len(data), 100)
    assert (too_big["status"], too_big["reason"]) == (S.FAILED, S.REASON_TOO_LARGE)
    missing = inspect_file(str(tmp_path / "gone.pdf"), 10, 1 << 20)
    assert (missing["status"], missing["reason"]) == (S.FAILED, S.REASON_UNREADABLE)
    assert len(missing["book_id"]) == 64


def test_clean_text_strips_control_characters_and_bad_bytes():
    assert clean_text(b"ab\xff\x00c") == "ab\ufffdc"
    assert clean_text("x" * 10_000) == "x" * 4000
