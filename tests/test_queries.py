"""The saved SQL queries of conf/queries run against the sample lake and say what they should."""

from megascience.jobs.cli.main import main
from megascience.jobs.cli.queries import run_query, saved_queries


def test_every_saved_query_runs_on_the_sample_lake(sample_lake):
    sample_lake.lake.register_all()
    spark = sample_lake.spark
    assert set(saved_queries()) == {"funnel_per_subject", "contamination_per_benchmark", "pages_per_method", "qa_lineage"}

    funnel = {r["subject"]: r for r in run_query(spark, "funnel_per_subject").collect()}
    assert len(funnel) == 7 and all(r["pairs"] >= r["after_dedup"] >= r["after_filter"] >= r["published"] for r in funnel.values())

    methods = {r["method"] for r in run_query(spark, "pages_per_method").collect()}
    assert methods == {"text_layer", "olmocr"}

    benchmarks = {r["benchmark"]: r for r in run_query(spark, "contamination_per_benchmark").collect()}
    assert sum(r["contaminated_questions"] for r in benchmarks.values()) >= 1

    qa_id = sample_lake.lake.read("textbook_reasoning").orderBy("qa_id").first()["qa_id"]
    lineage = run_query(spark, "qa_lineage", {"qa_id": qa_id}).collect()
    assert lineage and {r["qa_id"] for r in lineage} == {qa_id}
    assert all(r["file_name"].endswith(".pdf") and r["page_text_start"] for r in lineage)


def test_query_command_lists_and_runs(sample_lake, capsys):
    assert main(["query", "--set", f"lake.root={sample_lake.root}"]) == 0
    assert "qa_lineage" in capsys.readouterr().out
    assert main(["query", "pages_per_method", "--set", f"lake.root={sample_lake.root}"]) == 0
    assert "olmocr" in capsys.readouterr().out
