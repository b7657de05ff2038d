"""Executor side of the generate path: build requests, call the engine, parse outputs (mapInPandas bodies).

A request's id is the sha256 of (model, messages, sampling, JSON schema): identical requests share one call and
one `llm_calls` row, which is what makes the request cache and resume work.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Callable, Iterator

import pandas as pd

from udfs.llm_engines import EngineSpec, Request, Sampling, get_engine

CALL_ERROR = "error"
CALL_OK = "ok"
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


def call_engine(
    batches: Iterator[pd.DataFrame],
    spec: EngineSpec,
    role: str,
    model: str,
    sampling: Sampling,
    json_schema: dict | None,
    run_id: str,
    processed_at: pd.Timestamp,
) -> Iterator[pd.DataFrame]:
    """(llm_call_id, llm_messages, ...) rows -> llm_calls rows, one engine call per Arrow batch."""
    engine = get_engine(spec)
    sampling_json = json.dumps(sampling.as_dict(), sort_keys=True)
    for batch in batches:
        requests = [Request(json.loads(m), sampling, json_schema) for m in batch["llm_messages"]]
        completions = engine.generate(requests)
        yield pd.DataFrame(
            {
                "call_id": batch["llm_call_id"].tolist(),
                "role": role,
                "model": model,
                "engine": spec.kind,
                "sampling": sampling_json,
                "json_schema": json.dumps(json_schema, sort_keys=True) if json_schema else None,
                "prompt": [stored_prompt(m) for m in batch["llm_messages"]],
                "outputs": [c.texts for c in completions],
                "finish_reasons": [c.finish_reasons for c in completions],
                "status": [CALL_ERROR if c.error else CALL_OK for c in completions],
                "error": [c.error for c in completions],
                "prompt_tokens": pd.array([c.prompt_tokens for c in completions], dtype="Int32"),
                "cached_prompt_tokens": pd.array([c.cached_prompt_tokens for c in completions], dtype="Int32"),
                "completion_tokens": pd.array([c.completion_tokens for c in completions], dtype="Int32"),
                "latency_s": [float(c.latency_s) for c in completions],
                "run_id": run_id,
                "processed_at": processed_at,
            }
        )


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
                    statuses[i], errors[i] = "parse_error", str(err)
            for name in fields:
                parsed[name].append(values.get(name))
        yield batch.assign(llm_status=statuses, llm_error=errors, **parsed)
