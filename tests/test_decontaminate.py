"""Decontamination: benchmark sources, retrieval with real MiniLM embeddings and faiss through Spark, a scripted
judge (verdicts, traps, failures), incremental runs, the report; and the judge role on the vllm smoke model."""

import json
import re
import shutil
import sys
from datetime import datetime
from types import SimpleNamespace

import pytest
import yaml
from pyspark.sql import functions as F

from megascience.jobs.cli.main import main
from megascience.jobs.pipeline import run_pipeline
from megascience.jobs.platform.lineage import describe_run
from megascience.jobs.platform.sources import SourceError, parse_source
from megascience.jobs.platform.tables import Lakehouse
from megascience.jobs.stages import benchmarks, decontaminate, drop_contaminated
from megascience.jobs.stages.benchmarks import BENCHMARK_SOURCES, configured_sources, item_row
from megascience.jobs.testing.llm_server import ScriptedLLMServer
from megascience.schemas import status as S
from megascience.schemas.tables import CONTAMINATION, QA_FILTERED
from tests.conftest import ROOT, make_config

NOW = datetime(2026, 1, 1)
PLANTED = yaml.safe_load((ROOT / "conf" / "sample" / "planted.yaml").read_text())
SAMPLE = [json.loads(line) for line in (ROOT / "conf/sample/benchmarks/benchmark_sample.jsonl").read_text().splitlines()]
STAGES = [benchmarks.STAGE, decontaminate.STAGE, drop_contaminated.STAGE]
REPHRASED = {f"qa-{p['id']}": p["benchmark_item"] for p in PLANTED["rephrasings"]}
# Distractors: the near-duplicate book questions (no benchmark item restates them), each with its judge behaviour.
DISTRACTORS = {f"qa-{pair['id']}": pair["a"]["text"] for pair in PLANTED["near_duplicates"]}
NOW_TRAP, NOTE_TRAP, ALL_UNPARSED, SOME_UNPARSED, FLAKY, PLAIN = sorted(DISTRACTORS)
NEW_QUESTION = PLANTED["missing_material"][0]["text"]
# A benchmark added later: an item that restates the PLAIN distractor (a rephrasing) and an unrelated one.
NEW_BENCHMARK = [
    {
        "id": "NEW-001",
        "question": "A company earns P(q) = -2q^2 + 120q - 1000 dollars of profit on q units. "
        "How many units maximise its profit, and what is that profit?",
    },
    {"id": "NEW-002", "question": "Which organelle packages proteins into vesicles for secretion?"},
]


def qa_row(qa_id, question):
    qa = (qa_id, "chunk-1", "book-1", "physics", "low", question, "an answer")
    return (*qa, False, False, True, None, S.KEPT, S.REASON_OK, None, "r0", NOW)


def block(prompt, title):
    return re.search(rf"{title}:\n<<<\n(.*?)\n>>>", prompt, re.S).group(1)


class ScriptedJudge:
    """The judge endpoint: yes for planted rephrasings (and NEW-001 for PLAIN), traps and failures per distractor."""

    def __init__(self, questions, items, fail_flaky=True):
        self.qa_of = {text: qa_id for qa_id, text in questions.items()}
        self.item_of = {text.split("\n")[0]: item_id for item_id, text in items.items()}
        self.fail_flaky, self.pairs, self.some_unparsed = fail_flaky, [], None

    def __call__(self, payload):
        prompt = payload["messages"][-1]["content"]
        qa_id = self.qa_of[block(prompt, "Training question")]
        item_id = self.item_of[block(prompt, "Benchmark question").split("\n")[0]]
        self.pairs.append((qa_id, item_id))
        if REPHRASED.get(qa_id) == item_id or (qa_id, item_id) == (PLAIN, "NEW-001"):
            return '{"verdict": "yes"}'
        if qa_id == NOW_TRAP:
            return "Now I compare the two: the given data differ.\nVerdict: no"
        if qa_id == NOTE_TRAP:
            return 'Note: both are about heat, but the quantities differ. {"verdict": "no"}'
        if qa_id == ALL_UNPARSED:
            return "Note: it is hard to say."
        if qa_id == SOME_UNPARSED and self.some_unparsed in (None, item_id):
            self.some_unparsed = item_id
            return "Note that these two are not quite the same."
        if qa_id == FLAKY and self.fail_flaky:
            return 500
        return '{"verdict": "no"}'


