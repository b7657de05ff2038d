"""The whole pipeline over the sample corpus with every LLM role answered the way real models write
(tests/realistic_model.py, the `realistic_lake` fixture): fenced and decorated JSON, wrong key case, LaTeX with
single backslashes, verdicts that open with the other word, scores in prose, answers cut off at max_tokens.
Checked through the real stages and tables against the true content of each answer: every complete pair reaches
the stage it should, intact; every loss is a row with its reason; no verdict is flipped; nothing cut off is kept.
"""

import csv
from importlib import resources

from pyspark.sql import functions as F

from megascience.schemas import status as S


def words(text):
    return " ".join(text.split())


def rows(lake, table, *columns):
    return lake.read(table).select(*columns).collect()


def test_every_complete_extraction_pair_is_kept_intact_and_cut_answers_are_continued(realistic_lake):
    lake, truth = realistic_lake.lake, realistic_lake.truth
    for standard in ("high", "low"):
        kept = {
            (words(r["question"]), words(r["answer"]))
            for r in lake.read("qa_extracted").where((F.col("status") == S.KEPT) & (F.col("standard") == standard)).collect()
        }
        assert truth.pairs[standard] and kept == truth.pairs[standard], standard
    assert truth.extractions_cut > 0 and {"single_backslash", "keys", "bare_array"} <= truth.styles["extractor"]
    continued = lake.read("llm_calls").where((F.col("role") == "extractor") & F.col("prompt").contains("cut off at its length limit"))
    assert continued.count() == truth.extractions_cut  # one continuation per cut-off answer, each its own call


def test_no_answer_is_unreadable_and_every_loss_is_a_row_with_its_reason(realistic_lake):
    lake = realistic_lake.lake
    for table in ("book_labels", "qa_extracted", "qa_refined", "qa_reasoned", "qa_filtered", "contamination",
                  "qa_reference", "selection_scores", "external_annotated"):
        outcomes = {(r["status"], r["reason"]) for r in rows(lake, table, "status", "reason")}
        assert all(status in S.STATUSES and reason for status, reason in outcomes), table
        assert not {reason for _, reason in outcomes} & {S.REASON_PARSE_ERROR, S.REASON_ENGINE_ERROR}, table
        assert all(reason != S.REASON_OK for status, reason in outcomes if status != S.KEPT), table
    # each stage's kept input is a row of its output
    for source, target in (("qa_refined", "qa_reasoned"), ("qa_reasoned", "qa_filtered"), ("qa_decontaminated", "qa_reference")):
        kept = {r["qa_id"] for r in lake.read(source).where(F.col("status") == S.KEPT).select("qa_id").collect()}
        assert kept == {r["qa_id"] for r in rows(lake, target, "qa_id")}, target


def test_no_cut_off_answer_is_kept(realistic_lake):
    lake, truth = realistic_lake.lake, realistic_lake.truth
    extracted = {r["qa_id"]: words(r["question"]) for r in rows(lake, "qa_extracted", "qa_id", "question") if r["question"]}
    refined = {extracted[r["qa_id"]]: r for r in rows(lake, "qa_refined", "qa_id", "question", "answer", "status", "reason")}
    assert "cut" in truth.refined.values() and set(refined) == set(truth.refined)
    for original, row in refined.items():
        if truth.refined[original] == "cut":
            assert (row["status"], row["reason"]) == (S.DROPPED, S.REASON_TRUNCATED), original
        else:
            assert row["status"] == S.KEPT and (words(row["question"]), words(row["answer"])) == truth.refined[original]
    for row in rows(lake, "qa_reasoned", "question", "distilled", "status", "reason"):
        if row["distilled"] and words(row["question"]) in truth.distilled_cut:
            assert (row["status"], row["reason"]) == (S.DROPPED, S.REASON_TRUNCATED)
    questions = {r["qa_id"]: words(r["question"]) for r in rows(lake, "external_decontaminated", "qa_id", "question")}
    annotated = {questions[r["qa_id"]]: r["status"] for r in rows(lake, "external_annotated", "qa_id", "status")}
    assert truth.annotated_cut and all(annotated[q] == S.DROPPED for q in truth.annotated_cut)
    published = {r["qa_id"] for r in rows(lake, "textbook_reasoning", "qa_id")}
    cut = {qa_id for qa_id, question in extracted.items() if truth.refined.get(question) == "cut"}
    assert published and cut and not published & cut


def test_no_verdict_label_flag_or_grade_is_misread(realistic_lake):
    lake, truth = realistic_lake.lake, realistic_lake.truth
    reasoned = {words(r["question"]): r["reasoning_verdict"] for r in rows(lake, "qa_reasoned", "question", "reasoning_verdict")}
    assert reasoned and all(reasoned[q] == v for q, v in truth.reasoning.items() if q in reasoned)
    assert {"yes", "no"} <= set(reasoned.values())

    filtered = lake.read("qa_filtered").where(F.col("call_id").isNotNull()).collect()
    assert filtered and all(
        (r["self_contradictory"], r["missing_material"], r["answer_valid"]) == truth.filter_flags[words(r["question"])] for r in filtered
    )

    questions = {r["qa_id"]: words(r["question"]) for r in rows(lake, "qa_filtered", "qa_id", "question")}
    items = {(r["benchmark"], r["item_id"]): words(r["question"]) for r in rows(lake, "benchmarks", "benchmark", "item_id", "question")}
    judged = lake.read("contamination").where(F.col("verdict").isin("yes", "no")).collect()
    read = {(questions[r["qa_id"]], items[(r["benchmark"], r["item_id"])]): r["verdict"] for r in judged}
    assert read and all(truth.same_problem[pair] == verdict for pair, verdict in read.items())
    assert "yes" in read.values() and {"changed_mind", "opening_then_conclusion", "echo"} <= truth.styles["judge"]

    external = {r["qa_id"]: words(r["question"]) for r in rows(lake, "external_decontaminated", "qa_id", "question")}
    graded = lake.read("selection_scores").where(F.col("method") == "difficulty").where(F.col("grades").isNotNull()).collect()
    assert graded
    for row in graded:
        expected = [truth.grades[(external[row["qa_id"]], i)] for i in range(len(row["grades"]))]
        assert row["grades"] == expected and row["grades_unparsed"] == 0

    labels = {r["file_name"]: (r["subject"], r["level"]) for r in csv.DictReader(resources.files("megascience.conf").joinpath("sample", "book_labels.csv").open())}
    books = {r["book_id"]: r["file_name"] for r in rows(lake, "books", "book_id", "file_name")}
    read_labels = {books[r["book_id"]]: (r["subject"], r["level"]) for r in rows(lake, "book_labels", "book_id", "subject", "level")}
    assert read_labels and all(read_labels[name] == labels[name] for name in read_labels)
