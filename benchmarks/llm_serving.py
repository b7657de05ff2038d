"""Keeping model servers busy: the generate path against a plain client on the same simulated GPU server.

The server (benchmarks/simulated_gpu.py) has N slots, a FIFO queue and long-tailed service times, and records
busy slot-seconds. In the same run, for each setting and size:
- a plain client: a thread pool keeping exactly N requests in flight per server (what an ideal client does);
- `LlmGateway.generate` with the profile's LLM settings, on fresh prompts (no cache hits), timed from the call to
  the last row of its result, so every fixed cost of the path (request building, the cache lookup, the Spark job,
  chunk commits, joining the outputs back) is in the time.
Reported: utilization (busy slot-seconds / (slots x wall)) of both and the ratio of their throughputs.

Also the cost of making a chunk of calls durable as `llm_calls` grows (16 KB prompts, as extraction prompts are):
the blind append of one chunk file (the path since streaming execution) and, for comparison, the MERGE of a batch
that the path made before it, at 10k, 100k and 1M rows.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.simulated_gpu import ServerShape, SimulatedGpuServer

# (name, profile settings, slots per server, servers, engine tasks, request counts, in-flight window per task or
# None for the profile's). The 256-slot engines run twice: with the cluster profile's window (512, sized for a
# serving fleet behind one URL) and with the window sized to one engine's slots, as the docs advise for one server.
SCENARIOS = (
    ("local profile", "local", 64, 1, 1, (1024, 8192), None),
    ("cluster profile", "cluster", 64, 1, 2, (1024, 8192), None),
    ("2 engines x 256 slots", "cluster", 256, 2, 2, (8192, 32768), None),
    ("2 engines x 256 slots (window 256)", "cluster", 256, 2, 2, (8192, 32768), 256),
)
COMMIT_SIZES = (10_000, 100_000, 1_000_000)
PROMPT_BYTES = 16_384
CHUNK_ROWS = 1024  # the cluster profile's chunk
MERGE_ROWS = 512  # the batch of the merge-per-batch path, as measured before


def _messages(text: str) -> list[dict]:
    return [{"role": "system", "content": "Answer step by step."}, {"role": "user", "content": text}]


def _ask(row):
    return _messages(row["text"])


def _plain_client(urls: list[str], slots: int, texts: list[str]) -> float:
    """Every request sent with `slots` in flight per server; the wall time."""
    from openai import OpenAI

    clients = [OpenAI(base_url=url, api_key="EMPTY", timeout=600, max_retries=0) for url in urls]

    def one(i: int) -> None:
        clients[i % len(clients)].chat.completions.create(
            model="simulated-gpu", messages=_messages(texts[i]), temperature=0.0, top_p=1.0, max_tokens=4096
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=slots * len(urls)) as pool:
        list(pool.map(one, range(len(texts))))
    return time.perf_counter() - started


def _profile_settings(profile: str, lake_root: Path, urls: list[str], tasks: int) -> list[str]:
    """The profile's LLM settings with the simulated servers as the endpoint (cluster: what fits this machine's
    cores; the in-flight window and chunk sizes are the profile's)."""
    settings = [
        f"lake.root={lake_root}",
        "run.progress=false",
        "llm.default_engine=openai",
        f"llm.openai.base_url={','.join(urls)}",
        "llm.openai.max_retries=0",
        "llm.openai.timeout_s=600",
        "llm.roles.extractor.max_tokens=4096",
        f"llm.engine_partitions={tasks}",
    ]
    if profile == "cluster":
        from megascience.jobs.platform.config import load_config

        llm = load_config("cluster", [], environ={})["llm"]
        settings += [f"llm.openai.max_concurrency={llm['openai']['max_concurrency']}"]
        settings += [f"llm.{key}={llm[key]}" for key in ("chunk_rows", "chunk_seconds", "commit_interval_s")]
    return settings


