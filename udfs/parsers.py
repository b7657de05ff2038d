"""Output parsers: pure functions from a model's text to fields, raising ParseError rather than guessing.

Decision parsers return "unparsed" only by raising: a caller turns the ParseError into a status row, so an unclear
answer is counted, never silently dropped and never read as yes or no.
"""

from __future__ import annotations

import json
import re
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


# --- question/answer pairs ----------------------------------------------------------------------------------------

QA_PAIRS_SCHEMA = {
    "type": "object",
    "properties": {
        "qa_pairs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
                "required": ["question", "answer"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["qa_pairs"],
    "additionalProperties": False,
}

NO_QA_MARKER = "NO_QA_PAIRS"

# A line that opens a question or an answer, in the tag and markdown variants models produce:
# <question>, [Question], Question:, **Question:**, ### Question, Q:, **Q1.** ...
_LABEL = re.compile(
    r"^\s*(?:#{1,6}\s*)?(?:\*\*|__)?\s*(?:<\s*(?P<tag>/?)\s*(?P<tagname>question|answer|solution)\s*>"
    r"|\[(?P<bracket>question|answer|solution)\]"
    r"|(?P<word>question|answer|solution|q|a)\s*\d*\s*[:.)]?(?:\*\*|__)?\s*[:.]?)(?:\*\*|__)?",
    re.IGNORECASE,
)
_CLOSING_TAG = re.compile(r"<\s*/\s*(question|answer|solution)\s*>", re.IGNORECASE)


def _label_kind(match: re.Match) -> str | None:
    name = (match.group("tagname") or match.group("bracket") or match.group("word") or "").lower()
    if match.group("tag") == "/":
        return None
    if name in ("question", "q"):
        return "question"
    if name in ("answer", "solution", "a"):
        return "answer"
    return None


def _segments(text: str) -> list[tuple[str, str]]:
    """(kind, text) runs between question/answer labels; a bare 'A' or 'Q' counts only with a ':' or '.'."""
    segments: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        match = _LABEL.match(line)
        kind = _label_kind(match) if match else None
        if match and match.group("word") and match.group("word").lower() in ("q", "a") and not re.match(
            r"^\s*(?:\*\*|__)?\s*[qa]\s*\d*\s*[:.)]", line, re.IGNORECASE
        ):
            kind = None  # "A ball is thrown..." is prose, not an answer label
        if kind:
            segments.append((kind, [line[match.end():]]))
        elif segments:
            segments[-1][1].append(line)
    return [(kind, _CLOSING_TAG.sub("", "\n".join(lines)).strip()) for kind, lines in segments]


def parse_qa_pairs(text: str | None) -> dict[str, Any]:
    """Question/answer pairs from JSON (`{"qa_pairs": [...]}`) or tagged text; `{"qa_pairs": []}` for an explicit none.

    A question without an answer stays a pair with an empty answer (it is never merged into the next pair); the
    stage drops it with a reason. Raises ParseError when the output holds neither pairs nor the none marker.
    """
    if not text or not text.strip():
        raise ParseError("empty output")
    if "{" in text:
        try:
            found = parse_json_object(text, QA_PAIRS_SCHEMA)
            return {"qa_pairs": [{"question": p["question"].strip(), "answer": p["answer"].strip()} for p in found["qa_pairs"]]}
        except ParseError:
            pass  # tagged text may contain braces (sets, LaTeX); fall through
    pairs: list[dict[str, str]] = []
    for kind, body in _segments(text):
        if kind == "question":
            pairs.append({"question": body, "answer": ""})
        elif pairs and not pairs[-1]["answer"]:
            pairs[-1]["answer"] = body
    pairs = [p for p in pairs if p["question"]]
    if pairs:
        return {"qa_pairs": pairs}
    if re.search(rf"\b{NO_QA_MARKER}\b|\bno (?:qa|question[- ]answer) pairs?\b", text, re.IGNORECASE):
        return {"qa_pairs": []}
    raise ParseError(f"no question/answer pairs and no {NO_QA_MARKER} marker (starts {text.strip()[:80]!r})")


# --- decisions ----------------------------------------------------------------------------------------------------

_DECISION_WORD = re.compile(r"(?<![\w'])(yes|no)(?![\w'])", re.IGNORECASE)
_DECISION_LINE = re.compile(
    r"^\s*(?:\*\*|__)?\s*(?:final\s+)?(?:answer|verdict|decision|judg(?:e)?ment|result|conclusion)\s*(?:\*\*|__)?\s*[:=-]\s*(?:\*\*|__)?\s*(yes|no)\b",
    re.IGNORECASE | re.MULTILINE,
)


def parse_yes_no(text: str | None, key: str = "verdict") -> str:
    """'yes' or 'no' from `{"<key>": "yes"}`, a 'Verdict: no' line, or an output that starts with the word.

    Whole words only ("Note", "Now", "Nothing" are not "no"); anything ambiguous raises ParseError.
    """
    if not text or not text.strip():
        raise ParseError("empty output")
    for candidate in _json_objects(text):
        value = str(candidate.get(key, "")).strip().lower()
        if value in ("yes", "no"):
            return value
    lines = {m.group(1).lower() for m in _DECISION_LINE.finditer(text)}
    if len(lines) == 1:
        return lines.pop()
    if lines:
        raise ParseError("the output states both yes and no")
    first = _DECISION_WORD.match(text.strip().lstrip("*#_ >\"'`"))
    if first:
        return first.group(1).lower()
    words = {m.group(1).lower() for m in _DECISION_WORD.finditer(text)}
    if len(words) == 1 and len(text.split()) <= 12:
        return words.pop()
    raise ParseError(f"no clear yes/no decision (starts {text.strip()[:80]!r})")


# --- final answers ------------------------------------------------------------------------------------------------


def boxed_contents(text: str | None) -> list[str]:
    """Contents of every \\boxed{...} (and \\fbox{...}) in order, nested braces balanced; unclosed ones are skipped."""
    if not text:
        return []
    found = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        for position in range(start, len(text)):
            char = text[position]
            if char == "{" and text[position - 1] != "\\":
                depth += 1
            elif char == "}" and text[position - 1] != "\\":
                depth -= 1
                if depth == 0:
                    found.append(text[start:position].strip())
                    break
    return found


_FINAL_LINE = re.compile(
    r"^\s*(?:\*\*|__|#+\s*)?\s*(?:the\s+)?final\s+answer(?:\s+is)?\s*(?:\*\*|__)?\s*[:=]?\s*(?:\*\*|__)?\s*(?P<answer>.+?)\s*(?:\*\*|__)?\s*\.?\s*$",
    re.IGNORECASE | re.MULTILINE,
)


def final_answer(text: str | None) -> tuple[str, str] | None:
    """(answer, method): the last non-empty \\boxed{}, else the last explicit 'Final answer: ...' line."""
    boxed = [b for b in boxed_contents(text) if b]
    if boxed:
        return boxed[-1], "boxed"
    lines = [m.group("answer").strip() for m in _FINAL_LINE.finditer(text or "") if m.group("answer").strip()]
    if lines:
        return lines[-1], "final_answer_line"
    return None


# --- refined text checks ------------------------------------------------------------------------------------------

_META_TEXT = re.compile(
    r"\b(?:the|this|given|above|provided|following)\s+(?:text|document|passage|excerpt|chunk|source(?: text)?|textbook excerpt)\b"
    r"|\baccording to the (?:text|document|passage|excerpt|source|author)\b"
    r"|\bas (?:mentioned|stated|described|shown|discussed) (?:above|earlier|in the (?:text|document|passage|excerpt))\b"
    r"|\b(?:refined|revised|improved) (?:question|answer)\s*:",
    re.IGNORECASE,
)

_MISSING_MATERIAL = re.compile(
    r"\b(?:fig(?:ure)?s?\.?|tables?|diagrams?|graphs?|charts?|exhibits?|plates?)\s*\(?\d+(?:[.\-–]\d+)*[a-z]?\)?"
    r"|\b(?:eq(?:uation)?s?\.?|formulas?|expressions?)\s*\(\s*\d+(?:[.\-–]\d+)*[a-z]?\s*\)"
    r"|\b(?:eq(?:uation)?s?\.?)\s+\d+(?:[.\-–]\d+)+"
    r"|\b(?:shown|depicted|illustrated|given|plotted) (?:in|on) the (?:figure|diagram|graph|table|chart|image)\b",
    re.IGNORECASE,
)


def meta_text(text: str | None) -> str | None:
    """The first phrase that talks about the source ('the text', 'according to the passage'), if any."""
    match = _META_TEXT.search(text or "")
    return match.group(0) if match else None


def missing_material_reference(text: str | None) -> str | None:
    """The first reference to a numbered figure, table or equation ('Fig. 4-16', 'equation (8.75)'), if any."""
    match = _MISSING_MATERIAL.search(text or "")
    return match.group(0) if match else None


REFINED_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
    "additionalProperties": False,
}


def parse_refined(text: str | None) -> dict[str, Any]:
    """The rewritten pair (JSON or tags) and the first phrase, if any, that talks about the source."""
    if text and "{" in text:
        try:
            pair = parse_json_object(text, REFINED_SCHEMA)
        except ParseError:
            pair = None
    else:
        pair = None
    if pair is None:
        pairs = parse_qa_pairs(text)["qa_pairs"]
        if not pairs:
            raise ParseError("the answer holds no rewritten question")
        pair = pairs[0]
    question, answer = pair["question"].strip(), pair["answer"].strip()
    return {"question": question, "answer": answer, "meta_phrase": meta_text(question) or meta_text(answer)}


FILTER_SCHEMA = {
    "type": "object",
    "properties": {
        "self_contradictory": {"type": "boolean"},
        "missing_material": {"type": "boolean"},
        "answer_valid": {"type": "boolean"},
    },
    "required": ["self_contradictory", "missing_material", "answer_valid"],
    "additionalProperties": False,
}

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["verdict"],
    "additionalProperties": False,
}

