"""Crash sweep: `megascience run` SIGKILLed once inside every stage, resumed each time, compared with a clean run.

tests/test_faults.py kills the driver at two seeded points to keep `make test` short; this sweep covers every stage.
Run k resumes the lake left by run k-1 and is killed (its whole process group, driver and Python workers) a seeded
0-3 s after stage k prints its first line, so each stage is interrupted once, wherever it happens to be: reading,
calling the endpoint, committing. A last run finishes the pipeline. Every table is then compared row for row with an
uninterrupted run's (content columns only), keys are checked for repeats, and the endpoint's request log shows how
many LLM calls were made twice (at most one unwritten chunk and the calls in flight at each kill). LLM roles are answered by the tests'
rule-based stand-in endpoint (jobs/testing/scripted_model.py), in chunks of 4 calls with 4 in flight.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEED = 20261130
MAX_DELAY_S = 3.0
ROOT = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"^\[(\w+)\] (.*)$", re.M)


def _stage_lines(log: Path) -> list[tuple[str, str]]:
    return STAGE_LINE.findall(log.read_text(errors="replace")) if log.exists() else []


def _start(command: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYSPARK_PYTHON": sys.executable}
    with open(log, "w") as handle:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_inside(command: list[str], log: Path, stage: str, delay_s: float) -> dict:
    """Run until `stage` prints its first line, wait `delay_s`, SIGKILL the process group; where did it land?"""
    started = time.perf_counter()
    child = _start(command, log)
    while child.poll() is None and stage not in (name for name, _ in _stage_lines(log)):
        time.sleep(0.05)
    if child.poll() is None:
        time.sleep(delay_s)
    lines = _stage_lines(log)
    if child.poll() is None:
        os.killpg(child.pid, signal.SIGKILL)
    returncode = child.wait(timeout=900)
    in_flight = lines[-1][0] if lines else None
    return {
        "target": stage,
        "delay_s": round(delay_s, 2),
        "killed": returncode == -signal.SIGKILL,
        "in_flight": in_flight,
        "in_flight_done": bool(lines) and lines[-1][1].startswith("done in"),
        "run_s": round(time.perf_counter() - started, 1),
    }


def _compare(spark, ours_root: Path, theirs_root: Path) -> list[dict]:
    from megascience.jobs.platform.config import load_config
    from megascience.jobs.platform.tables import Lakehouse
    from megascience.jobs.testing.crashes import lake_differences

    ours, theirs = (Lakehouse.open(spark, load_config("local", [f"lake.root={root}"], environ={})) for root in (ours_root, theirs_root))
    found = lake_differences(ours, theirs, skip=("llm_calls",))
    return [{"table": name, "rows": f["rows"], "rows_resumed": f["rows_ours"], "repeated_keys": f["repeated_keys"], "equal": f["equal"]} for name, f in found.items()]


def _format(rows: list[dict]) -> str:
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in headers}
    lines = ["  ".join(h.ljust(widths[h]) for h in headers)]
    return "\n".join(lines + ["  ".join(str(r[h]).ljust(widths[h]) for h in headers) for r in rows])


def run() -> dict:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from megascience.jobs.cli.sample_corpus import build_sample_corpus
    from megascience.jobs.pipeline import STAGES
    from megascience.jobs.platform.config import load_config
    from megascience.jobs.platform.session import get_spark
    from megascience.jobs.platform.smoke_model import build_smoke_model
    from megascience.jobs.testing.crashes import KILL_CHUNK_ROWS, KILL_LOSS_BOUND, KILL_WINDOW, call_id_of
    from megascience.jobs.testing.llm_server import ScriptedLLMServer
    from megascience.jobs.testing.scripted_model import ScriptedModel

    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory(prefix="megascience-crash-") as tmp, ScriptedLLMServer(respond=ScriptedModel()) as server:
        tmp_path = Path(tmp)
        corpus = tmp_path / "corpus"
        build_sample_corpus(corpus)
        settings = [
            f"ingest.sources=[{corpus}]",
            "llm.default_engine=openai",
            f"llm.openai.base_url={server.base_url}",
            "llm.openai.max_retries=0",
            f"llm.chunk_rows={KILL_CHUNK_ROWS}",
            f"llm.openai.max_concurrency={KILL_WINDOW}",
            "llm.commit_interval_s=0.5",
            f"chunk.tokenizer={build_smoke_model(tmp_path / 'smoke')}",  # cl100k's file is not on this machine
            "spark.master=local[2]",
        ]

        def command(root: Path) -> list[str]:
            sets = [arg for s in (f"lake.root={root}", *settings) for arg in ("--set", s)]
            return [str(Path(sys.executable).parent / "megascience"), "run", *sets]

        started = time.perf_counter()
        reference = _start(command(tmp_path / "reference"), tmp_path / "reference.log")
        if reference.wait(timeout=3600) != 0:
            raise RuntimeError(f"the uninterrupted run failed: {(tmp_path / 'reference.log').read_text()[-3000:]}")
        reference_s = time.perf_counter() - started
        reference_ids = [call_id_of(p) for p in server.requests]

        swept_from = len(server.requests)
        kills = []
        for number, stage in enumerate(STAGES):
            kill = _kill_inside(command(tmp_path / "swept"), tmp_path / f"run{number}.log", stage.name, rng.uniform(0, MAX_DELAY_S))
            kills.append(kill)
        final = _start(command(tmp_path / "swept"), tmp_path / "final.log")
        if final.wait(timeout=3600) != 0:
            raise RuntimeError(f"the resuming run failed: {(tmp_path / 'final.log').read_text()[-3000:]}")
        swept_ids = [call_id_of(p) for p in server.requests[swept_from:]]

        spark = get_spark(load_config("local", [f"lake.root={tmp_path / 'warehouse'}", "spark.master=local[2]"], environ={}))
        tables = _compare(spark, tmp_path / "swept", tmp_path / "reference")

    repeated_calls = len(swept_ids) - len(set(swept_ids))
    landed = sum(k["killed"] and k["in_flight"] == k["target"] and not k["in_flight_done"] for k in kills)
    summary = (
        f"{sum(k['killed'] for k in kills)} kills, {landed} inside their target stage before its end; "
        f"tables equal to the uninterrupted run: {sum(t['equal'] for t in tables)}/{len(tables)}; "
        f"repeated keys: {sum(t['repeated_keys'] for t in tables)}; LLM requests: {len(reference_ids)} uninterrupted, "
        f"{len(swept_ids)} over the killed runs ({repeated_calls} asked twice; bound {KILL_LOSS_BOUND} per kill: one chunk and the calls in flight); "
        f"calls missing from the resumed lake's requests: {len(set(reference_ids) - set(swept_ids))}; "
        f"uninterrupted run {reference_s:.0f} s"
    )
    return {
        "kills": kills,
        "tables": tables,
        "llm_requests": {"uninterrupted": len(reference_ids), "swept": len(swept_ids), "asked_twice": repeated_calls},
        "table": f"{_format(kills)}\n\n{_format(tables)}\n\n{summary}",
        "note": "one SIGKILL (driver and workers) inside every stage, each run resuming the last; LLM by a local scripted endpoint",
    }
