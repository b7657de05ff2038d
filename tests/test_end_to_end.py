"""The whole pipeline over the sample corpus, every LLM role played by the answer key (jobs/testing/scripted_model.py):
real Spark, real Delta tables, real MLflow. Plumbing: the key answers exactly in the format asked, as no real model
does; how real output is read is tested with tests/realistic_model.py (tests/test_realistic_model.py).

The `sample_lake` fixture (tests/conftest.py) runs it once per test session; the SQL queries and notebooks tests
reuse the lake it leaves.
"""

from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from megascience.jobs.cli.funnel import funnel_from_lake
from megascience.jobs.pipeline import STAGES, run_pipeline
from megascience.jobs.platform.lineage import tracking_uri
from megascience.schemas import status as S

SUBJECTS = {"math", "physics", "chemistry", "biology", "medicine", "cs", "economics"}


def test_every_stage_filled_its_table(sample_lake):
    lake = sample_lake.lake
    for stage in STAGES:
        assert lake.exists(stage.output), stage.name
    books = {r["file_name"]: r["status"] for r in lake.read("books").collect()}
    assert sum(s == S.KEPT for s in books.values()) == 8
    pages = lake.read("pages").join(lake.read("books").select("book_id", "file_name"), "book_id")
    by_method = {(r["file_name"], r["method"]) for r in pages.select("file_name", "method").distinct().collect()}
    assert ("scanned_physics_notes.pdf", "olmocr") in by_method and ("math_calculus.pdf", "text_layer") in by_method
    chunk_subjects = {r["subject"] for r in lake.read("chunks").where(F.col("status") == S.KEPT).collect()}
    assert chunk_subjects == SUBJECTS


def test_planted_near_duplicates_share_a_cluster(sample_lake, planted):
    lake = sample_lake.lake
    extracted = lake.read("qa_extracted").where(F.col("question").isNotNull()).select("qa_id", "question")
    clusters = extracted.join(lake.read("qa_clusters").select("qa_id", "cluster_id"), "qa_id").collect()
    cluster_of = {}
    for row in clusters:
        cluster_of.setdefault(" ".join(row["question"].split()), set()).add(row["cluster_id"])
    for pair in planted["near_duplicates"]:
        a = cluster_of[" ".join(pair["a"]["text"].split())]
        b = cluster_of[" ".join(pair["b"]["text"].split())]
        assert a & b, pair["id"]


def test_planted_rephrasings_are_removed_as_contaminated(sample_lake, planted):
    lake = sample_lake.lake
    matched = lake.read("contamination").where(F.col("verdict") == "yes").select("qa_id", "item_id")
    questions = lake.read("qa_decontaminated").select("qa_id", "question", "status", "reason")
    found = {(" ".join(r["question"].split()), r["item_id"]) for r in questions.join(matched, "qa_id").collect()}
    published = {" ".join(r["question"].split()) for r in lake.read("textbook_reasoning").collect()}
    caught = 0
    for case in planted["rephrasings"]:
        text = " ".join(case["text"].split())
        if any(question.startswith(text[:60]) and item == case["benchmark_item"] for question, item in found):
            caught += 1
        assert not any(q.startswith(text[:60]) for q in published), case["id"]
    assert caught >= 1


def test_funnel_shrinks_and_lineage_reaches_every_stage(sample_lake):
    lake, config = sample_lake.lake, sample_lake.config
    total = next(r for r in funnel_from_lake(lake).collect() if r["subject"] == "total")
    steps = [total["pairs"], total["after_dedup"], total["after_filter"], total["after_decontamination"], total["published"]]
    assert steps[0] > 0 and steps == sorted(steps, reverse=True) and steps[-1] > 0
    client = MlflowClient(tracking_uri(config))
    for stage in STAGES:
        run_id = lake.history(stage.output)[0].user_metadata["mlflow_run_id"]
        assert client.get_run(run_id).info.status == "FINISHED"


def test_a_rerun_changes_nothing_and_calls_no_model(sample_lake):
    lake = sample_lake.lake
    versions = {stage.output: lake.version(stage.output) for stage in STAGES}
    calls = len(sample_lake.server.requests)
    reports = run_pipeline(sample_lake.spark, sample_lake.config, lake, list(STAGES))
    assert len(sample_lake.server.requests) == calls
    assert {stage.output: lake.version(stage.output) for stage in STAGES} == versions
    assert all(report.outcome.commit is None for report in reports)


