"""Executor side of the generate path: build requests, stream them through the engine, parse outputs (mapInPandas
bodies).

A request's id is the sha256 of (model, messages, sampling, JSON schema): identical requests share one call and
one `llm_calls` row, which is what makes the request cache and resume work. Results become durable as chunk files
written by the engine tasks themselves (ChunkWriter); the driver appends those files to `llm_calls`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from pyspark.sql.pandas.types import to_arrow_schema

from megascience.schemas.status import CALL_ERROR, CALL_OK, LLM_PARSE_ERROR
from megascience.schemas.tables import LLM_CALLS
from megascience.udfs.llm_engines import EngineSpec, Request, Sampling, get_engine

_DATA_URL = re.compile(r"data:([\w/+.-]+);base64,([A-Za-z0-9+/=]+)")


class ParseError(ValueError):
    """An output that does not say what the stage asked for; the row gets status parse_error."""


def request_id(model: str, messages: list[dict[str, Any]], sampling: Sampling, json_schema: dict | None) -> str:
    payload = {"model": model, "messages": messages, "sampling": sampling.as_dict(), "schema": json_schema}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def stored_prompt(messages_json: str) -> str:
    """The prompt as kept in llm_calls: inline images replaced by their sha256 (the page is in `pages`)."""

    def digest(match: re.Match) -> str:
        return f"data:{match.group(1)};sha256,{hashlib.sha256(match.group(2).encode()).hexdigest()}"

    return _DATA_URL.sub(digest, messages_json)


def build_requests(
    batches: Iterator[pd.DataFrame],
    build_prompt: Callable[[dict[str, Any]], list[dict[str, Any]]],
    model: str,
    sampling: Sampling,
    json_schema: dict | None,
) -> Iterator[pd.DataFrame]:
    """Add llm_call_id and llm_messages to every row; a row whose prompt cannot be built gets llm_prompt_error."""
    for batch in batches:
        ids, messages, errors = [], [], []
        for row in batch.to_dict("records"):
            try:
                built = build_prompt(row)
                ids.append(request_id(model, built, sampling, json_schema))
                messages.append(json.dumps(built, ensure_ascii=False))
                errors.append(None)
            except Exception as err:  # bad input data must become a row status, not a failed job
                ids.append(None)
                messages.append(None)
                errors.append(f"{type(err).__name__}: {err}")
        yield batch.assign(llm_call_id=ids, llm_messages=messages, llm_prompt_error=errors)


@dataclass(frozen=True)
class CallPlan:
    """What every engine task of one generate() needs; made on the driver, shipped with the task."""

    spec: EngineSpec
    role: str
    model: str
    sampling: Sampling
    json_schema: dict | None
    run_id: str
    processed_at: pd.Timestamp
    staging_dir: str  # this generate()'s chunk files (a local path or an fsspec URI the executors can write)
    chunk_rows: int  # completed calls per chunk file: what a crash can lose of finished work, per engine
    chunk_seconds: float  # a chunk is also written once its oldest call has waited this long

    def task_spec(self, partition: int) -> EngineSpec:
        """The engine of one task: with several endpoints in base_url, tasks take them in turn."""
        endpoints = [u for u in re.split(r"[,\s]+", str(self.spec.option("base_url") or "")) if u]
        if len(endpoints) < 2:
            return self.spec
        options = dict(self.spec.options, base_url=endpoints[partition % len(endpoints)])
        return EngineSpec(self.spec.kind, self.spec.model, tuple(sorted(options.items())))


MANIFEST = "partition int, calls long, failed long, chunks int"
_CHUNK_SUFFIX = ".parquet"


def chunk_files(staging_dir: str, partition: int | None = None) -> list[str]:
    """The complete chunk files under `staging_dir` (of one task's partition, if given), oldest name first."""
    fs, root = url_to_fs(staging_dir)
    if not fs.exists(root):
        return []
    prefix = "" if partition is None else f"part-{partition:05d}-"
    found = fs.find(root)
    return sorted(
        fs.unstrip_protocol(path) if "://" in staging_dir else path
        for path in found
        if path.endswith(_CHUNK_SUFFIX) and path.rsplit("/", 1)[-1].startswith(prefix)
    )


class ChunkWriter:
    """Completed llm_calls rows -> parquet chunk files, each written whole under a temporary name and then renamed,
    so a reader (the driver's committer, a retried task) never sees half a chunk."""

    def __init__(self, staging_dir: str, name: str, chunk_rows: int, chunk_seconds: float):
        self.fs, self.root = url_to_fs(staging_dir)
        self.fs.makedirs(self.root, exist_ok=True)
        self.name, self.chunk_rows, self.chunk_seconds = name, chunk_rows, chunk_seconds
        self.schema = to_arrow_schema(LLM_CALLS.schema, timezone="UTC")
        self.rows: list[dict[str, Any]] = []
        self.oldest = 0.0
        self.calls = self.failed = self.chunks = 0

    def add(self, row: dict[str, Any]) -> None:
        if not self.rows:
            self.oldest = time.monotonic()
        self.rows.append(row)
        self.calls += 1
        self.failed += row["status"] == CALL_ERROR
        if len(self.rows) >= self.chunk_rows or time.monotonic() - self.oldest >= self.chunk_seconds:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        final = f"{self.root}/{self.name}-{self.chunks:06d}{_CHUNK_SUFFIX}"
        partial = f"{final}.inprogress"
        with self.fs.open(partial, "wb") as handle:
            pq.write_table(table, handle)
        self.fs.mv(partial, final)
        self.rows, self.chunks = [], self.chunks + 1


def staged_call_ids(staging_dir: str, partition: int) -> set[str]:
    """Calls an earlier attempt of this task already made durable: a retried task does not make them again."""
    files = chunk_files(staging_dir, partition)
    if not files:
        return set()
    fs, _ = url_to_fs(staging_dir)
    return {call_id for path in files for call_id in pq.read_table(fs.open(path, "rb"), columns=["call_id"])["call_id"].to_pylist()}


def _task_gpus() -> list[str] | None:
    """The GPU addresses Spark assigned this task (stage-level scheduling), if any."""
    from pyspark import TaskContext

    context = TaskContext.get()
    resources = context.resources() if context else {}
    return list(resources["gpu"].addresses) if "gpu" in resources else None


def stream_calls(batches: Iterator[pd.DataFrame], plan: CallPlan) -> Iterator[pd.DataFrame]:
    """One engine task: its share of the pending (llm_call_id, llm_messages) requests streamed through the engine,
    which is kept full until the share is done; results go to chunk files as they complete. Yields one manifest
    row (MANIFEST): the driver commits the chunk files, so nothing rides back through Spark."""
    from pyspark import TaskContext

    context = TaskContext.get()
    partition, attempt = context.partitionId(), context.attemptNumber()
    already_durable = staged_call_ids(plan.staging_dir, partition) if attempt else set()
    writer = ChunkWriter(plan.staging_dir, f"part-{partition:05d}-{attempt}", plan.chunk_rows, plan.chunk_seconds)
    sampling_json = json.dumps(plan.sampling.as_dict(), sort_keys=True)
    schema_json = json.dumps(plan.json_schema, sort_keys=True) if plan.json_schema else None
    asked: list[tuple[str, str]] = []  # (call id, messages) by the position the engine reports

    def requests() -> Iterator[Request]:
        for batch in batches:
            for call_id, messages in zip(batch["llm_call_id"], batch["llm_messages"]):
                if call_id not in already_durable:
                    asked.append((call_id, messages))
                    yield Request(json.loads(messages), plan.sampling, plan.json_schema)

    engine = get_engine(plan.task_spec(partition), _task_gpus())
    for position, completion in engine.stream(requests()):
        call_id, messages = asked[position]
        asked[position] = None  # the prompt is not kept once its call is done
        writer.add(
            {
                "call_id": call_id,
                "role": plan.role,
                "model": plan.model,
                "engine": plan.spec.kind,
                "sampling": sampling_json,
                "json_schema": schema_json,
                "prompt": stored_prompt(messages),
                "outputs": completion.texts,
                "finish_reasons": completion.finish_reasons,
                "status": CALL_ERROR if completion.error else CALL_OK,
                "error": completion.error,
                "prompt_tokens": completion.prompt_tokens,
                "cached_prompt_tokens": completion.cached_prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "latency_s": float(completion.latency_s),
                "run_id": plan.run_id,
                "processed_at": plan.processed_at.to_pydatetime(),
            }
        )
    writer.flush()
    yield pd.DataFrame({"partition": [partition], "calls": [writer.calls], "failed": [writer.failed], "chunks": [writer.chunks]})


def parse_outputs(
    batches: Iterator[pd.DataFrame], parse: Callable[[str, str | None], dict[str, Any]], fields: list[str]
) -> Iterator[pd.DataFrame]:
    """Parse the output of rows whose call succeeded; an unparseable output becomes status parse_error.

    The contract of a stage's parse callable: `parse(text, finish_reason) -> {field: value}` or ParseError, where
    text is the first output and finish_reason its engine's finish reason ("stop", "length" when it was cut off at
    max_tokens, None when the engine gave none). Parsing runs on every generate(), from the stored outputs, so a
    better parser applies to earlier answers without a new call.
    """
    for batch in batches:
        parsed: dict[str, list[Any]] = {name: [] for name in fields}
        statuses, errors = batch["llm_status"].tolist(), batch["llm_error"].tolist()
        finish_reasons = batch["llm_finish_reason"].tolist()
        for i, text in enumerate(batch["llm_text"].tolist()):
            values: dict[str, Any] = {}
            if statuses[i] == CALL_OK:
                try:
                    values = parse(text, finish_reasons[i] if isinstance(finish_reasons[i], str) else None)
                except ParseError as err:
                    statuses[i], errors[i] = LLM_PARSE_ERROR, str(err)
            for name in fields:
                parsed[name].append(values.get(name))
        yield batch.assign(llm_status=statuses, llm_error=errors, **parsed)
