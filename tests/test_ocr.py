"""The ocr stage: the text layer of the sample corpus for real, the olmOCR path against a scripted endpoint."""

import asyncio
import hashlib
import os
import re
import shutil

import pytest
from pyspark.sql import functions as F

from megascience.jobs.cli.sample_corpus import FORMULA_PREFIX, SCANNED_BOOK, BookSource, book_sources, render_book
from megascience.jobs.pipeline import run_pipeline
from megascience.jobs.platform.config import ConfigError
from megascience.jobs.platform.settings import OcrSettings
from megascience.jobs.platform.tables import Lakehouse
from megascience.jobs.stages import ingest, ocr
from megascience.jobs.testing.llm_server import ScriptedLLMServer, olmocr_answer
from megascience.schemas import status as S
from megascience.udfs.llm_calls import ParseError
from megascience.udfs.ocr import (
    QualityChecks,
    clean_text_layer,
    formula_fragment_line,
    parse_page_answer,
    text_layer_problems,
)
from tests.conftest import make_config

CHECKS = QualityChecks(min_chars=100, min_printable_ratio=0.95, min_letter_ratio=0.3, math_min_lines=3, math_min_line_ratio=0.2)
PNG_DATA_URL = "data:image/png;base64,iVBORw0KGgo"  # the PNG signature, base64-encoded


def words(text: str) -> str:
    return " ".join(text.split())


# --- pure parts ----------------------------------------------------------------------------------------------------


def test_quality_checks_send_poor_text_layers_to_the_model():
    prose = "The first law of thermodynamics states that energy is conserved in every process. " * 3
    assert text_layer_problems(prose, CHECKS) == []
    assert text_layer_problems("", CHECKS) == ["0 non-space characters < ocr.min_chars=100"]
    assert text_layer_problems("   \n\n  ", CHECKS) == ["0 non-space characters < ocr.min_chars=100"]
    symbols = text_layer_problems("!#$%&'()*+,-./:;<=>?@[]^_`{|}~" * 5, CHECKS)
    assert len(symbols) == 1 and symbols[0].startswith("letter ratio 0.00 < ocr.min_letter_ratio")
    garbled = text_layer_problems(prose + "\ufffd\x01" * 30, CHECKS)
    assert len(garbled) == 1 and garbled[0].startswith("printable ratio")
    assert clean_text_layer("a\r\nb\rc\fd\n") == "a\nb\ncd\n"


def test_flattened_math_is_told_from_prose_with_numbers():
    prose = (
        "1.6 Exercises\nExercise 1.1. Evaluate the limit of sin(5x)/x as x -> 0, using sin(u)/u -> 1.\n"
        "Answer. Write sin(5x)/x = 5 * sin(5x)/(5x). As x -> 0 we also have 5x -> 0, so the limit is 5.\n"
        "The pen is a 10 m by 10 m square with area 100 m^2.\n800.\nand\nNote\n"
    )
    assert text_layer_problems(prose, CHECKS) == []  # one short numeric line is not a formula
    flattened = prose + "𝑑\n𝑑𝑥\n𝑥\n𝑛\n= 𝑛 𝑥\n𝑛−1\n∫\n2\n= 6\n"
    [problem] = text_layer_problems(flattened, CHECKS)
    assert problem.startswith("flattened math: 10 of 16 lines are formula fragments or math-font glyphs")
    assert [formula_fragment_line(line) for line in ("x", "= 6", "n-1", "Note", "and", "1.6 Exercises", "𝑓(𝑥) 𝑑𝑥 = 𝐹(𝑏)")] == [
        True, True, True, False, False, False, True,
    ]
    assert text_layer_problems(flattened, QualityChecks(100, 0.95, 0.3)) == []  # math_min_lines 0: check off


