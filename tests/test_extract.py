"""The extract stage with scripted model answers that look like real ones (logic), on real Spark/Delta/MLflow."""

import json
from datetime import datetime

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from megascience.jobs.pipeline import run_pipeline
from megascience.jobs.platform.lineage import tracking_uri
from megascience.jobs.platform.settings import MAX_CONTINUATION_ROUNDS, ExtractSettings
from megascience.jobs.platform.tables import Lakehouse
from megascience.jobs.stages import extract
from megascience.jobs.testing.llm_server import ScriptedLLMServer
from megascience.schemas import status as S
from megascience.schemas.tables import CHUNKS
from tests.conftest import make_config

CHUNK_TEXT = {
    "A": "Example 1. A cart of mass 2 kg accelerates at 3 m/s^2. Find the force. Solution. F = ma = 6 N. [chunk-A]",
    "B": "Definition. A prime is a natural number greater than 1 with no divisors but 1 and itself. [chunk-B]",
    "C": "Exercise. Show that the sum of two odd numbers is even. Answer. (2a+1)+(2b+1) = 2(a+b+1). [chunk-C]",
    "D": "The opera house seats 2,000 people. [chunk-D]",
}
SUBJECTS = {"A": "physics", "B": "math", "C": "math", "D": "other"}


def chunk_rows(spark):
    now = datetime(2026, 1, 1)
    rows = [
        (f"chunk-{k}", f"book-{k}", SUBJECTS[k], 0, 1, 1, 40, text, "test", S.KEPT, S.REASON_OK, None, "r0", now)
        for k, text in CHUNK_TEXT.items()
    ]
    return spark.createDataFrame(rows, CHUNKS.schema)


def user_text(payload):
    return payload["messages"][-1]["content"]


class Answers:
    """Answers shaped like a real model's: JSON pairs, an explicit none, an answerless pair, garbage."""

    def __init__(self, c_is_fixed=False):
        self.c_is_fixed = c_is_fixed

    def __call__(self, payload):
        text = user_text(payload)
        high = "high-standard" in text
        if "[chunk-A]" in text and high:
            return json.dumps({"qa_pairs": [{"question": "A 2 kg cart accelerates at 3 m/s^2. What net force acts on it?", "answer": "F = ma = 2 × 3 = 6 N, so \\boxed{6\\text{ N}}."}]})
        if "[chunk-A]" in text:
            return json.dumps(
                {
                    "qa_pairs": [
                        {"question": "a 2 kg cart   accelerates at 3 m/s^2. What net force acts on it?", "answer": "6 N"},
                        {"question": "What is Newton's second law?", "answer": "F = ma"},
                        {"question": "What is the unit of force?", "answer": ""},
                        {"question": "What is Newton's second law?", "answer": "force equals mass times acceleration"},
                    ]
                }
            )
        if "[chunk-B]" in text and high:
            return json.dumps({"qa_pairs": []})
        if "[chunk-B]" in text:
            return "I am sorry, I cannot produce that."  # unparseable: stays parse_error (the cache keeps the answer)
        if "[chunk-C]" in text:
            if not self.c_is_fixed:
                return 503  # the endpoint is down for this chunk: an engine error, asked again next run
            return json.dumps({"qa_pairs": [{"question": f"Prove that the sum of two odd integers is even ({'high' if high else 'low'}).", "answer": "(2a+1)+(2b+1)=2(a+b+1)"}]})
        return None


def run_extract(spark, lake_root, server, *settings):
    config = make_config(lake_root, "llm.default_engine=openai", f"llm.openai.base_url={server.base_url}", "llm.openai.max_retries=0", *settings)
    lake = Lakehouse.open(spark, config)
    [report] = run_pipeline(spark, config, lake, [extract.STAGE])
    return config, lake, report


@pytest.fixture
def chunks_lake(spark, lake_root):
    lake = Lakehouse.open(spark, make_config(lake_root))
    lake.write("chunks", chunk_rows(spark))
    return lake


