"""External QA datasets: ingest_external's mapping, failures and reruns on local files; then the bundled external
sample through the textbook pairs' own dedup and decontamination stages inside the whole-pipeline lake
(`sample_lake`: every LLM role answered by jobs/testing/scripted_model.py through the scripted endpoint)."""

import json

import pytest
import yaml
from pyspark.sql import functions as F

from megascience.jobs.cli.funnel import external_funnel_from_lake
from megascience.jobs.pipeline import run_pipeline
from megascience.jobs.platform.sources import SourceError, Unreadable, parse_source
from megascience.jobs.platform.tables import Lakehouse
from megascience.jobs.stages import dedup, ingest_external
from megascience.jobs.stages.ingest_external import EXTERNAL_SOURCES, record_row
from megascience.schemas import status as S
from megascience.schemas.tables import EXTERNAL_DECONTAMINATED
from tests.conftest import ROOT, make_config

PLANTED = yaml.safe_load((ROOT / "conf/sample/external/planted.yaml").read_text())
# What the next stages (select, annotate, mix) read from external_decontaminated.
SELECT_COLUMNS = ("qa_id", "dataset", "subject", "question", "reference_answer", "response")


def spaced(text: str) -> str:
    return " ".join(text.split())


def test_record_rows_map_nested_fields_and_fail_naming_the_field():
    source = parse_source(
        "NR",
        {"file": "nr.jsonl", "fields": {"question": "q", "reference_answer": "ref", "response": "responses.0.text",
                                        "source_id": "id"}},
        "test",
        EXTERNAL_SOURCES,
    )
    record = {"id": 7, "q": " Why is the sky blue? ", "ref": "Rayleigh scattering", "responses": [{"text": "Shorter."}]}
    row = record_row(source, None, "line 1", record)
    assert (row["dataset"], row["source_id"], row["status"]) == ("NR", "7", S.KEPT)
    assert row["question"] == "Why is the sky blue?"
    assert (row["reference_answer"], row["response"], row["subject"]) == ("Rayleigh scattering", "Shorter.", None)

    no_question = record_row(source, None, "line 2", {"id": 8, "ref": "x", "responses": []})
    assert (no_question["status"], no_question["reason"]) == (S.FAILED, S.REASON_EXTERNAL_MISSING_FIELD)
    assert no_question["detail"] == "line 2: no field 'q' (the question)" and no_question["raw"]
    empty = record_row(source, None, "line 3", {"id": 9, "q": " ", "ref": "x", "responses": [{"text": "y"}]})
    assert empty["detail"] == "line 3: empty question (field 'q')"
    unreadable = record_row(source, None, "line 4", Unreadable("{oops", "not JSON: ..."))
    assert (unreadable["reason"], unreadable["raw"]) == (S.REASON_EXTERNAL_UNREADABLE_RECORD, "{oops")
    with pytest.raises(SourceError, match=r"unknown field\(s\) \['answer'\]"):
        parse_source("bad", {"file": "x.jsonl", "fields": {"question": "q", "answer": "a"}}, "test", EXTERNAL_SOURCES)


def test_ingest_external_keeps_good_records_records_bad_ones_and_adds_only_new_rows(spark, lake_root, tmp_path):
    records = tmp_path / "quiz.jsonl"
    lines = [
        {"question": "What is the SI unit of charge?", "answer": "coulomb"},
        {"question": "  what is the SI unit of   CHARGE? ", "answer": "C"},  # the same normalised question
        {"answer": "a record without its question"},
        {"question": "Name the powerhouse of the cell.", "answer": None},
    ]
    records.write_text("\n".join(json.dumps(line) for line in lines) + "\n{not json\n")
    table = tmp_path / "table.csv"
    table.write_text("query,solution,topic\nWhat is 2 + 2?,4,math\n")
    sources_file = tmp_path / "external.yaml"
    sources_file.write_text(
        yaml.safe_dump(
            {
                "sources": {
                    "quiz": {"file": str(records), "fields": {"question": "question", "reference_answer": "answer"}},
                    "table": {"file": str(table), "fields": {"question": "query", "reference_answer": "solution",
                                                             "subject": "topic"}},
                    "gone": {"file": str(tmp_path / "missing.parquet"), "fields": {"question": "q"}},
                    "hub": {"hf": "org/some-qa-dataset", "split": "train", "fields": {"question": "question"}},
                }
            }
        )
    )
    config = make_config(
        lake_root, f"external.sources_file={sources_file}", "external.datasets=[quiz, table, gone, hub]"
    )
    lake = Lakehouse.open(spark, config)
    [report] = run_pipeline(spark, config, lake, [ingest_external.STAGE])
    rows = lake.read("external_qa").collect()
    assert (report.outcome.rows_in, report.outcome.rows_kept, report.outcome.rows_failed) == (7, 3, 4)
    assert len({r["qa_id"] for r in rows}) == len(rows) == 7  # the repeated question is one row
    kept = {(r["dataset"], r["question"]): r for r in rows if r["status"] == S.KEPT}
    charge = kept[("quiz", "What is the SI unit of charge?")]  # read first, so it is the repeated question's row
    assert (charge["reference_answer"], charge["source_id"], charge["response"]) == ("coulomb", "line 1", None)
    assert kept[("quiz", "Name the powerhouse of the cell.")]["reference_answer"] is None
    assert (kept[("table", "What is 2 + 2?")]["subject"], len(kept)) == ("math", 3)
    failed = {(r["dataset"], r["reason"]): r["detail"] for r in rows if r["status"] == S.FAILED}
    assert set(failed) == {
        ("quiz", S.REASON_EXTERNAL_MISSING_FIELD),
        ("quiz", S.REASON_EXTERNAL_UNREADABLE_RECORD),
        ("gone", S.REASON_EXTERNAL_SOURCE_UNREADABLE),
        ("hub", S.REASON_EXTERNAL_SOURCE_UNREADABLE),
    }
    assert failed[("quiz", S.REASON_EXTERNAL_MISSING_FIELD)] == "line 3: no field 'question' (the question)"
    assert failed[("quiz", S.REASON_EXTERNAL_UNREADABLE_RECORD)].startswith("line 5: not JSON")
    assert failed[("gone", S.REASON_EXTERNAL_SOURCE_UNREADABLE)].startswith("external dataset gone: cannot read")
    hub = failed[("hub", S.REASON_EXTERNAL_SOURCE_UNREADABLE)]  # no `datasets` library, or no hub access offline
    assert "needs the `datasets` library" in hub or "cannot load hf:org/some-qa-dataset:train" in hub, hub

    [again] = run_pipeline(spark, config, lake, [ingest_external.STAGE])
    assert again.outcome.commit is None  # every record already has its row
    with records.open("a") as handle:
        handle.write(json.dumps({"question": "What is the SI unit of capacitance?", "answer": "farad"}) + "\n")
    [added] = run_pipeline(spark, config, lake, [ingest_external.STAGE])
    assert (added.outcome.rows_in, added.outcome.rows_kept, lake.read("external_qa").count()) == (1, 1, 8)