def _gateway_run(spark, settings: list[str], texts: list[str], run_id: str) -> float:
    from megascience.jobs.platform.config import load_config
    from megascience.jobs.platform.llm import LlmGateway
    from megascience.jobs.platform.tables import Lakehouse

    config = load_config("local", settings, environ={})
    gateway = LlmGateway(spark, config, Lakehouse.open(spark, config), run_id, progress=lambda message: None)
    frame = spark.createDataFrame([(t,) for t in texts], "text string")
    started = time.perf_counter()
    statuses = [r["llm_status"] for r in gateway.generate(frame, "extractor", _ask).select("llm_status").collect()]
    wall = time.perf_counter() - started
    assert statuses.count("ok") == len(texts), f"{len(texts) - statuses.count('ok')} calls failed"
    return wall


def _serving_rows(spark, tmp: Path) -> list[dict]:
    rows = []
    chosen = os.environ.get("MEGASCIENCE_BENCH_SCENARIOS")  # names, comma-separated: a subset of SCENARIOS
    for name, profile, slots, servers, tasks, sizes, window in SCENARIOS:
        if chosen and name not in chosen.split(","):
            continue
        shape = ServerShape(slots=slots)
        with _servers(shape, servers) as running:
            urls = [s.base_url for s in running]
            lake_root = tmp / ("lake-" + "".join(c if c.isalnum() else "-" for c in name))
            settings = _profile_settings(profile, lake_root, urls, tasks)
            if window:
                settings.append(f"llm.openai.max_concurrency={window}")
            _gateway_run(spark, settings, [f"warm-up {name} {i}" for i in range(64)], "warm-up")  # workers started
            for size in sizes:
                texts = [f"{name} {size} question {i}: derive the result." for i in range(size)]
                before = _busy(running)
                plain_s = _plain_client(urls, slots, texts)
                plain_busy = _busy(running) - before
                ours_texts = [f"{t} " for t in texts]  # the same lengths (the server keys on content), no cache hits
                before = _busy(running)
                ours_s = _gateway_run(spark, settings, ours_texts, f"bench-{size}")
                ours_busy = _busy(running) - before
                capacity = slots * servers
                rows.append(
                    {
                        "setting": name,
                        "requests": size,
                        "plain_s": round(plain_s, 1),
                        "ours_s": round(ours_s, 1),
                        "plain_utilization": round(plain_busy / (capacity * plain_s), 3),
                        "ours_utilization": round(ours_busy / (capacity * ours_s), 3),
                        "throughput_vs_plain": round(plain_s / ours_s, 3),
                    }
                )
    return rows


class _servers:
    def __init__(self, shape: ServerShape, count: int):
        self.servers = [SimulatedGpuServer(shape) for _ in range(count)]

    def __enter__(self):
        return [server.__enter__() for server in self.servers]

    def __exit__(self, *exc):
        for server in self.servers:
            server.__exit__(*exc)


def _busy(servers) -> float:
    return sum(server.counters()["busy_slot_s"] for server in servers)