def test_extract_pairs_markers_and_the_retry_of_failures(spark, lake_root, chunks_lake):
    with ScriptedLLMServer(respond=Answers()) as server:
        config, lake, report = run_extract(spark, lake_root, server)
        rows = lake.read("qa_extracted").collect()
        assert len(server.requests) == 6  # 3 chunks x 2 standards: chunk D has no prompt and never reaches the model
    by_kind = {}
    for r in rows:
        by_kind.setdefault((r["chunk_id"], r["standard"]), []).append(r)

    a_high, a_low = by_kind[("chunk-A", "high")], by_kind[("chunk-A", "low")]
    assert [(r["status"], r["reason"]) for r in a_high] == [(S.KEPT, S.REASON_OK)]
    assert sorted((r["question"], r["status"], r["reason"]) for r in a_low) == [
        ("What is Newton's second law?", S.KEPT, S.REASON_OK),  # the repeated question kept its first answer
        ("What is the unit of force?", S.DROPPED, S.REASON_MISSING_ANSWER),
        ("a 2 kg cart   accelerates at 3 m/s^2. What net force acts on it?", S.KEPT, S.REASON_OK),
    ]
    assert next(r for r in a_low if r["question"] == "What is Newton's second law?")["answer"] == "F = ma"
    # the same question from both standards: two rows (dedup joins them later), ids from content
    assert a_high[0]["qa_id"] != next(r["qa_id"] for r in a_low if r["question"].startswith("a 2 kg"))
    assert [(r["status"], r["reason"], r["question"]) for r in by_kind[("chunk-B", "high")]] == [(S.DROPPED, S.REASON_NO_QA_PAIRS, None)]
    assert [(r["status"], r["reason"]) for r in by_kind[("chunk-B", "low")]] == [(S.FAILED, S.REASON_PARSE_ERROR)]
    assert [(r["status"], r["reason"]) for r in by_kind[("chunk-C", "low")]] == [(S.FAILED, S.REASON_ENGINE_ERROR)]
    assert [(r["status"], r["reason"]) for r in by_kind[("chunk-D", "high")]] == [(S.FAILED, S.REASON_PROMPT_ERROR)]
    assert "no extraction prompt for subject 'other'" in by_kind[("chunk-D", "high")][0]["detail"]
    assert all(r["run_id"] == report.run_id for r in rows)
    assert report.outcome.rows_in == 8

    run = MlflowClient(tracking_uri(config)).get_run(report.run_id)
    assert len(run.data.params["prompt.extract_physics_high.v1.sha256"]) == 64
    assert run.data.params["llm.extractor.model"] == "scripted-model"

    # the rerun retries only the failures: chunk C's failed calls are asked again and now answer (their markers
    # become superseded); chunk B's unparseable answer comes from the request cache, so it is not paid for twice
    with ScriptedLLMServer(respond=Answers(c_is_fixed=True)) as server:
        _, lake, again = run_extract(spark, lake_root, server)
        asked = sorted(user_text(p).split("[chunk-")[1][0] for p in server.requests)
    assert asked == ["C", "C"]  # D fails before any call; A and B are done
    rows = {(r["chunk_id"], r["standard"], r["question"] is None): r for r in lake.read("qa_extracted").collect()}
    assert rows[("chunk-C", "low", True)]["reason"] == S.REASON_SUPERSEDED
    assert rows[("chunk-C", "low", False)]["status"] == S.KEPT
    # D and B were retried and failed exactly as before: their rows are left as they were (no churn)
    assert rows[("chunk-D", "low", True)]["run_id"] == report.run_id
    assert (rows[("chunk-B", "low", True)]["reason"], rows[("chunk-B", "low", True)]["run_id"]) == (S.REASON_PARSE_ERROR, report.run_id)


def test_both_prompts_of_a_chunk_share_the_excerpt_prefix(spark, lake_root, chunks_lake):
    with ScriptedLLMServer(respond=Answers()) as server:
        run_extract(spark, lake_root, server, "llm.openai.json_schema=false")
        prompts = {}
        for payload in server.requests:
            if "[chunk-A]" in user_text(payload):
                prompts["high" if "high-standard" in user_text(payload) else "low"] = payload
    high, low = (p["messages"] for p in (prompts["high"], prompts["low"]))
    assert high[0] == low[0] and high[0]["role"] == "system"
    shared = len([1 for a, b in zip(high[1]["content"], low[1]["content"]) if a == b])
    assert high[1]["content"].index(CHUNK_TEXT["A"]) < shared  # the excerpt sits inside the common prefix
    assert "NO_QA_PAIRS" in high[1]["content"] and "response_format" not in prompts["high"]  # tagged-text mode


FIRST = {"question": "A 2 kg cart accelerates at 3 m/s^2. What net force acts on it?", "answer": "F = ma = 6 N."}
SECOND = {"question": "What is the unit of force in SI base units?", "answer": "1 N = 1 kg·m/s^2."}
THIRD = {"question": "What mass accelerates at 2 m/s^2 under a 6 N force?", "answer": "m = F/a = 3 kg."}


class CutOffAnswers:
    """The first answer stops at max_tokens inside the second pair; a continuation that names the first question gets
    the rest. `continuation_fails`: the continuation of the low-standard answer fails (HTTP 500)."""

    def __init__(self, continuation_fails=False):
        self.continuation_fails = continuation_fails

    def __call__(self, payload):
        text = user_text(payload)
        if "[chunk-A]" not in text:
            return json.dumps({"qa_pairs": []})
        if "cut off at its length limit" not in text:
            whole = json.dumps({"qa_pairs": [FIRST, SECOND]}, ensure_ascii=False)
            return {"content": whole[: whole.index("kg·m")], "finish_reason": "length"}
        assert f"1. {FIRST['question']}" in text and SECOND["question"] not in text
        if self.continuation_fails and "high-standard" not in text:
            return 500
        return "Continuing:\n```json\n" + json.dumps({"qa_pairs": [SECOND, THIRD]}) + "\n```"