def test_dedup_scope_keeps_datasets_apart(spark):
    same = "What is the speed of light in vacuum?"
    rows = [("a", "NR", same), ("b", "NS", same), ("c", "NR", same), ("d", "NR", "Why?")]
    questions = spark.createDataFrame(rows, "qa_id string, dataset string, question string")
    shingles = {r["qa_id"]: set(r["shingles"]) for r in dedup.shingle(questions, 3, scope="dataset").collect()}
    assert shingles["a"] == shingles["c"] and not shingles["a"] & shingles["b"]
    assert shingles["d"] == {"NR\u241fwhy"}  # under 3 words: the whole text, scoped too
    plain = {r["qa_id"]: set(r["shingles"]) for r in dedup.shingle(questions, 3).collect()}
    assert plain["a"] == plain["b"] and len(plain["a"]) == len(shingles["b"]) == 6


def test_external_sample_is_deduplicated_within_each_dataset(sample_lake):
    lake = sample_lake.lake
    questions = lake.read("external_qa")
    failed = questions.where(F.col("status") == S.FAILED).collect()
    assert [(r["dataset"], r["source_id"], r["reason"]) for r in failed] == [
        (case["dataset"], case["source_id"], S.REASON_EXTERNAL_MISSING_FIELD) for case in PLANTED["missing_question"]
    ]
    clusters = questions.join(lake.read("external_clusters").select("qa_id", "cluster_id", "kept"), "qa_id").collect()
    assert len(clusters) == questions.count() - len(failed)
    cluster_of = {(r["dataset"], spaced(r["question"])): r["cluster_id"] for r in clusters}
    for case in PLANTED["near_duplicates"]:
        assert cluster_of[(case["dataset"], spaced(case["a"]))] == cluster_of[(case["dataset"], spaced(case["b"]))]
    datasets_per_cluster = {}
    for row in clusters:
        datasets_per_cluster.setdefault(row["cluster_id"], set()).add(row["dataset"])
    assert all(len(names) == 1 for names in datasets_per_cluster.values())
    assert sum(not r["kept"] for r in clusters) == len(PLANTED["near_duplicates"])


def test_external_sample_rephrasing_is_dropped_as_contaminated(sample_lake):
    lake = sample_lake.lake
    decided = lake.read("external_decontaminated")
    assert set(SELECT_COLUMNS) <= set(decided.columns) and decided.columns == EXTERNAL_DECONTAMINATED.schema.names
    keepers = lake.read("external_clusters").where(F.col("status") == S.KEPT).count()
    rows = {spaced(r["question"]): r for r in decided.collect()}
    assert len(rows) == keepers  # every deduplicated question has its decision
    dropped = {question: r for question, r in rows.items() if r["status"] != S.KEPT}
    assert set(dropped) == {spaced(case["text"]) for case in PLANTED["rephrasings"]}
    for case in PLANTED["rephrasings"]:
        row = dropped[spaced(case["text"])]
        assert (row["reason"], row["contaminated"]) == (S.REASON_CONTAMINATED, True)
        assert row["matched_items"][0]["item_id"] == case["benchmark_item"] and row["dataset"] == case["dataset"]
    kept = [r for r in rows.values() if r["status"] == S.KEPT]
    assert all(r["contaminated"] is False and r["question"] for r in kept)
    # NaturalReasoning has short answers; Nemotron-Science, like the real split, none (select extracts them)
    assert {r["dataset"] for r in kept if r["reference_answer"]} == {"NaturalReasoning-sample"}
    verdicts = lake.read("external_contamination").where(F.col("verdict") == "yes").count()
    assert verdicts == len(PLANTED["rephrasings"])

    steps = ("records", "after_dedup", "after_decontamination")
    funnel = {r["dataset"]: tuple(r[step] for step in steps) for r in external_funnel_from_lake(lake).collect()}
    assert funnel == {
        "NaturalReasoning-sample": (22, 20, 19),
        "Nemotron-Science-sample": (22, 21, 21),
        "total": (44, 41, 40),
    }