def _call_rows(count: int, seed: int, prefix: str):
    """`count` llm_calls rows with distinct ~16 KB prompts of random words (text-like, so it compresses as text)."""
    import numpy as np
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    from megascience.schemas.tables import LLM_CALLS

    rng = np.random.default_rng(seed)
    vocabulary = np.array(["".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=3 + i % 8)) for i in range(5000)])
    words = PROMPT_BYTES // 7
    prompts = [" ".join(vocabulary[rng.integers(0, len(vocabulary), words)]) for _ in range(count)]
    now = pa.scalar(time.time_ns() // 1000, pa.timestamp("us", tz="UTC"))
    columns = {
        "call_id": [f"{prefix}-{seed}-{i}" for i in range(count)],
        "role": ["extractor"] * count,
        "model": ["simulated-gpu"] * count,
        "engine": ["openai"] * count,
        "sampling": ['{"max_tokens": 4096}'] * count,
        "json_schema": [None] * count,
        "prompt": prompts,
        "outputs": [[p[: 2000]] for p in prompts],
        "finish_reasons": [["stop"]] * count,
        "status": ["ok"] * count,
        "error": [None] * count,
        "prompt_tokens": [4000] * count,
        "cached_prompt_tokens": [0] * count,
        "completion_tokens": [400] * count,
        "latency_s": [1.0] * count,
        "run_id": ["bench"] * count,
        "processed_at": pa.array([now.value] * count, pa.timestamp("us", tz="UTC")),
    }
    return pa.table(columns).cast(to_arrow_schema(LLM_CALLS.schema, timezone="UTC"))


def _commit_rows(spark, tmp: Path) -> list[dict]:
    """Seconds to make one chunk durable as llm_calls grows: the blind append of a chunk file vs the MERGE of a
    batch (the path before streaming execution; done through the backend, as the table layer now refuses to merge
    into an append-only table)."""
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    from megascience.jobs.platform.config import load_config
    from megascience.jobs.platform.tables import Lakehouse
    from megascience.schemas.tables import LLM_CALLS

    lake_root = tmp / "lake-commits"
    lake = Lakehouse.open(spark, load_config("local", [f"lake.root={lake_root}"], environ={}))
    location, rows, grown, seed = lake.location("llm_calls"), [], 0, 0
    for size in COMMIT_SIZES:
        while grown < size:  # grow the table to `size` rows (not timed)
            step = min(10_000, size - grown)
            write_deltalake(location, _call_rows(step, seed, "fill"), mode="append")
            grown, seed = grown + step, seed + 1
        appends = []
        for attempt in range(3):
            chunk = tmp / f"chunk-{size}-{attempt}.parquet"
            pq.write_table(_call_rows(CHUNK_ROWS, 10_000 + seed + attempt, "chunk"), chunk)
            started = time.perf_counter()
            lake.append_files("llm_calls", [str(chunk)])
            appends.append(time.perf_counter() - started)
        grown += 3 * CHUNK_ROWS
        merge_s = None
        if size <= 100_000 or os.environ.get("MEGASCIENCE_BENCH_MERGE_1M") == "1":
            batch = spark.createDataFrame(_call_rows(MERGE_ROWS, 20_000 + seed, "merge").to_pandas(), LLM_CALLS.schema)
            started = time.perf_counter()
            with lake.backend.staged(LLM_CALLS, batch) as staged:
                lake.backend.merge(LLM_CALLS, staged, True, "{}")
            merge_s = round(time.perf_counter() - started, 2)
            grown += MERGE_ROWS
        table_bytes = sum(f.stat().st_size for f in Path(location).glob("*.parquet"))
        rows.append(
            {
                "llm_calls_rows": size,
                "table_gb": round(table_bytes / 1e9, 2),
                f"append_{CHUNK_ROWS}_rows_s": round(sorted(appends)[1], 3),
                f"merge_{MERGE_ROWS}_rows_s": merge_s,
            }
        )
    first = rows[0][f"append_{CHUNK_ROWS}_rows_s"]
    for row in rows:
        row["append_vs_10k"] = round(row[f"append_{CHUNK_ROWS}_rows_s"] / first, 2)
    return rows


def _table(rows: list[dict]) -> list[str]:
    headers = list(rows[0])
    width = max(len(h) for h in headers) + 1
    return ["  ".join(f"{h:>{width}}" for h in headers)] + ["  ".join(f"{str(r[h]):>{width}}" for h in headers) for r in rows]


def run() -> dict:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from megascience.jobs.platform.config import load_config
    from megascience.jobs.platform.session import get_spark

    with tempfile.TemporaryDirectory(prefix="megascience-llm-serving-") as tmp:
        tmp_path = Path(tmp)
        spark = get_spark(load_config("local", [f"lake.root={tmp_path / 'lake'}", "spark.master=local[2]"], environ={}))
        parts = os.environ.get("MEGASCIENCE_BENCH_PARTS", "serving,commits").split(",")
        serving = _serving_rows(spark, tmp_path) if "serving" in parts else []
        commits = _commit_rows(spark, tmp_path) if "commits" in parts else []
    lines = []
    if serving:
        lines += ["Simulated GPU servers (3 ms per output token, lognormal lengths, median ~300, mean ~400):", *_table(serving)]
    if commits:
        lines += ["", f"Making a chunk durable as llm_calls grows ({PROMPT_BYTES // 1024} KB prompts):", *_table(commits)]
    return {"serving": serving, "commits": commits, "table": "\n".join(lines)}


if __name__ == "__main__":
    print(run()["table"])
