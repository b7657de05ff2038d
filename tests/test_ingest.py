"""Ingest: pure transforms on tiny frames, then the stage on the sample corpus with real Delta and MLflow."""

import shutil
from dataclasses import asdict, replace
from datetime import datetime, timezone

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from megascience.jobs.pipeline import run_pipeline, select_stages
from megascience.jobs.platform.config import load_config
from megascience.jobs.platform.lineage import tracking_uri
from megascience.jobs.platform.settings import IngestSettings
from megascience.jobs.platform.tables import Lakehouse
from megascience.jobs.stages import ingest
from megascience.schemas import status as S
from tests.conftest import make_config

RULES = replace(IngestSettings.of(load_config("local", [], environ={})).copyright, no_metadata="drop")

EXPECTED_SAMPLE = {
    "biology_cell.pdf": (S.KEPT, S.REASON_OK),
    "chemistry_general.pdf": (S.KEPT, S.REASON_OK),
    "cs_algorithms.pdf": (S.KEPT, S.REASON_OK),
    "economics_micro.pdf": (S.KEPT, S.REASON_OK),
    "math_calculus.pdf": (S.KEPT, S.REASON_OK),
    "medicine_pharmacology.pdf": (S.KEPT, S.REASON_OK),
    "physics_mechanics.pdf": (S.KEPT, S.REASON_OK),
    "scanned_physics_notes.pdf": (S.KEPT, S.REASON_NO_RIGHTS_METADATA),  # in neither the PDF nor the manifest
    "restricted_statistics.pdf": (S.DROPPED, S.REASON_RIGHTS_PATTERN),  # by its embedded /Rights
    "publisher_preview_optics.pdf": (S.DROPPED, S.REASON_RIGHTS_PATTERN),  # by the rights manifest only
    "encrypted_solutions_manual.pdf": (S.FAILED, S.REASON_ENCRYPTED_PDF),
    "corrupt_chapter.pdf": (S.FAILED, S.REASON_CORRUPT_PDF),
    "lecture_slides.pdf": (S.FAILED, S.REASON_NOT_PDF),
}

FACTS = "book_id string, status string, reason string, detail string, pdf_rights string, pdf_license string, pdf_keywords string, text_extraction_allowed boolean"


def facts(spark, *rows):
    return spark.createDataFrame(list(rows), FACTS)


def verdicts(df):
    return {r["book_id"]: (r["status"], r["reason"]) for r in df.collect()}


def test_copyright_filter_rules(spark):
    books = facts(
        spark,
        ("open", S.KEPT, S.REASON_OK, None, "Openly licensed", "CC BY 4.0", None, True),
        ("restricted", S.KEPT, S.REASON_OK, None, "NOT FOR PUBLIC DISTRIBUTION", None, None, True),
        ("keyword", S.KEPT, S.REASON_OK, None, "open", None, "confidential, draft", True),
        ("locked", S.KEPT, S.REASON_OK, None, "open", None, None, False),
        ("bare", S.KEPT, S.REASON_OK, None, None, None, "calculus", True),  # keywords state no rights
        ("broken", S.FAILED, S.REASON_CORRUPT_PDF, "bad xref", "confidential", None, None, None),
    )
    filtered = ingest.apply_copyright_filter(books, RULES)
    assert verdicts(filtered) == {
        "open": (S.KEPT, S.REASON_OK),
        "restricted": (S.DROPPED, S.REASON_RIGHTS_PATTERN),
        "keyword": (S.DROPPED, S.REASON_RIGHTS_PATTERN),
        "locked": (S.DROPPED, S.REASON_PERMISSIONS),
        "bare": (S.DROPPED, S.REASON_NO_RIGHTS_METADATA),  # ingest.copyright.no_metadata=drop
        "broken": (S.FAILED, S.REASON_CORRUPT_PDF),  # a failure keeps its own reason
    }
    decided = {r["book_id"]: (r["rights_field"], r["rights_value"]) for r in filtered.collect()}
    assert decided["restricted"] == ("pdf_rights", "NOT FOR PUBLIC DISTRIBUTION")
    assert decided["keyword"] == ("pdf_keywords", "confidential, draft") and decided["open"] == ("pdf_license", "CC BY 4.0")
    assert decided["broken"] == (None, None)


