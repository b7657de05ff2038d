"""The generate path with the openai engine against a scripted local endpoint: statuses, retries, cache, batches."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pyarrow.parquet as pq
from pyspark.sql.types import StringType, StructField, StructType

from megascience.jobs.platform.llm import LlmGateway, resolve_role, staging_root
from megascience.jobs.platform.tables import Lakehouse
from megascience.jobs.testing.llm_server import ScriptedLLMServer
from megascience.udfs.llm_calls import chunk_files
from megascience.udfs.parsers import parse_json_object
from tests.conftest import ROOT, make_config

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
        "llm.chunk_rows=2",
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
        assert llm.stats["judge"].chunk_files == 3  # 6 calls, 2 per chunk, written by the engine task
        assert llm.stats["judge"].commits == len(llm.lake.history("llm_calls")) >= 1
        assert chunk_files(staging_root(llm.config)) == []  # every chunk committed, none left behind


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
        assert [r["run_id"] for r in retried] == ["run-2"]  # a key's latest attempt is what a read gives


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


def test_the_window_stays_full_and_requests_are_read_as_room_frees_up():
    from megascience.udfs.llm_engines import EngineSpec, OpenAIEngine, Request, Sampling

    lock, busy, peaks, answered = threading.Lock(), [0], [], [0]

    def respond(payload):  # uneven service times, as real generations have; the server counts what it holds
        with lock:
            busy[0] += 1
            peaks.append(busy[0])
        time.sleep(0.02 * (1 + len(payload["messages"][-1]["content"]) % 5))
        with lock:
            busy[0] -= 1
            answered[0] += 1  # before the response leaves, so it counts every request the client has back
        return "fine"

    with ScriptedLLMServer(respond=respond) as server:
        options = {"base_url": server.base_url, "max_concurrency": 3, "timeout_s": 30.0, "max_retries": 0}
        engine = OpenAIEngine(EngineSpec("openai", server.model, tuple(sorted(options.items()))))
        sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=8, n=1, seed=0)
        outstanding_at_read: list[int] = []

        def requests():
            for i in range(24):
                # read only when a window place is free: fewer than 3 earlier requests still unanswered
                outstanding_at_read.append(i - answered[0])
                yield Request([{"role": "user", "content": "q" * i}], sampling)

        done = []
        for position, completion in engine.stream(requests()):
            done.append(position)
            assert completion.texts == ["fine"]
        engine.close()
    assert sorted(done) == list(range(24)) and done != sorted(done)  # finished in their own order, all back
    assert max(outstanding_at_read) <= 2 and len(outstanding_at_read) == 24
    assert max(peaks) == 3 and peaks.count(3) >= 12  # three in flight whenever there were three left to send


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
    from megascience.jobs.platform.llm import LlmGateway
    from megascience.jobs.platform.session import get_spark
    from megascience.jobs.platform.tables import Lakehouse
    config = make_config({lake!r}, "llm.default_engine=openai", "llm.openai.base_url={url}", "llm.chunk_rows=1",
                         "llm.openai.max_concurrency=1", "llm.commit_interval_s=2", "spark.master=local[1]")
    spark = get_spark(config)
    llm = LlmGateway(spark, config, Lakehouse.open(spark, config), "crashed-run", progress=print)
    llm.generate(questions(spark, *{texts!r}), "judge", ask, parse_answer, ANSWER).collect()
    """
)


def test_a_killed_run_loses_at_most_the_calls_in_flight_and_the_rerun_resumes(spark, lake_root, tmp_path):
    texts = [f"question number {i}" for i in range(6)]
    with ScriptedLLMServer(delay_s=1.0) as server:
        script = tmp_path / "crash.py"
        script.write_text(CRASHING_RUN.format(root=str(ROOT), lake=str(lake_root), url=server.base_url, texts=texts))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lake, staging = Lakehouse.open(spark, make_config(lake_root)), staging_root(make_config(lake_root))
        deadline = time.time() + 240
        # kill when some calls are committed and a chunk file is written but not committed yet
        while time.time() < deadline and not (lake.exists("llm_calls") and chunk_files(staging)):
            time.sleep(0.1)
        os.killpg(child.pid, signal.SIGKILL)  # the driver and its python workers, mid-run
        child.wait()
        committed = {r["call_id"] for r in lake.read("llm_calls").collect()}
        staged = {c for path in chunk_files(staging) for c in pq.read_table(path)["call_id"].to_pylist()}
        durable = committed | staged  # chunk files a task wrote are durable: the rerun commits them first
        assert committed and staged and len(durable) < len(texts)
        answered_before = sum(server.counts.values())

        llm = gateway(spark, lake_root, server, "llm.openai.timeout_s=30", run_id="resumed-run")
        rows = llm.generate(questions(spark, *texts), "judge", ask, parse_answer, ANSWER).collect()
        assert sorted(r["llm_status"] for r in rows) == ["ok"] * len(texts)
        assert llm.stats["judge"].calls_made == len(texts) - len(durable)
        assert chunk_files(staging) == []  # the crashed run's chunk files were committed, not left behind
        assert answered_before - len(durable) <= 1  # only the one request in flight was paid for twice
        assert all(server.counts[t] <= 2 for t in texts) and sum(server.counts.values()) <= len(texts) + 1