def test_olmocr_answers_parse_or_raise():
    parsed = parse_page_answer(olmocr_answer("# Heading\n\nBody text."))
    assert parsed == {
        "natural_text": "# Heading\n\nBody text.",
        "is_rotation_valid": True,
        "rotation_correction": 0,
        "primary_language": "en",
        "is_table": False,
        "is_diagram": False,
    }
    turned = parse_page_answer(olmocr_answer("sdrawkcab", rotation_valid=False, rotation_correction=270))
    assert turned["is_rotation_valid"] is False and turned["rotation_correction"] == 270
    assert parse_page_answer(olmocr_answer(None))["natural_text"] is None
    bad = {
        "": "empty answer",
        "I cannot read this page.": "no olmOCR front matter",
        "---\njust a string\n---\ntext": "no olmOCR front matter",
        olmocr_answer("x", rotation_correction=45): "rotation_correction must be one of",
        "---\nprimary_language: en\n---\ntext": "Missing required field",
        olmocr_answer("x").replace("is_table: false", "is_table: 3"): "is_table must be of type bool",
    }
    for answer, message in bad.items():
        with pytest.raises(ParseError, match=message):
            parse_page_answer(answer)


def test_remote_books_are_copied_once_per_worker(tmp_path):
    import fsspec

    from megascience.udfs import ocr as ocr_udfs

    memory = fsspec.filesystem("memory")
    uris = [f"memory://books/book{n}.pdf" for n in range(6)]
    for n, uri in enumerate(uris):
        memory.pipe(uri, f"%PDF-1.4 book {n}".encode())
    first = ocr_udfs.local_pdf(uris[0])
    assert open(first, "rb").read() == b"%PDF-1.4 book 0" and ocr_udfs.local_pdf(uris[0]) == first
    for uri in uris[1:]:
        ocr_udfs.local_pdf(uri)
    assert not os.path.exists(first)  # the oldest copy was evicted (4 kept)
    local = tmp_path / "book.pdf"
    local.write_bytes(b"%PDF-1.4")
    assert ocr_udfs.local_pdf(str(local)) == str(local)  # local files are read in place
    with pytest.raises(FileNotFoundError, match="no longer exists"):
        ocr_udfs.local_pdf(str(tmp_path / "gone.pdf"))


def test_pages_are_spread_in_ranges_and_done_pages_skipped(spark):
    books = spark.createDataFrame(
        [("b1", "/x/b1.pdf", 40, "kept"), ("b2", "/x/b2.pdf", 3, "kept"), ("b3", "/x/b3.pdf", 9, "failed")],
        "book_id string, source_uri string, page_count int, status string",
    )
    done = spark.createDataFrame(
        [("b1", 1, "kept"), ("b1", 2, "dropped"), ("b1", 17, "kept"), ("b2", 2, "kept"), ("b2", 3, "failed")],
        "book_id string, page_number int, status string",
    )
    pending = ocr.missing_pages(ocr.books_to_read(books, None), done)  # a failed page is read again
    units = {(r["book_id"], tuple(r["page_numbers"])) for r in ocr.page_ranges(pending, 16).collect()}
    assert units == {
        ("b1", tuple(range(3, 17))),
        ("b1", tuple(range(18, 33))),
        ("b1", tuple(range(33, 41))),
        ("b2", (1, 3)),
    }
    # after classify: only the books it kept, each with its subject's method
    labels = spark.createDataFrame(
        [("b1", "math", "kept"), ("b2", "biology", "dropped")], "book_id string, subject string, status string"
    )
    config = make_config(spark.conf.get("spark.sql.warehouse.dir"), "ocr.method=auto", "ocr.method_by_subject={math: olmocr}")
    [b1] = ocr.with_page_method(ocr.books_to_read(books, labels), OcrSettings.of(config)).collect()
    assert (b1["book_id"], b1["ocr_method"], b1["method_chosen_by"]) == ("b1", "olmocr", "ocr.method_by_subject.math=olmocr")
    with pytest.raises(ConfigError, match="--set ocr.method: ocr.method must be one of auto, text_layer, olmocr, got 'vision'"):
        make_config(spark.conf.get("spark.sql.warehouse.dir"), "ocr.method=vision")


# --- the sample corpus for real --------------------------------------------------------------------------------------