def test_the_rights_manifest_is_merged_with_embedded_metadata(spark, tmp_path):
    books = facts(
        spark,
        ("a", S.KEPT, S.REASON_OK, None, None, None, None, True),  # the manifest restricts it
        ("b", S.KEPT, S.REASON_OK, None, None, "CC BY 4.0", None, True),  # the manifest's licence wins
        ("c", S.KEPT, S.REASON_OK, None, None, None, None, True),  # in neither: the no_metadata policy
    ).withColumn("file_name", F.concat("book_id", F.lit(".pdf")))
    path = tmp_path / "manifest.jsonl"
    path.write_text(
        '{"name": "a.pdf", "licence": "Proprietary", "terms": "", "availability": "No public access"}\n'
        '{"name": "b.pdf", "licence": "CC BY-NC 4.0", "terms": "share alike", "availability": "open"}\n'
    )
    fields = {"key": "name", "license": "licence", "rights": "terms", "access": "availability", "source": ""}
    manifest = ingest.manifest_frame(spark, ingest.read_manifest(str(path), fields))
    merged = ingest.with_manifest(books, manifest, "file_name")
    for policy, status in (("keep", S.KEPT), ("fail", S.FAILED)):
        rules = replace(RULES, no_metadata=policy)
        rows = {r["book_id"]: r for r in ingest.apply_copyright_filter(merged, rules).collect()}
        a, b, c = rows["a"], rows["b"], rows["c"]
        assert (a["status"], a["reason"], a["rights_field"], a["rights_value"]) == (
            S.DROPPED, S.REASON_RIGHTS_PATTERN, "manifest.access", "No public access",
        )
        assert a["detail"].startswith("manifest.access = 'No public access' matches an excluded pattern at 'No public access'")
        assert (b["status"], b["rights_field"], b["rights_value"]) == (S.KEPT, "manifest.license", "CC BY-NC 4.0")
        assert b["manifest_rights"] == {"license": "CC BY-NC 4.0", "rights": "share alike", "access": "open"}
        assert (c["status"], c["reason"]) == (status, S.REASON_NO_RIGHTS_METADATA)
    path.write_text('{"name": "a.pdf", "licence": "x", "terms": "", "availability": ""}\n' * 2)
    with pytest.raises(ingest.ManifestError, match="row 2: name a.pdf is listed twice"):
        ingest.read_manifest(str(path), fields)
    with pytest.raises(ingest.ManifestError, match="no column terms2"):
        ingest.read_manifest(str(path), {**fields, "rights": "terms2"})
    assert len(ingest.read_manifest("conf:sample/rights_manifest.csv", asdict(RULES.manifest_fields))) == 8


def test_license_allowlist_and_permissions_switch(spark):
    rules = replace(RULES, license_allowlist=["^CC BY", "public domain"], respect_pdf_permissions=False)
    books = facts(
        spark,
        ("cc", S.KEPT, S.REASON_OK, None, None, "CC BY-SA 4.0", None, False),
        ("pd", S.KEPT, S.REASON_OK, None, None, "Public Domain", None, True),
        ("none", S.KEPT, S.REASON_OK, None, None, None, None, True),
        ("prop", S.KEPT, S.REASON_OK, None, None, "Proprietary", None, True),
    )
    result = verdicts(ingest.apply_copyright_filter(books, rules))
    assert result == {
        "cc": (S.KEPT, S.REASON_OK),
        "pd": (S.KEPT, S.REASON_OK),
        "none": (S.DROPPED, S.REASON_LICENSE_NOT_ALLOWED),
        "prop": (S.DROPPED, S.REASON_LICENSE_NOT_ALLOWED),
    }


def test_one_row_per_book_keeps_the_smallest_uri(spark):
    books = spark.createDataFrame([("h1", "/b/x.pdf"), ("h1", "/a/x.pdf"), ("h2", "/c.pdf")], "book_id string, source_uri string")
    assert sorted(tuple(r) for r in ingest.one_row_per_book(books).collect()) == [("h1", "/a/x.pdf"), ("h2", "/c.pdf")]