def test_a_cut_off_extraction_keeps_its_pairs_and_a_continuation_asks_for_the_rest(spark, lake_root, chunks_lake):
    with ScriptedLLMServer(respond=CutOffAnswers(continuation_fails=True)) as server:
        _, lake, _ = run_extract(spark, lake_root, server)
    rows = [r for r in lake.read("qa_extracted").collect() if r["chunk_id"] == "chunk-A"]
    high = {r["question"]: r for r in rows if r["standard"] == "high"}
    assert {q: (r["status"], r["reason"]) for q, r in high.items()} == {
        FIRST["question"]: (S.KEPT, S.REASON_OK),
        SECOND["question"]: (S.KEPT, S.REASON_OK),  # the cut pair, given again whole by the continuation
        THIRD["question"]: (S.KEPT, S.REASON_OK),
    }
    assert high[SECOND["question"]]["answer"] == SECOND["answer"]
    first_call = high[FIRST["question"]]["call_id"]
    assert high[THIRD["question"]]["call_id"] != first_call and first_call in high[THIRD["question"]]["detail"]
    # the low-standard continuation failed: the complete pair is kept, the cut one is never kept as complete, and
    # a failed marker makes the chunk pending
    low = {(r["question"], r["status"], r["reason"]) for r in rows if r["standard"] == "low"}
    assert low == {
        (FIRST["question"], S.KEPT, S.REASON_OK),
        (SECOND["question"], S.DROPPED, S.REASON_TRUNCATED),
        (None, S.FAILED, S.REASON_ENGINE_ERROR),
    }
    calls = lake.read("llm_calls").collect()
    assert len(calls) == 2 + 2 + 4  # chunk A: 2 first answers and 2 continuations; chunks B and C: 4 answers

    with ScriptedLLMServer(respond=CutOffAnswers()) as server:
        _, lake, _ = run_extract(spark, lake_root, server)
        asked = [user_text(p) for p in server.requests]
    # only the failed continuation is asked again; the first answer comes from the request cache
    assert len(asked) == 1 and "cut off at its length limit" in asked[0] and "high-standard" not in asked[0]
    low = {(r["question"], r["status"], r["reason"]) for r in lake.read("qa_extracted").collect() if r["chunk_id"] == "chunk-A" and r["standard"] == "low"}
    assert low == {
        (FIRST["question"], S.KEPT, S.REASON_OK),
        (SECOND["question"], S.KEPT, S.REASON_OK),
        (THIRD["question"], S.KEPT, S.REASON_OK),
        (None, S.DROPPED, S.REASON_SUPERSEDED),
    }


def test_an_answer_an_older_parser_could_not_read_is_read_again_from_the_cache(spark, lake_root, chunks_lake):
    """A lake where an earlier parser left chunk A's answers as failed/parse_error rows: the rerun reads the stored
    answers with today's parser, pays for no call, and its markers become superseded."""
    latex = '```json\n{"QA_Pairs": [{"Question": "Find $\\frac{d}{dx} x^2$.", "Answer": "$2x$, so $\\boxed{2x}$",},]}\n```'
    with ScriptedLLMServer(respond=lambda payload: latex if "[chunk-A]" in user_text(payload) else json.dumps({"qa_pairs": []})) as server:
        _, lake, _ = run_extract(spark, lake_root, server)
    a_rows = lake.read("qa_extracted").where("chunk_id = 'chunk-A'")
    assert {(r["question"], r["answer"]) for r in a_rows.collect()} == {("Find $\\frac{d}{dx} x^2$.", "$2x$, so $\\boxed{2x}$")}
    # what the older parser left: a failed marker per standard, no pairs
    old = a_rows.where("status = 'kept'").withColumns(
        {"qa_id": F.sha2(F.concat_ws("\u241f", "chunk_id", "standard", F.lit("#marker")), 256), "question": F.lit(None).cast("string"),
         "answer": F.lit(None).cast("string"), "status": F.lit(S.FAILED), "reason": F.lit(S.REASON_PARSE_ERROR)}
    )
    lake.write("qa_extracted", lake.read("qa_extracted").where("chunk_id != 'chunk-A'").unionByName(old), mode="overwrite")

    with ScriptedLLMServer(respond=lambda payload: 500) as server:
        _, lake, report = run_extract(spark, lake_root, server)
        assert server.requests == []  # nothing asked: the stored answers are read again
    rows = {(r["standard"], r["question"] is None): (r["status"], r["reason"]) for r in lake.read("qa_extracted").where("chunk_id = 'chunk-A'").collect()}
    assert rows == {(s, False): (S.KEPT, S.REASON_OK) for s in extract.STANDARDS} | {(s, True): (S.DROPPED, S.REASON_SUPERSEDED) for s in extract.STANDARDS}


def test_continuation_rounds_are_bounded(lake_root):
    from megascience.jobs.platform.config import ConfigError

    assert ExtractSettings.of(make_config(lake_root)).continuation_rounds == 2
    for rounds in (-1, MAX_CONTINUATION_ROUNDS + 1):
        with pytest.raises(ConfigError, match=f"extract.continuation_rounds must be in \\[0, 10\\], got {rounds}"):
            make_config(lake_root, f"extract.continuation_rounds={rounds}")