REFERENCE_SCHEMA = {
    "type": "object",
    "properties": {"reference_answer": {"type": "string"}},
    "required": ["reference_answer"],
    "additionalProperties": False,
}


# --- difficulty grades --------------------------------------------------------------------------------------------

GRADE_SCHEMA = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string", "maxLength": 400},  # "one or two sentences": room enough, and bounded
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
    },
    "required": ["reasoning", "score"],
    "additionalProperties": False,
}

_SCORE_LINE = re.compile(r"^\s*(?:\*\*|__|#+\s*)?\s*(?:final\s+)?(?:score|grade)\s*(?:\*\*|__)?\s*[:=]\s*(?:\*\*|__)?\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?", re.I | re.M)


def parse_grade(text: str | None) -> dict[str, Any]:
    """{"score": 0-10, "reasoning": ...} from the grader's JSON, else from a 'Score: N' line (the text before it is
    the reasoning). A missing, ambiguous or out-of-range score raises ParseError: it is counted, never guessed."""
    if not text or not text.strip():
        raise ParseError("empty output")
    for candidate in _json_objects(text):
        if "score" in candidate:
            score, reasoning = candidate["score"], str(candidate.get("reasoning") or "").strip()
            break
    else:
        lines = _SCORE_LINE.findall(text)
        if len(set(lines)) != 1:
            raise ParseError("no score line" if not lines else f"several different scores: {', '.join(lines)}")
        score, reasoning = lines[0], text[: _SCORE_LINE.search(text).start()].strip()
    try:
        value = float(score)
    except (TypeError, ValueError):
        raise ParseError(f"the score {score!r} is not a number") from None
    if not value.is_integer() or not 0 <= value <= 10:
        raise ParseError(f"the score {score!r} is not a whole number from 0 to 10")
    return {"score": int(value), "reasoning": reasoning}
