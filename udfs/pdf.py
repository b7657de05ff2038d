"""PDF facts read on executors: size, page count, metadata, encryption and permissions, or why the file is unusable.

`inspect_pdf` is a pure function of the file's bytes; `inspect_files` is the mapInPandas body that reads each
file (local path or fsspec URI) and hashes it, so no PDF bytes ever travel through the driver.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from typing import Any, Iterator

import pandas as pd

from megascience.schemas import status as S

_PDF_MAGIC_WINDOW = 1024  # readers accept the %PDF- header anywhere in the first KB
_MAX_FIELD_CHARS = 4000
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# Info-dictionary keys (and XMP fields) that carry rights or licence statements in the wild.
_RIGHTS_KEYS = ("/Rights", "/Copyright", "/Copyright Notice", "/xmpRights:UsageTerms")
_LICENSE_KEYS = ("/License", "/Licence", "/license")


def clean_text(value: Any) -> str:
    """Metadata as safe UTF-8 text: control characters removed, length bounded."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return _CONTROL_CHARS.sub("", str(value)).strip()[:_MAX_FIELD_CHARS]


def _first(metadata: dict[str, str], keys: tuple[str, ...]) -> str | None:
    return next((metadata[key] for key in keys if metadata.get(key)), None)


def _xmp_rights(reader) -> str | None:
    try:
        xmp = reader.xmp_metadata
        rights = xmp.dc_rights if xmp is not None else None
    except Exception:  # malformed XMP is common and never fatal: the Info dictionary still counts
        return None
    if isinstance(rights, dict):
        return clean_text(" ".join(str(v) for v in rights.values())) or None
    return clean_text(rights) if rights else None


def _failure(reason: str, detail: str) -> dict[str, Any]:
    return {"status": S.FAILED, "reason": reason, "detail": clean_text(detail)}


def inspect_pdf(data: bytes) -> dict[str, Any]:
    """Page count, metadata and permissions of a PDF, or a failed status with the reason."""
    from pypdf import PdfReader
    from pypdf.constants import UserAccessPermissions
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    if b"%PDF-" not in data[:_PDF_MAGIC_WINDOW]:
        head = data[:16].decode("latin-1")
        return _failure(S.REASON_NOT_PDF, f"no %PDF- header in the first {_PDF_MAGIC_WINDOW} bytes (starts {head!r})")
    pypdf_logger = logging.getLogger("pypdf")
    previous_level = pypdf_logger.level
    pypdf_logger.setLevel(logging.ERROR)  # pypdf warns on every repairable defect; the row records what matters
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        encrypted = bool(reader.is_encrypted)
        if encrypted and not reader.decrypt(""):
            return {**_failure(S.REASON_ENCRYPTED_PDF, "encrypted with a user password"), "encrypted": True}
        page_count = len(reader.pages)
        info = reader.metadata or {}
        metadata = {clean_text(k): clean_text(v) for k, v in info.items() if v is not None}
        extraction_allowed = True
        if encrypted:
            permissions = reader.user_access_permissions
            extraction_allowed = bool(permissions is None or permissions & UserAccessPermissions.EXTRACT)
        xmp_rights = _xmp_rights(reader)
    except FileNotDecryptedError as err:
        return {**_failure(S.REASON_ENCRYPTED_PDF, str(err)), "encrypted": True}
    except (PdfReadError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError, OSError) as err:
        return _failure(S.REASON_CORRUPT_PDF, f"{type(err).__name__}: {err}")
    finally:
        pypdf_logger.setLevel(previous_level)
    if xmp_rights:
        metadata["xmp:dc:rights"] = xmp_rights
    facts = {
        "page_count": page_count,
        "encrypted": encrypted,
        "text_extraction_allowed": extraction_allowed,
        "pdf_title": metadata.get("/Title") or None,
        "pdf_author": metadata.get("/Author") or None,
        "pdf_subject": metadata.get("/Subject") or None,
        "pdf_keywords": metadata.get("/Keywords") or None,
        "pdf_rights": _first(metadata, _RIGHTS_KEYS) or xmp_rights,
        "pdf_license": _first(metadata, _LICENSE_KEYS),
        "pdf_metadata": metadata,
    }
    if page_count == 0:
        return {**facts, **_failure(S.REASON_ZERO_PAGES, "the PDF has no pages")}
    return {**facts, "status": S.KEPT, "reason": S.REASON_OK, "detail": None}


def read_file(uri: str, max_bytes: int) -> bytes:
    """The file's bytes through fsspec (local paths, s3://, abfss://, gs://, dbfs:/ ...); refuses oversized files."""
    import fsspec

    with fsspec.open(uri, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OverflowError(f"larger than the {max_bytes // (1 << 20)} MB limit (ingest.max_file_mb)")
    return data


def unread_book_id(uri: str) -> str:
    """Key of a file that could not be read: its bytes are unknown, so its location stands in for them."""
    return hashlib.sha256(b"unread:" + uri.encode("utf-8")).hexdigest()


def inspect_file(uri: str, size_bytes: int, max_bytes: int, list_error: str | None = None) -> dict[str, Any]:
    """One `books` row's facts for the file at `uri` (book_id is the sha256 of its bytes); `list_error`: why the
    listing found the entry unreadable (it is then not opened)."""
    if list_error:
        return {"book_id": unread_book_id(uri), **_failure(S.REASON_UNREADABLE, f"{uri}: {list_error}")}
    if size_bytes > max_bytes:
        detail = f"{size_bytes} bytes is over the limit of {max_bytes} (ingest.max_file_mb)"
        return {"book_id": unread_book_id(uri), **_failure(S.REASON_TOO_LARGE, detail)}
    try:
        data = read_file(uri, max_bytes)
    except OverflowError as err:
        return {"book_id": unread_book_id(uri), **_failure(S.REASON_TOO_LARGE, str(err))}
    except OSError as err:
        return {"book_id": unread_book_id(uri), **_failure(S.REASON_UNREADABLE, f"{uri}: {type(err).__name__}: {err}")}
    return {"book_id": hashlib.sha256(data).hexdigest(), **inspect_pdf(data)}


def inspect_files(batches: Iterator[pd.DataFrame], max_bytes: int) -> Iterator[pd.DataFrame]:
    """mapInPandas body: (source_uri, size_bytes, list_error) rows -> the same rows with their PDF facts."""
    for batch in batches:
        listed = zip(batch["source_uri"], batch["size_bytes"], batch["list_error"])
        facts = [inspect_file(uri, int(size), max_bytes, error if isinstance(error, str) else None) for uri, size, error in listed]
        # object dtype keeps None as None (a float NaN would break the map and integer columns)
        frame = pd.DataFrame([[f.get(c) for c in FACT_COLUMNS] for f in facts], columns=FACT_COLUMNS, dtype=object)
        yield pd.concat([batch.reset_index(drop=True), frame], axis=1)


FACT_COLUMNS = [
    "book_id",
    "page_count",
    "encrypted",
    "text_extraction_allowed",
    "pdf_title",
    "pdf_author",
    "pdf_subject",
    "pdf_keywords",
    "pdf_rights",
    "pdf_license",
    "pdf_metadata",
    "status",
    "reason",
    "detail",
]