def test_sample_corpus_text_layer_and_the_scanned_book_to_olmocr(spark, sample_pages_lake):
    lake = Lakehouse.open(spark, make_config(sample_pages_lake.root))
    books = {r["file_name"][:-4]: r for r in lake.read("books").where("status = 'kept'").collect()}
    pages = {}
    for row in lake.read("pages").collect():
        pages.setdefault(row["book_id"], {})[row["page_number"]] = row
    sources = {source.slug: source for source in book_sources()}
    assert set(pages) == {book["book_id"] for book in books.values()}
    typeset = []
    for slug, book in books.items():
        rows = pages[book["book_id"]]
        assert sorted(rows) == list(range(1, book["page_count"] + 1))  # one row per page, none twice
        if slug == SCANNED_BOOK:
            continue
        # every page from the text layer, word for word the source page (headings lose their '#'), but the page of
        # typeset formulas, whose flattened text layer goes to olmOCR
        for number, row in rows.items():
            if FORMULA_PREFIX in sources[slug].pages[number - 1]:
                typeset.append(row)
                continue
            assert (row["method"], row["model"], row["status"], row["reason"]) == ("text_layer", "pdfium", "kept", "ok")
            source_page = re.sub(r"(?m)^#+ ", "", sources[slug].pages[number - 1])
            assert words(row["text"]) == words(source_page) and row["char_count"] == len(row["text"])
            assert "\r" not in row["text"] and row["llm_call_id"] is None
    scanned = pages[books[SCANNED_BOOK]["book_id"]]
    for row in scanned.values():  # no text layer: the quality checks sent every page to the model
        assert (row["method"], row["status"], row["model"]) == ("olmocr", "kept", "scripted-model")
        assert row["detail"] == "text layer: 0 non-space characters < ocr.min_chars=100"
        assert row["text"] == "Lecture 1: The First Law\nScanned page text." and row["llm_call_id"]
    [math_page] = typeset
    assert (math_page["method"], math_page["status"], math_page["model"]) == ("olmocr", "kept", "scripted-model")
    assert math_page["detail"].startswith("text layer: flattened math: ") and math_page["llm_call_id"]
    # other born-digital pages never reach the model
    assert len(sample_pages_lake.requests) == len(scanned) + 1

    version = lake.version("pages")
    config = make_config(sample_pages_lake.root, *sample_pages_lake.settings)
    run_pipeline(spark, config, lake, [ocr.STAGE])  # nothing new: the ocr role is not even resolved
    assert lake.version("pages") == version


# --- the olmOCR path against a scripted endpoint ---------------------------------------------------------------------

# page 4 has a smudge the model reads as nothing; page 6 is a blank scan, dropped before any call
CASE_PAGES = ["# One\nAn upright page.", "# Two\nA page scanned upside down.", "# Three\nGarbage.", "# Four\nSmudged.", "# Five\nStubborn.", ""]
IMAGE_DIM = 320  # small renders keep the test fast; the path is the same at olmOCR's 1288


def _image_sha(messages: list[dict]) -> str:
    url = messages[0]["content"][1]["image_url"]["url"]
    return hashlib.sha256(url.encode()).hexdigest()


@pytest.fixture(scope="module")
def ocr_cases(tmp_path_factory):
    """A scanned book of five pages and olmOCR's own request (olmocr.pipeline) for each page and rotation."""
    from olmocr.pipeline import build_page_query  # test-only: its import configures loggers and boto3 clients

    folder = tmp_path_factory.mktemp("ocr_cases")
    path = folder / "ocr_cases.pdf"
    path.write_bytes(render_book(BookSource("ocr_cases", {"title": "OCR cases"}, CASE_PAGES), scanned=True))
    expected = {}
    for page in range(1, len(CASE_PAGES) + 1):
        for rotation in (0, 90, 180, 270):
            query = asyncio.run(build_page_query(str(path), page, IMAGE_DIM, image_rotation=rotation))
            expected[_image_sha(query["messages"])] = (page, rotation, query["messages"])
    return folder, expected


def scripted_pages(expected):
    def respond(payload):
        page, rotation, _ = expected[_image_sha(payload["messages"])]
        if page == 1:
            return olmocr_answer("An upright page.\nSecond line.")
        if page == 2:
            return olmocr_answer("A page scanned upside down.") if rotation == 90 else olmocr_answer("nwod", False, 90)
        if page == 3:
            return "Sorry, I can't help with that."
        if page == 4:
            return olmocr_answer(None)
        if page == 5:
            return olmocr_answer("evlF", rotation_valid=False, rotation_correction=90)
        raise AssertionError(f"page {page} is blank: no model may see it")

    return respond


