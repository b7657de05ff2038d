"""Output parsers: pure functions from a model's text to fields, raising ParseError rather than guessing."""

from __future__ import annotations

import json
from typing import Any

from udfs.llm_calls import ParseError


def _json_objects(text: str):
    """Every top-level JSON object in the text, in order (prose, markdown fences and trailing notes are skipped)."""
    decoder = json.JSONDecoder(strict=False)  # models do emit raw control characters inside strings
    position = text.find("{")
    while position != -1:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            position = text.find("{", position + 1)
            continue
        if isinstance(value, dict):
            yield value
        position = text.find("{", end)


def parse_json_object(text: str | None, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The first JSON object in `text` that satisfies `schema` (if given); ParseError if there is none."""
    if not text or not text.strip():
        raise ParseError("empty output")
    problems = []
    for candidate in _json_objects(text):
        if schema is None:
            return candidate
        from jsonschema import Draft202012Validator

        errors = sorted(Draft202012Validator(schema).iter_errors(candidate), key=lambda e: list(e.path))
        if not errors:
            return candidate
        problems.append(errors[0].message)
    if problems:
        raise ParseError(f"JSON does not match the schema: {problems[0]}")
    snippet = text.strip()[:120].replace("\n", " ")
    raise ParseError(f"no JSON object in the output (starts {snippet!r})")
