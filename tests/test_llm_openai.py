"""The generate path with the openai engine against a scripted local endpoint: statuses, retries, cache, batches."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from pyspark.sql.types import StringType, StructField, StructType

from jobs.llm import LlmGateway, resolve_role
from jobs.tables import Lakehouse
from tests.conftest import ROOT, make_config
from tests.llm_server import ScriptedLLMServer
from udfs.parsers import parse_json_object

ANSWER = StructType([StructField("answer", StringType())])


def ask(row):
    if row["text"] is None:
        raise ValueError("no text to ask about")
    return [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": row["text"]}]


def parse_answer(text, finish_reason):
    return parse_json_object(text, {"type": "object", "required": ["answer"]})


def gateway(spark, lake_root, server, *settings, run_id="run-1"):
    config = make_config(
        lake_root,
        "llm.default_engine=openai",
        f"llm.openai.base_url={server.base_url}",
        "llm.openai.max_retries=2",
        "llm.openai.timeout_s=1.0",
        "llm.batch_rows=2",
        *settings,
    )
    return LlmGateway(spark, config, Lakehouse.open(spark, config), run_id, progress=lambda message: None)


def questions(spark, *texts):
    return spark.createDataFrame([(f"q{i}", t) for i, t in enumerate(texts)], "id string, text string")


def test_every_row_comes_back_with_a_status(spark, lake_root):
    texts = ["what is 2+2", "name a noble gas", "[429-once] retry me", "[500] always fails", "[slow] too slow", "[malformed] body", None]
    with ScriptedLLMServer() as server:
        llm = gateway(spark, lake_root, server)
        rows = {r["id"]: r for r in llm.generate(questions(spark, *texts), "judge", ask, parse_answer, ANSWER).collect()}
        assert len(rows) == len(texts)
        assert {k: r["llm_status"] for k, r in rows.items()} == {
            "q0": "ok",
            "q1": "ok",
            "q2": "ok",
            "q3": "engine_error",
            "q4": "engine_error",
            "q5": "engine_error",
            "q6": "prompt_error",
        }
        assert rows["q0"]["answer"] == "WHAT IS 2+2" and rows["q0"]["llm_model"] == "scripted-model"
        assert rows["q2"]["answer"] == "[429-ONCE] RETRY ME"
        assert "InternalServerError" in rows["q3"]["llm_error"]
        assert "Timeout" in rows["q4"]["llm_error"]
        assert "no text to ask about" in rows["q6"]["llm_error"] and rows["q6"]["llm_call_id"] is None
        assert rows["q0"]["llm_prompt_tokens"] == 3 and rows["q0"]["llm_completion_tokens"] == 3
        assert server.counts["[429-once] retry me"] == 2  # one 429, one success
        assert server.counts["[500] always fails"] == 3  # the first try and two retries
        # structured output was asked for through response_format
        assert all(r.get("response_format") is None for r in server.requests)  # no schema given to generate here

        calls = {r["prompt"]: r for r in llm.lake.read("llm_calls").collect()}
        assert len(calls) == 6 and sum(r["status"] == "ok" for r in calls.values()) == 3
        assert llm.stats["judge"].calls_made == 6 and llm.stats["judge"].calls_failed == 3
        assert llm.stats["judge"].batches == len(llm.lake.history("llm_calls")) >= 3


def test_rerun_takes_answers_from_the_cache_and_retries_failures(spark, lake_root):
    texts = ["alpha", "beta", "alpha", "[500] broken"]  # a repeated prompt is one call
    with ScriptedLLMServer() as server:
        first = gateway(spark, lake_root, server)
        first.generate(questions(spark, *texts), "judge", ask, parse_answer, ANSWER).collect()
        assert server.counts["alpha"] == 1 and first.stats["judge"].calls_made == 3
        version = first.lake.version("llm_calls")

        second = gateway(spark, lake_root, server, run_id="run-2")
        rows = second.generate(questions(spark, *texts), "judge", ask, parse_answer, ANSWER).collect()
        assert server.counts["alpha"] == 1 and server.counts["beta"] == 1  # served from llm_calls
        assert server.counts["[500] broken"] == 6  # the failed call was tried again (3 attempts each run)
        assert second.stats["judge"].calls_made == 1
        assert sorted(r["llm_status"] for r in rows) == ["engine_error", "ok", "ok", "ok"]
        assert second.lake.version("llm_calls") == version + 1
        retried = second.lake.read("llm_calls").where("status = 'error'").collect()
        assert [r["run_id"] for r in retried] == ["run-2"]  # the failed row was updated, not duplicated


def test_json_schema_is_sent_and_sampling_is_part_of_the_request_id(spark, lake_root):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    with ScriptedLLMServer() as server:
        llm = gateway(spark, lake_root, server, "llm.roles.student.n=3")
        rows = llm.generate(questions(spark, "explain"), "student", ask, parse_answer, ANSWER, json_schema=schema).collect()
        assert rows[0]["llm_outputs"] == ['{"answer": "EXPLAIN"}'] * 3
        assert server.requests[-1]["response_format"]["json_schema"]["schema"] == schema
        assert server.requests[-1]["n"] == 3 and server.requests[-1]["temperature"] == 0.7
        other = gateway(spark, lake_root, server, "llm.roles.student.n=2")
        other.generate(questions(spark, "explain"), "student", ask, parse_answer, ANSWER, json_schema=schema).collect()
        assert server.counts["explain"] == 2  # other sampling parameters: another request, not a cache hit


def test_endpoint_url_as_model_selects_the_openai_engine(lake_root):
    with ScriptedLLMServer(model="served-by-endpoint") as server:
        config = make_config(lake_root, f"llm.default_model={server.base_url}")
        spec = resolve_role(config, "extractor")
        assert (spec.engine.kind, spec.model_id, spec.engine.option("base_url")) == ("openai", "served-by-endpoint", server.base_url)


CRASHING_RUN = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from tests.conftest import make_config
    from tests.test_llm_openai import ask, parse_answer, ANSWER, questions
    from jobs.llm import LlmGateway
    from jobs.session import get_spark
    from jobs.tables import Lakehouse
    config = make_config({lake!r}, "llm.default_engine=openai", "llm.openai.base_url={url}", "llm.batch_rows=1",
                         "spark.master=local[1]")
    spark = get_spark(config)
    llm = LlmGateway(spark, config, Lakehouse.open(spark, config), "crashed-run", progress=print)
    llm.generate(questions(spark, *{texts!r}), "judge", ask, parse_answer, ANSWER).collect()
    """
)