def test_olmocr_path_end_to_end(spark, lake_root, ocr_cases):
    from olmocr.prompts import build_no_anchoring_v4_yaml_prompt

    folder, expected = ocr_cases
    with ScriptedLLMServer(respond=scripted_pages(expected)) as server:
        config = make_config(
            lake_root,
            f"ingest.sources=[{folder}]",
            "classify.before_ocr=false",  # no labels for these books: OCR every kept one
            "llm.roles.ocr.engine=openai",
            f"llm.roles.ocr.base_url={server.base_url}",
            f"ocr.target_longest_image_dim={IMAGE_DIM}",
            "ocr.rotation_retries=2",
            "ocr.pages_per_task=2",
        )
        lake = Lakehouse.open(spark, config)
        run_pipeline(spark, config, lake, [ingest.STAGE, ocr.STAGE])
        rows = {r["page_number"]: r for r in lake.read("pages").collect()}
        outcome = {n: (r["status"], r["reason"], r["rotation"], r["text"]) for n, r in rows.items()}
        assert outcome == {
            1: ("kept", "ok", 0, "An upright page.\nSecond line."),
            2: ("kept", "ok", 90, "A page scanned upside down."),
            3: ("failed", "ocr_unparsed", 0, None),
            4: ("dropped", "blank_page", 0, ""),
            5: ("failed", "ocr_rotation_unresolved", 180, None),
            6: ("dropped", "blank_page", None, ""),
        }
        blank = rows.pop(6)
        assert (blank["method"], blank["llm_call_id"]) == ("text_layer", None) and blank["detail"].startswith("no text layer, ink on 0.0000")
        assert all(r["method"] == "olmocr" and r["model"] == "scripted-model" and r["llm_call_id"] for r in rows.values())
        assert rows[1]["primary_language"] == "en" and rows[1]["is_table"] is False and rows[1]["char_count"] == 29
        assert rows[1]["detail"].startswith("text layer: ")
        assert "no olmOCR front matter" in rows[3]["detail"]
        assert "turned (rotation_correction 90) in the image rotated by 180, after at most ocr.rotation_retries=2" in rows[5]["detail"]

        # every request is olmOCR's own for that page and rotation: its prompt and the page as a PNG data URL
        asked = []
        for payload in server.requests:
            page, rotation, messages = expected[_image_sha(payload["messages"])]
            assert payload["messages"] == messages
            content = payload["messages"][0]["content"]
            assert content[0] == {"type": "text", "text": build_no_anchoring_v4_yaml_prompt()}
            assert content[1]["image_url"]["url"].startswith(PNG_DATA_URL)
            asked.append((page, rotation))
        assert sorted(asked) == [(1, 0), (2, 0), (2, 90), (3, 0), (4, 0), (5, 0), (5, 90), (5, 180)]
        prompts = [r["prompt"] for r in lake.read("llm_calls").collect()]
        assert len(prompts) == 8 and all("data:image/png;sha256," in p and "base64" not in p for p in prompts)

        # a rerun reads nothing again and asks nothing
        version = lake.version("pages")
        run_pipeline(spark, config, lake, [ingest.STAGE, ocr.STAGE])
        assert lake.version("pages") == version and len(server.requests) == 8