def settings(lake_root, server, *extra):
    return make_config(
        lake_root,
        "llm.default_engine=openai",
        f"llm.openai.base_url={server.base_url}",
        "llm.openai.max_retries=0",
        "decontamination.cosine_floor=0.3",
        *extra,
    )


def sample_texts():
    return {row["item_id"]: row["question"] for row in SAMPLE}


@pytest.fixture(scope="module")
def judged_lake(spark, tmp_path_factory):
    """benchmarks -> decontaminate -> drop_contaminated over the planted rephrasings and the distractors."""
    root = tmp_path_factory.mktemp("decontaminated") / "lake"
    questions = {**{qa_id: p["text"] for qa_id, p in zip(REPHRASED, PLANTED["rephrasings"])}, **DISTRACTORS}
    judge = ScriptedJudge(questions, sample_texts())
    with ScriptedLLMServer(respond=judge) as server:
        config = settings(root, server)
        lake = Lakehouse.open(spark, config)
        lake.write("qa_filtered", spark.createDataFrame([qa_row(q, t) for q, t in questions.items()], QA_FILTERED.schema))
        reports = run_pipeline(spark, config, lake, STAGES)
    return SimpleNamespace(root=root, config=config, lake=lake, reports=reports, judge=judge, questions=questions)


def test_item_rows_format_options_and_fail_on_missing_fields():
    source = parse_source(
        "quiz",
        {"file": "quiz.jsonl", "fields": {"item_id": "id", "question": "q", "options": "choices", "answer": "a",
                                          "subset": "meta.topic"}},
        "test",
        BENCHMARK_SOURCES,
    )
    record = {"id": 7, "q": " Which is a noble gas? ", "choices": ["Ne", "Na"], "a": 0, "meta": {"topic": "chem"}}
    row = item_row(source, None, "line 1", record)
    assert row["question"] == "Which is a noble gas?\nA. Ne\nB. Na"
    assert (row["item_id"], row["answer"], row["subset"], row["status"]) == ("7", "0", "chem", S.KEPT)
    record = {"id": 8, "q": "Pick one", "choices": {"A": "x", "B": "y"}, "a": "A", "meta": {"topic": "t"}}
    labelled = item_row(source, None, "line 2", record)
    assert labelled["question"] == "Pick one\nA. x\nB. y"

    missing = item_row(source, None, "line 3", {"id": 9, "choices": [], "a": "A", "meta": {"topic": "t"}})
    assert (missing["status"], missing["reason"]) == (S.FAILED, S.REASON_BENCHMARK_MISSING_FIELD)
    assert missing["detail"] == "line 3: no field 'q' (the question)" and missing["raw"]
    empty = item_row(source, None, "line 4", {"id": 10, "q": "  ", "choices": [], "a": "A", "meta": {"topic": "t"}})
    assert empty["detail"] == "line 4: empty question (field 'q')"
    nested = item_row(source, None, "line 5", {"id": 11, "q": "Q", "choices": [], "a": "A", "meta": {}})
    assert nested["detail"] == "line 5: no field 'meta.topic' (the subset)"

    with pytest.raises(SourceError, match="give exactly one of file and hf"):
        both = {"file": "a.jsonl", "hf": "org/x", "split": "test", "fields": {"question": "q"}}
        parse_source("both", both, "test", BENCHMARK_SOURCES)
    with pytest.raises(SourceError, match="unknown field"):
        parse_source("typo", {"file": "a.jsonl", "fields": {"question": "q", "anwser": "a"}}, "test", BENCHMARK_SOURCES)