def test_the_mixture_holds_every_textbook_pair_and_the_selected_external_questions(sample_lake):
    lake = sample_lake.lake
    sources = {r["source"]: r["count"] for r in lake.read("megascience").groupBy("source").count().collect()}
    assert sources.pop("textbook_reasoning") == lake.count("textbook_reasoning")
    assert set(sources) == {"NaturalReasoning-sample", "Nemotron-Science-sample"}
    scores = lake.read("selection_scores")
    for dataset, method in sample_lake.config["select"]["datasets"].items():
        mine = scores.where(F.col("dataset") == dataset)
        survivors = mine.where((F.col("method") == "difficulty") & F.col("reason").isin(S.REASON_OK, S.REASON_METHOD_NOT_CHOSEN))
        kept = mine.where(F.col("status") == S.KEPT)
        assert 0 < kept.count() == survivors.count() < mine.where(F.col("method") == method).count(), dataset
        assert {r["method"] for r in kept.collect()} == {method}
    annotated = lake.read("external_annotated").where(F.col("status") == S.KEPT).count()
    assert annotated == sum(sources.values())


def test_classify_runs_before_ocr_and_the_typeset_math_page_goes_to_olmocr(sample_lake):
    lake = sample_lake.lake
    names = {r["book_id"]: r["file_name"] for r in lake.read("books").collect()}
    kept_labels = {r["book_id"] for r in lake.read("book_labels").where(F.col("status") == S.KEPT).collect()}
    paged = {r["book_id"] for r in lake.read("pages").select("book_id").distinct().collect()}
    assert paged == kept_labels  # only books classify kept are OCR'd
    math = [r for r in lake.read("pages").collect() if names[r["book_id"]] == "math_calculus.pdf"]
    routed = [r for r in math if r["method"] == "olmocr"]
    assert len(routed) == 1 and routed[0]["detail"].startswith("text layer: flattened math:") and routed[0]["status"] == S.KEPT
    assert {r["method"] for r in math if r is not routed[0]} == {"text_layer"}
    books = {r["file_name"]: r for r in lake.read("books").collect()}
    assert books["publisher_preview_optics.pdf"]["rights_field"] == "manifest.access"
    assert books["scanned_physics_notes.pdf"]["reason"] == S.REASON_NO_RIGHTS_METADATA


def test_every_mixture_row_has_a_subject_and_nemotron_is_graded_against_an_extracted_reference(sample_lake):
    lake = sample_lake.lake
    mixture = lake.read("megascience").collect()
    assert mixture and all(r["subject"] in SUBJECTS for r in mixture)
    annotated = lake.read("external_annotated").where(F.col("status") == S.KEPT).collect()
    sources = {(r["dataset"], r["subject_source"]) for r in annotated}
    assert ("NaturalReasoning-sample", "model") in sources and ("Nemotron-Science-sample", "dataset") in sources
    nemotron = lake.read("selection_scores").where((F.col("dataset") == "Nemotron-Science-sample") & (F.col("method") == "difficulty"))
    graded = nemotron.where(F.col("samples") > 0).collect()
    assert graded and all(r["reference_method"] in ("model", "boxed", "final_answer_line") and r["reference_answer"] for r in graded)
    extracted = lake.read("llm_calls").where(F.col("role") == "reference_extractor").count()
    assert extracted >= len([r for r in graded if r["reference_method"] == "model"])


def test_funnel_beside_the_paper_llm_usage_in_mlflow_and_the_ablation_exports(sample_lake, capsys, tmp_path):
    from megascience.jobs.cli.main import main
    from megascience.jobs.platform.lineage import CODE_VERSION_TAG

    config = sample_lake.config
    settings = ["--set", f"lake.root={sample_lake.root}", "--set", f"chunk.tokenizer={config['chunk']['tokenizer']}"]
    assert main(["funnel", "--paper", *settings]) == 0
    out = capsys.readouterr().out
    assert "after_dedup_%  after_dedup_%_paper" in out and "68.7" in out  # biology: 71,693 of 104,320 after dedup
    assert "chunks_with_a_pair" in out and "546134" in out and "extractor" in out and "mean_answer_tokens" in out

    client = MlflowClient(tracking_uri(config))
    run = client.get_run(sample_lake.lake.history("qa_extracted")[0].user_metadata["mlflow_run_id"])
    assert run.data.metrics["llm.extractor.calls"] > 0 and run.data.metrics["llm.extractor.prompt_tokens"] > 0
    assert run.data.tags[CODE_VERSION_TAG].startswith(("git:", "package:"))
    assert run.data.params["llm.extractor.revision"] == "served by an endpoint (its revision is the server's)"

    for subset in ("selection:difficulty", "unrefined"):
        target = tmp_path / subset.replace(":", "_")
        assert main(["export", "--subset", subset, "--out", str(target), *settings]) == 0
        card = (target / "README.md").read_text()
        assert ("selection ablation, method difficulty" in card) if subset != "unrefined" else ("refinement ablation" in card)
        assert "## Beside the paper" in card and list((target / "data").glob("*.parquet"))
    assert main(["export", "--subset", "selection:length", "--out", str(tmp_path / "x"), *settings]) == 2
    assert "not scored by length; rerun select with select.score_all_methods=true" in capsys.readouterr().err