def test_forced_methods_and_an_unreadable_file(spark, lake_root, sample_corpus, tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    for name in ("physics_mechanics.pdf", f"{SCANNED_BOOK}.pdf", "biology_cell.pdf"):
        shutil.copy(sample_corpus / name, folder / name)
    with ScriptedLLMServer(respond=lambda payload: olmocr_answer("Read by the model.")) as server:
        settings = [
            f"ingest.sources=[{folder}]",
            "classify.before_ocr=false",  # OCR every kept book, labelled or not
            "llm.roles.ocr.engine=openai",
            f"llm.roles.ocr.base_url={server.base_url}",
        ]
        config = make_config(lake_root, *settings, "ocr.method=text_layer")
        lake = Lakehouse.open(spark, config)
        run_pipeline(spark, config, lake, [ingest.STAGE])
        (folder / "biology_cell.pdf").unlink()  # gone between ingest and ocr
        run_pipeline(spark, config, lake, [ocr.STAGE])
        names = {r["book_id"]: r["file_name"] for r in lake.read("books").collect()}
        by_book = {}
        for row in lake.read("pages").collect():
            by_book.setdefault(names[row["book_id"]], set()).add((row["method"], row["status"], row["reason"]))
        assert by_book == {
            "physics_mechanics.pdf": {("text_layer", "kept", "ok")},
            f"{SCANNED_BOOK}.pdf": {("text_layer", "failed", "text_layer_poor")},
            "biology_cell.pdf": {("text_layer", "failed", "pdf_unreadable")},
        }
        assert server.requests == []  # method text_layer never calls the model

        # a new born-digital book with method olmocr: every one of its pages goes to the model, and so do the pages
        # that failed before (the scanned book's); the kept pages stay as they are
        shutil.copy(sample_corpus / "chemistry_general.pdf", folder / "chemistry_general.pdf")
        config = make_config(lake_root, *settings, "ocr.method=olmocr")
        run_pipeline(spark, config, lake, [ingest.STAGE, ocr.STAGE])
        chemistry_id = lake.read("books").where("file_name = 'chemistry_general.pdf'").first()["book_id"]
        chemistry = lake.read("pages").where(F.col("book_id") == chemistry_id)
        methods = {(r["method"], r["detail"], r["text"]) for r in chemistry.collect()}
        assert methods == {("olmocr", "ocr.method=olmocr", "Read by the model.")}
        assert chemistry.count() == 5 and len(server.requests) == 5 + 2
        scanned = lake.read("pages").join(lake.read("books").select("book_id", "file_name"), "book_id")
        scanned = scanned.where(f"file_name = '{SCANNED_BOOK}.pdf'")
        assert {(r["method"], r["status"]) for r in scanned.collect()} == {("olmocr", "kept")}
        assert lake.read("pages").count() == 5 + 2 + 5 + 5


def test_an_answer_cut_off_at_max_tokens_is_a_failed_page(spark, lake_root, sample_corpus, tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    shutil.copy(sample_corpus / f"{SCANNED_BOOK}.pdf", folder)
    cut_off = {"content": olmocr_answer("The first half of the page and then noth"), "finish_reason": "length"}
    with ScriptedLLMServer(respond=lambda payload: cut_off) as server:
        settings = [
            f"ingest.sources=[{folder}]",
            "classify.before_ocr=false",  # OCR every kept book, labelled or not
            "llm.roles.ocr.engine=openai",
            f"llm.roles.ocr.base_url={server.base_url}",
        ]
        config = make_config(lake_root, *settings)
        lake = Lakehouse.open(spark, config)
        run_pipeline(spark, config, lake, [ingest.STAGE, ocr.STAGE])
    rows = lake.read("pages").collect()
    assert {(r["status"], r["reason"], r["text"]) for r in rows} == {("failed", S.REASON_OCR_TRUNCATED, None)}
    assert len(rows) == 2 and "max_tokens" in rows[0]["detail"]


def test_the_text_only_smoke_model_is_not_asked_to_read_images(spark, lake_root, sample_corpus, smoke_model, tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    shutil.copy(sample_corpus / f"{SCANNED_BOOK}.pdf", folder)
    config = make_config(lake_root, f"ingest.sources=[{folder}]", "classify.before_ocr=false", f"llm.smoke_model_dir={smoke_model}")
    lake = Lakehouse.open(spark, config)
    run_pipeline(spark, config, lake, [ingest.STAGE, ocr.STAGE])
    rows = lake.read("pages").collect()
    assert {(r["method"], r["status"], r["reason"]) for r in rows} == {("olmocr", "failed", S.REASON_OCR_NO_VISION_MODEL)}
    assert len(rows) == 2 and all("llm.roles.ocr.model" in r["detail"] and "text layer" in r["detail"] for r in rows)
    assert not lake.exists("llm_calls")  # no call was made, so none was recorded

    version = lake.version("pages")
    run_pipeline(spark, config, lake, [ocr.STAGE])  # the failed pages are looked at again: same rows, no new version
    assert lake.version("pages") == version and not lake.exists("llm_calls")