def test_benchmarks_stage_loads_good_records_and_records_bad_ones(spark, lake_root, tmp_path, monkeypatch):
    bad_file = tmp_path / "quiz.jsonl"
    bad_file.write_text(
        "\n".join(
            [
                json.dumps({"id": "q1", "question": "What is the SI unit of force?", "options": ["newton", "joule"]}),
                json.dumps({"id": "q2", "options": ["a", "b"]}),  # no question
                "{not json",
                json.dumps({"question": "A question without its id", "options": []}),
                json.dumps({"id": "q1", "question": "Another item claiming id q1", "options": []}),
                json.dumps({"id": "q3", "question": "What is the SI unit of energy?", "options": None}),
            ]
        )
    )
    sources = tmp_path / "benchmarks.yaml"
    sources.write_text(
        yaml.safe_dump(
            {
                "sources": {
                    "benchmark_sample": {
                        "file": "conf:sample/benchmarks/benchmark_sample.jsonl",
                        "fields": {f: f for f in ("benchmark", "subset", "split", "item_id", "question", "options", "answer")},
                    },
                    "quiz": {
                        "file": str(bad_file),
                        "split": "test",
                        "fields": {"item_id": "id", "question": "question", "options": "options"},
                    },
                    "hub": {"hf": "org/some-benchmark", "split": "test", "fields": {"question": "question"}},
                }
            }
        )
    )
    config = make_config(lake_root, f"decontamination.sources_file={sources}", "decontamination.benchmarks=[benchmark_sample, quiz]")
    lake = Lakehouse.open(spark, config)
    [report] = run_pipeline(spark, config, lake, [benchmarks.STAGE])
    rows = {(r["benchmark"], r["item_id"], r["reason"]): r for r in lake.read("benchmarks").collect()}
    assert report.outcome.rows_in == 30 and (report.outcome.rows_kept, report.outcome.rows_failed) == (26, 4)
    assert rows[("quiz", "q1", S.REASON_OK)]["question"] == "What is the SI unit of force?\nA. newton\nB. joule"
    assert rows[("quiz", "q3", S.REASON_OK)]["question"] == "What is the SI unit of energy?"
    failed = sorted((r["item_id"] or "", r["reason"], r["detail"]) for r in rows.values() if r["status"] == S.FAILED)
    assert [f[:2] for f in failed] == [
        ("", S.REASON_BENCHMARK_MISSING_FIELD),
        ("", S.REASON_BENCHMARK_UNREADABLE_RECORD),
        ("q1", S.REASON_DUPLICATE_ITEM_ID),  # the first item read with id q1 keeps it
        ("q2", S.REASON_BENCHMARK_MISSING_FIELD),
    ], failed
    assert failed[0][2] == "line 4: no field 'id' (the item_id)" and failed[1][2].startswith("line 3: not JSON")
    assert failed[2][2].startswith("item id q1 of quiz is held by item ")
    assert failed[3][2] == "line 2: no field 'question' (the question)"
    sample = rows[("MMLU-sample", "MMLU-sample-001", S.REASON_OK)]
    assert sample["question"].endswith("\nA. 14.7 m\nB. 29.4 m\nC. 44.1 m\nD. 88.2 m") and sample["answer"] == "C"
    assert (sample["subset"], sample["split"]) == ("college_physics", "test")
    assert sample["source"] == "conf:sample/benchmarks/benchmark_sample.jsonl"

    [again] = run_pipeline(spark, config, lake, [benchmarks.STAGE])
    assert again.outcome.rows_in == 0 and again.outcome.commit is None  # every record is already a row

    hub = make_config(lake_root, f"decontamination.sources_file={sources}", "decontamination.benchmarks=[hub]")
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails as where it is not installed
    with pytest.raises(SourceError, match=r"needs the `datasets` library, which is not installed here"):
        run_pipeline(spark, hub, lake, [benchmarks.STAGE])
    with pytest.raises(SourceError, match="decontamination.benchmarks: MMLU not in"):
        configured_sources(make_config(lake_root, f"decontamination.sources_file={sources}", "decontamination.benchmarks=[MMLU]"))