def test_unseen_files_compares_uri_and_size(spark):
    listed = spark.createDataFrame([("/a.pdf", 10, None), ("/b.pdf", 20, None), ("/c.pdf", 30, None)], ingest.LISTED_FILES)
    known = spark.createDataFrame([("/a.pdf", 10), ("/b.pdf", 21)], "source_uri string, size_bytes long")
    assert sorted(r["source_uri"] for r in ingest.unseen_files(listed, known).collect()) == ["/b.pdf", "/c.pdf"]


def test_list_source_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.pdf").write_bytes(b"x")
    (tmp_path / "sub" / "B.PDF").write_bytes(b"yy")
    (tmp_path / "notes.txt").write_bytes(b"z")
    (tmp_path / "broken.pdf").symlink_to(tmp_path / "gone.pdf")
    (tmp_path / "loop.pdf").symlink_to(tmp_path / "loop.pdf")
    listed = ingest.list_source_files([str(tmp_path)], "*.pdf")
    assert [(uri, size) for uri, size, _ in listed] == [
        (str(tmp_path / "a.pdf"), 1),
        (str(tmp_path / "broken.pdf"), 0),
        (str(tmp_path / "loop.pdf"), 0),
        (str(tmp_path / "sub" / "B.PDF"), 2),
    ]
    errors = [error for _, _, error in listed]
    assert errors[0] is None and errors[3] is None
    assert errors[1].startswith("FileNotFoundError") and "Too many levels of symbolic links" in errors[2]
    assert ingest.list_source_files([str(tmp_path / "a.pdf")], "*.pdf") == [(str(tmp_path / "a.pdf"), 1, None)]
    with pytest.raises(ingest.SourceError, match="does not exist"):
        ingest.list_source_files([str(tmp_path / "missing")], "*.pdf")


@pytest.fixture
def corpus(tmp_path, sample_corpus):
    target = tmp_path / "corpus"
    shutil.copytree(sample_corpus, target)
    return target


def run_ingest(spark, lake_root, corpus):
    config = make_config(lake_root, f"ingest.sources=[{corpus}]")
    lake = Lakehouse.open(spark, config)
    [report] = run_pipeline(spark, config, lake, select_stages("ingest", "ingest"))
    return config, lake, report