def test_a_killed_run_loses_at_most_one_batch_and_the_rerun_resumes(spark, lake_root, tmp_path):
    texts = [f"question number {i}" for i in range(6)]
    with ScriptedLLMServer(delay_s=1.0) as server:
        script = tmp_path / "crash.py"
        script.write_text(CRASHING_RUN.format(root=str(ROOT), lake=str(lake_root), url=server.base_url, texts=texts))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lake = Lakehouse.open(spark, make_config(lake_root))
        deadline = time.time() + 240
        while time.time() < deadline and not (lake.exists("llm_calls") and lake.version("llm_calls") >= 1):
            time.sleep(0.2)
        os.killpg(child.pid, signal.SIGKILL)  # the driver and its python workers, mid-run
        child.wait()
        committed = lake.count("llm_calls")
        assert 2 <= committed < len(texts)
        answered_before = sum(server.counts.values())

        llm = gateway(spark, lake_root, server, "llm.openai.timeout_s=30", run_id="resumed-run")
        rows = llm.generate(questions(spark, *texts), "judge", ask, parse_answer, ANSWER).collect()
        assert sorted(r["llm_status"] for r in rows) == ["ok"] * len(texts)
        assert llm.stats["judge"].calls_made == len(texts) - committed
        assert answered_before - committed <= 1  # at most the one batch in flight was paid for twice
        assert all(server.counts[t] <= 2 for t in texts) and sum(server.counts.values()) <= len(texts) + 1