def test_planted_rephrasings_are_in_the_top5_of_their_item(judged_lake):
    pairs = judged_lake.lake.read("contamination")
    planted = {(r["qa_id"], r["item_id"]): r for r in pairs.collect() if REPHRASED.get(r["qa_id"]) == r["item_id"]}
    assert set(planted) == set(REPHRASED.items())
    ranks = {qa_id: row["rank"] for (qa_id, _), row in planted.items()}
    print("rank of the planted item among all benchmarks:", ranks)
    assert all(rank <= 5 for rank in ranks.values())
    assert all(row["verdict"] == "yes" for row in planted.values())
    # every question has the top 5 items of each of the 4 benchmarks, ranked 1..20 over all of them
    per_question = pairs.groupBy("qa_id").agg(F.count("*").alias("n"), F.max("rank").alias("last")).collect()
    assert {(r["n"], r["last"]) for r in per_question} == {(20, 20)} and len(per_question) == len(judged_lake.questions)


def test_verdicts_traps_failures_and_skipped_pairs(judged_lake, capsys):
    lake = judged_lake.lake
    pairs = {(r["qa_id"], r["item_id"]): r for r in lake.read("contamination").collect()}
    decided = {r["qa_id"]: r for r in lake.read("qa_decontaminated").collect()}
    outcome = {qa_id: (r["status"], r["reason"]) for qa_id, r in decided.items()}
    assert outcome == {
        **{qa_id: (S.DROPPED, S.REASON_CONTAMINATED) for qa_id in REPHRASED},
        NOW_TRAP: (S.KEPT, S.REASON_OK),
        NOTE_TRAP: (S.KEPT, S.REASON_OK),
        PLAIN: (S.KEPT, S.REASON_OK),
        ALL_UNPARSED: (S.FAILED, S.REASON_ALL_UNPARSED),
        SOME_UNPARSED: (S.FAILED, S.REASON_SOME_UNPARSED),
        FLAKY: (S.FAILED, S.REASON_JUDGE_ERROR),
    }
    for qa_id, item_id in REPHRASED.items():
        assert decided[qa_id]["contaminated"] is True and decided[qa_id]["matched_items"][0]["item_id"] == item_id
    assert decided[PLAIN]["contaminated"] is False and decided[FLAKY]["contaminated"] is None
    assert decided[ALL_UNPARSED]["pairs_unparsed"] == decided[ALL_UNPARSED]["pairs_judged"] > 0
    assert decided[SOME_UNPARSED]["pairs_unparsed"] == 1 < decided[SOME_UNPARSED]["pairs_judged"]

    judged_verdicts = [(q, r["verdict"]) for (q, _), r in pairs.items() if r["verdict"] != "skipped"]
    verdicts = {qa_id: {verdict for q, verdict in judged_verdicts if q == qa_id} for qa_id in DISTRACTORS}
    assert verdicts[NOW_TRAP] == verdicts[NOTE_TRAP] == {"no"}  # "Now" and "Note" are never read as no...
    assert verdicts[ALL_UNPARSED] == {"unparsed"}  # ...nor is a "Note" without a decision
    assert verdicts[FLAKY] == {None}
    flaky = [r for (q, _), r in pairs.items() if q == FLAKY and r["verdict"] is None]
    assert {(r["status"], r["reason"]) for r in flaky} == {(S.FAILED, "engine_error")}

    # the judge saw exactly the pairs ranked in the top 5 with cosine >= 0.3, once each; the rest are skipped rows
    judged = {k for k, r in pairs.items() if r["verdict"] != "skipped"}
    assert sorted(judged_lake.judge.pairs) == sorted(judged)
    assert all((r["rank"] <= 5) and (r["cosine"] >= 0.3) for k, r in pairs.items() if k in judged)
    skipped = {r["reason"] for k, r in pairs.items() if k not in judged}
    assert skipped == {S.REASON_OUTSIDE_TOP_K, S.REASON_BELOW_COSINE_FLOOR}
    assert all(r["status"] == S.KEPT and r["call_id"] is None for k, r in pairs.items() if k not in judged)
    assert {r["judge_model"] for k, r in pairs.items() if k in judged} == {"scripted-model"}

    decontaminate_run = next(r for r in judged_lake.reports if r.stage == "decontaminate").run_id
    metrics = describe_run(judged_lake.config, decontaminate_run).metrics
    assert metrics["matched_questions.MMLU-sample"] == 2 and metrics["matched_questions.MedQA-sample"] == 2
    assert metrics["judge_calls"] == len(judged)

    assert main(["contamination", "--samples", "1", "--set", f"lake.root={judged_lake.root}"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^GSM8K-sample\s+6\s+14\s+\d+\s+2\s+\d+\s+\d+\s+2$", out, re.M), out
    assert "MedQA-sample MedQA-sample-006  cosine 0.9" in out and "training:  An intravenous antibiotic" in out


def test_incremental_new_question_new_benchmark_and_rerun(judged_lake, spark, tmp_path):
    root = shutil.copytree(judged_lake.root, tmp_path / "lake")
    new_file = tmp_path / "new_benchmark.jsonl"
    new_file.write_text("\n".join(json.dumps(item) for item in NEW_BENCHMARK))
    sources = tmp_path / "benchmarks.yaml"
    catalogue = yaml.safe_load((ROOT / "conf" / "benchmarks.yaml").read_text())
    catalogue["sources"]["new_bench"] = {"file": str(new_file), "split": "test", "fields": {"item_id": "id", "question": "question"}}
    sources.write_text(yaml.safe_dump(catalogue))
    questions = {**judged_lake.questions, "qa-new": NEW_QUESTION}
    items = {**sample_texts(), **{item["id"]: item["question"] for item in NEW_BENCHMARK}}

    # a new question: only its own pairs (and the failed calls of the flaky one) go to the judge
    judge = ScriptedJudge(questions, items, fail_flaky=False)
    with ScriptedLLMServer(respond=judge) as server:
        config = settings(root, server)
        lake = Lakehouse.open(spark, config)
        lake.merge("qa_filtered", spark.createDataFrame([qa_row("qa-new", NEW_QUESTION)], QA_FILTERED.schema))
        reports = run_pipeline(spark, config, lake, STAGES)
    assert {q for q, _ in judge.pairs} == {"qa-new", FLAKY}
    retried = (F.col("qa_id") == FLAKY) & (F.col("reason") == S.REASON_DIFFERENT_PROBLEM)
    flaky_pairs = lake.read("contamination").where(retried).count()
    assert len([p for p in judge.pairs if p[0] == FLAKY]) == flaky_pairs > 0
    decided = {r["qa_id"]: (r["status"], r["reason"]) for r in lake.read("qa_decontaminated").collect()}
    assert decided["qa-new"] == decided[FLAKY] == (S.KEPT, S.REASON_OK)
    assert [r.outcome.rows_in for r in reports][0] == 0 and reports[2].outcome.rows_in == 2  # two new decisions

    # a new benchmark: every question is searched against it, and only its pairs go to the judge
    judge = ScriptedJudge(questions, items)
    with ScriptedLLMServer(respond=judge) as server:
        added = (f"decontamination.sources_file={sources}", "decontamination.benchmarks=[benchmark_sample, new_bench]")
        config = settings(root, server, *added)
        reports = run_pipeline(spark, config, lake, STAGES)
        assert reports[0].outcome.rows_in == 2  # only the new benchmark's items
        assert judge.pairs and {item for _, item in judge.pairs} <= {"NEW-001", "NEW-002"}
        new_pairs = lake.read("contamination").where(F.col("benchmark") == "new_bench")
        assert new_pairs.select("qa_id").distinct().count() == len(questions)
        assert new_pairs.where(F.col("rank") > 20).count() > 0  # ranked among the 20 earlier candidates
        plain = lake.read("qa_decontaminated").where(F.col("qa_id") == PLAIN).first()
        assert (plain["status"], plain["reason"]) == (S.DROPPED, S.REASON_CONTAMINATED)
        assert [(m["benchmark"], m["item_id"]) for m in plain["matched_items"]] == [("new_bench", "NEW-001")]
        assert plain["benchmarks_checked"] == ["GPQA-sample", "GSM8K-sample", "MMLU-sample", "MedQA-sample", "new_bench"]

        # a rerun: nothing to search, no judge call (unparsed verdicts come back from the request cache), no change
        calls, versions = len(server.requests), {t: lake.version(t) for t in ("benchmarks", "qa_decontaminated")}
        reports = run_pipeline(spark, config, lake, STAGES)
        assert len(server.requests) == calls
        assert [r.outcome.rows_in for r in reports] == [0, decided_failures(lake), 0]
        assert {t: lake.version(t) for t in versions} == versions


def decided_failures(lake):
    """Pairs still failed (the unparsed ones): retried by every run, answered by the request cache."""
    return lake.read("contamination").where(F.col("status") == S.FAILED).count()


def test_question_decisions_under_the_keep_policy(spark):
    ctx = SimpleNamespace(run_id="run-1", started_at=NOW)
    def pair(qa, bench, verdict, status=S.KEPT):
        return (qa, bench, "i-" + qa + bench, 1, 1, 0.5, verdict, "m", None, None, status, "r", None, "r0", NOW)

    pairs = spark.createDataFrame(
        [
            pair("q-unparsed", "B1", "unparsed", S.FAILED),
            pair("q-unparsed", "B2", "unparsed", S.FAILED),
            pair("q-partial", "B1", "no"),  # B2 not searched yet: no decision
        ],
        CONTAMINATION.schema,
    )
    questions = spark.createDataFrame([qa_row("q-unparsed", "x"), qa_row("q-partial", "y")], QA_FILTERED.schema)
    counts = drop_contaminated.verdict_counts(pairs, ["B1", "B2"])
    kept = {r["qa_id"]: r for r in drop_contaminated.decided_questions(questions, counts, 2, "keep", ctx).collect()}
    assert set(kept) == {"q-unparsed"}
    unparsed = kept["q-unparsed"]
    assert (unparsed["status"], unparsed["contaminated"], unparsed["pairs_unparsed"]) == (S.KEPT, False, 2)
    [excluded] = drop_contaminated.decided_questions(questions, counts, 2, "exclude", ctx).collect()
    assert (excluded["status"], excluded["reason"]) == (S.FAILED, S.REASON_ALL_UNPARSED)
    assert excluded["detail"] == "none of the 2 verdicts could be read"


def test_judge_role_on_the_vllm_smoke_model(spark, lake_root, smoke_model, tmp_path):
    """Plumbing with a real engine: every judged pair comes back with a verdict or as unparsed, none with an error."""
    from tests.test_llm_vllm import vllm_settings

    config = make_config(
        lake_root, *vllm_settings(smoke_model, tmp_path / "vllm"), "llm.vllm.max_model_len=4096", "llm.roles.judge.max_tokens=24"
    )
    lake = Lakehouse.open(spark, config)
    first = PLANTED["rephrasings"][2]
    rows = [qa_row("qa-rp3", first["text"]), qa_row("qa-other", PLANTED["near_duplicates"][0]["a"]["text"])]
    lake.write("qa_filtered", spark.createDataFrame(rows, QA_FILTERED.schema))
    run_pipeline(spark, config, lake, STAGES)
    judged = lake.read("contamination").where(F.col("reason") != S.REASON_OUTSIDE_TOP_K).collect()
    assert len(judged) == 10 and {r["judge_model"] for r in judged} == {str(smoke_model)}
    outcomes = [(r["verdict"], r["detail"]) for r in judged]
    assert all(r["verdict"] in ("yes", "no", "unparsed") and r["call_id"] for r in judged), outcomes
    assert all((r["status"], r["reason"]) != (S.FAILED, "engine_error") for r in judged)
    statuses = {r["qa_id"]: r["status"] for r in lake.read("qa_decontaminated").collect()}
    assert set(statuses) == {"qa-rp3", "qa-other"}