def test_ingest_sample_corpus_statuses_lineage_and_rerun(spark, lake_root, corpus):
    config, lake, report = run_ingest(spark, lake_root, corpus)
    books = {r["file_name"]: r for r in lake.read("books").collect()}
    assert {name: (r["status"], r["reason"]) for name, r in books.items()} == EXPECTED_SAMPLE
    assert all(r["detail"] for r in books.values() if r["status"] != S.KEPT)
    assert books["math_calculus.pdf"]["pdf_license"] == "CC BY 4.0"
    assert books["math_calculus.pdf"]["page_count"] >= 4
    assert all(r["run_id"] == report.run_id for r in books.values())
    assert (report.outcome.rows_in, report.outcome.rows_kept, report.outcome.rows_dropped, report.outcome.rows_failed) == (13, 8, 2, 3)
    preview = books["publisher_preview_optics.pdf"]
    assert (preview["rights_field"], preview["rights_value"]) == ("manifest.access", "no public access")
    assert preview["pdf_rights"] is None and preview["manifest_rights"]["source"] == "sample publisher feed"
    assert books["restricted_statistics.pdf"]["rights_field"] == "pdf_rights"
    assert (books["math_calculus.pdf"]["rights_field"], books["math_calculus.pdf"]["rights_value"]) == ("manifest.license", "CC BY 4.0")

    # lineage: the commit names the stage run; the run holds params, the output version and counts
    [commit] = lake.history("books")
    assert commit.user_metadata["mlflow_run_id"] == report.run_id and commit.user_metadata["stage"] == "ingest"
    run = MlflowClient(tracking_uri(config)).get_run(report.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["ingest.pattern"] == "*.pdf"
    assert run.data.tags["output.table"] == "books" and run.data.tags["output.version"] == "0"
    assert run.data.metrics["rows_failed"] == 3 and run.data.metrics["rows_written"] == 13
    assert run.data.tags["mlflow.parentRunId"] == commit.user_metadata["pipeline_run_id"]

    # a rerun on the same files reads nothing new and commits nothing
    _, _, again = run_ingest(spark, lake_root, corpus)
    assert again.outcome.rows_in == 0 and again.outcome.commit is None
    assert lake.version("books") == 0
    rerun = MlflowClient(tracking_uri(config)).get_run(again.run_id)
    assert rerun.data.tags["input.books.version"] == "0"


def test_ingest_adds_only_new_files_and_ignores_copies(spark, lake_root, corpus, tmp_path):
    run_ingest(spark, lake_root, corpus)
    shutil.copy(corpus / "math_calculus.pdf", corpus / "math_calculus_copy.pdf")  # same bytes: same book
    extra = tmp_path / "extra.pdf"
    shutil.copy(corpus / "biology_cell.pdf", extra)
    with open(extra, "ab") as handle:
        handle.write(b"\n% appended comment\n")  # different bytes: a new book
    shutil.move(extra, corpus / "biology_cell_v2.pdf")
    _, lake, report = run_ingest(spark, lake_root, corpus)
    assert report.outcome.rows_in == 2  # both new names were inspected ...
    assert report.outcome.commit.rows_written == 1  # ... but only the new content became a book
    names = sorted(r["file_name"] for r in lake.read("books").collect())
    assert "biology_cell_v2.pdf" in names and "math_calculus_copy.pdf" not in names
    assert len(names) == 14
    assert lake.version("books") == 1


def test_unreadable_listed_entries_become_failed_rows(spark, lake_root, tmp_path, sample_corpus):
    folder = tmp_path / "books"
    folder.mkdir()
    shutil.copy(sample_corpus / "math_calculus.pdf", folder)
    (folder / "moved.pdf").symlink_to(tmp_path / "elsewhere.pdf")
    (folder / "loop.pdf").symlink_to(folder / "loop.pdf")
    _, lake, report = run_ingest(spark, lake_root, folder)
    rows = {r["file_name"]: r for r in lake.read("books").collect()}
    assert {name: (r["status"], r["reason"]) for name, r in rows.items()} == {
        "math_calculus.pdf": (S.KEPT, S.REASON_OK),
        "moved.pdf": (S.FAILED, S.REASON_UNREADABLE),
        "loop.pdf": (S.FAILED, S.REASON_UNREADABLE),
    }
    assert rows["moved.pdf"]["detail"] == f"{folder / 'moved.pdf'}: FileNotFoundError: [Errno 2] No such file or directory: '{folder / 'moved.pdf'}'"
    assert "Too many levels of symbolic links" in rows["loop.pdf"]["detail"] and str(folder / "loop.pdf") in rows["loop.pdf"]["detail"]
    assert report.outcome.rows_failed == 2


def test_stage_failure_marks_the_run_failed(spark, lake_root, tmp_path):
    config = make_config(lake_root, f"ingest.sources=[{tmp_path / 'nowhere'}]")
    lake = Lakehouse.open(spark, config)
    with pytest.raises(ingest.SourceError):
        run_pipeline(spark, config, lake, select_stages("ingest", "ingest"))
    client = MlflowClient(tracking_uri(config))
    [experiment] = [e for e in client.search_experiments() if e.name == "megascience"]
    statuses = {r.info.run_name: r.info.status for r in client.search_runs([experiment.experiment_id])}
    assert statuses == {"pipeline": "FAILED", "ingest": "FAILED"}
    assert not lake.exists("books")


def test_processed_at_is_the_stage_start(spark, lake_root, corpus):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    _, lake, _ = run_ingest(spark, lake_root, corpus)
    stamps = {r["processed_at"] for r in lake.read("books").collect()}
    assert len(stamps) == 1
    assert stamps.pop().replace(tzinfo=timezone.utc) >= before
