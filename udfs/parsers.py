"""Reading model output: pure functions from a model's text (and its finish reason) to fields, reading what a
careful human reads, and raising ParseError with the reason when there is nothing a careful reader could take.

Every stage's parse callable has the contract `parse(text, finish_reason) -> dict` (finish_reason may be None;
"length" means the model was cut off at max_tokens). What is read:
- JSON anywhere in the text: in fences or bare, after a preamble, before trailing notes; keys in any case (and with
  spaces), unknown keys ignored; trailing and missing commas; quotes a model forgot to escape inside strings;
  LaTeX written with single backslashes inside strings (`\\frac` is a LaTeX command, not a form feed and "rac");
  numbers, lists and booleans where text was asked for, read as text. A JSON value cut off at max_tokens keeps
  every member that was complete before the cut, and says which one was cut (`json_values`).
- Tagged text (<question>...</question>), markdown and labelled text (**Question 1:**, ### Answer, Q:/A:), with
  option labels, "Solution A:" and "**Answer:**" lines inside a body left in the body, several tags on one line,
  and notes, fences or rules after the last pair left out.
- Decisions: the conclusion wins over the opening word, a "final" verdict over an earlier one, and an echo of the
  requested format is not an answer; booleans in every spelling; the last score stated; the last final answer.
An output cut off at max_tokens is never read as complete: what was whole before the cut is kept and marked so,
a conclusion it never reached is not guessed.

Why not a JSON-repair library: repairing closes the cut value (an answer cut mid-sentence comes back as a whole
string), which is exactly what must not happen; and none decodes LaTeX in JSON strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from megascience.udfs.llm_calls import ParseError

CUT_FINISH_REASONS = ("length", "max_tokens")  # OpenAI / vLLM, and the spelling of some hosted APIs


def was_cut(finish_reason: str | None) -> bool:
    """True when the engine says the output stopped at max_tokens."""
    return (finish_reason or "").lower() in CUT_FINISH_REASONS


def _require_text(text: str | None) -> str:
    if not text or not text.strip():
        raise ParseError("empty output")
    return text


def _snippet(text: str) -> str:
    return text.strip()[:80].replace("\n", " ")


# --- lenient JSON -------------------------------------------------------------------------------------------------


class JString(str):
    """A JSON string as read; `complete` is False when the output ended inside it."""

    complete: bool = True


class JNumber(str):
    """A JSON number as written (so "2.50" stays "2.50" when read as text)."""

    complete: bool = True


class JObject(dict):
    complete: bool = False


class JArray(list):
    complete: bool = False


class _Incomplete:
    """A literal the output ended inside ("fal")."""

    complete = False


INCOMPLETE = _Incomplete()


def is_complete(value: Any) -> bool:
    return getattr(value, "complete", True)


class _NotJson(Exception):
    pass


# LaTeX commands whose first letter is also a JSON escape (\b \f \n \r \t): in a string written with single
# backslashes, `\frac` is the command, not a form feed. Others (\alpha, \sin, \(, \,) are no JSON escape at all.
_LATEX_ON_ESCAPES = frozenset(
    """
    beta bar boxed bf binom begin big bigl bigr bigg biggl biggr bigcup bigcap bigoplus bigotimes bigwedge bigvee
    bmod bot bullet backslash boldsymbol bold bmatrix breve because blacksquare bowtie bra braket
    frac fbox forall flat frown footnote frak framebox
    nabla nu neq neg not nolimits notin nearrow newline nonumber nmid nleq ngeq nexists natural nwarrow nsubseteq
    nparallel noindent nsim ncong norm
    rho right rightarrow rangle rceil rfloor rm rbrace rbrack rvert rVert root rightleftharpoons rightharpoonup
    rightleftarrows rtimes ref
    theta tau times text textbf textit textrm texttt textsf textnormal textstyle tan tanh to top tilde triangle
    triangleleft triangleright tfrac therefore tiny tt thinspace tag textsuperscript textsubscript textdegree
    textmu textcelsius thicksim tbinom
    """.split()
)
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "'": "'", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_LITERALS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
_VALUE_START = set('"{[-0123456789tfnTFN')


class _JsonReader:
    """Recursive descent over one JSON value, tolerant of what models write, and exact about where it was cut."""

    def __init__(self, text: str, single_backslashes: bool):
        self.text, self.pos, self.single_backslashes = text, 0, single_backslashes

    def _ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def _at_end(self) -> bool:
        return self.pos >= len(self.text)

    def _next_after(self, position: int) -> str:
        """The next non-whitespace character at or after `position`, "" at the end."""
        while position < len(self.text) and self.text[position] in " \t\r\n":
            position += 1
        return self.text[position] if position < len(self.text) else ""

    def value(self, context: str) -> Any:
        char = self.text[self.pos]
        if char == "{":
            return self._object()
        if char == "[":
            return self._array()
        if char == '"':
            return self._string(context)
        number = _NUMBER.match(self.text, self.pos)
        if number:
            self.pos = number.end()
            found = JNumber(number.group())
            found.complete = not self._at_end()
            return found
        rest = self.text[self.pos : self.pos + 5]
        for word, literal in _LITERALS.items():
            if rest.startswith(word):
                self.pos += len(word)
                return literal
            if len(self.text) - self.pos < len(word) and word.startswith(self.text[self.pos :]):
                self.pos = len(self.text)
                return INCOMPLETE
        raise _NotJson

    def _object(self) -> JObject:
        found = JObject()
        self.pos += 1
        while True:
            self._ws()
            if self._at_end():
                return found
            char = self.text[self.pos]
            if char == "}":
                self.pos += 1
                found.complete = True
                return found
            if char == ",":  # trailing or doubled commas
                self.pos += 1
                continue
            if char != '"':
                raise _NotJson
            key = self._string("key")
            self._ws()
            if not key.complete or self._at_end():
                return found
            if self.text[self.pos] != ":":
                raise _NotJson
            self.pos += 1
            self._ws()
            if self._at_end():
                return found
            found[str(key)] = member = self.value("object")
            if not is_complete(member):
                return found
            self._ws()
            if not self._at_end() and self.text[self.pos] not in ',}"':
                raise _NotJson

    def _array(self) -> JArray:
        found = JArray()
        self.pos += 1
        while True:
            self._ws()
            if self._at_end():
                return found
            char = self.text[self.pos]
            if char == "]":
                self.pos += 1
                found.complete = True
                return found
            if char == ",":
                self.pos += 1
                continue
            if char not in _VALUE_START:
                raise _NotJson
            found.append(member := self.value("array"))
            if not is_complete(member):
                return found
            self._ws()
            if not self._at_end() and self.text[self.pos] not in ",]":
                if self.text[self.pos] in "{[\"":  # a missing comma between members
                    continue
                raise _NotJson

    def _closes(self, quote: int, context: str) -> bool:
        """Whether the quote at `quote` ends the string, judged by what follows it (models forget to escape quotes
        inside text: `"the "half-life" is ..."`)."""
        after = self._next_after(quote + 1)
        if after == "":
            return True
        if context == "key":
            return after == ":"
        if context == "top":
            return True
        closer = "}" if context == "object" else "]"
        if after == closer:
            return True
        if after == ",":
            following = self._next_after(self.text.index(",", quote + 1) + 1)
            return following == "" or (following == '"' if context == "object" else following in _VALUE_START | {"]"}) or following == closer
        return False

    def _string(self, context: str) -> JString:
        text, out = self.text, []
        position = self.pos + 1
        while position < len(text):
            char = text[position]
            if char == '"':
                if self._closes(position, context):
                    self.pos = position + 1
                    return JString("".join(out))
                out.append(char)
                position += 1
            elif char == "\\" and position + 1 < len(text):
                position = self._escape(position, out)
            else:
                out.append(char)
                position += 1
        self.pos = len(text)
        cut = JString("".join(out))
        cut.complete = False
        return cut

    def _escape(self, position: int, out: list[str]) -> int:
        """Decode the escape at `position`; returns the position after it."""
        text = self.text
        letter = text[position + 1]
        if letter == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[position + 2 : position + 6] or ""):
            out.append(chr(int(text[position + 2 : position + 6], 16)))
            return position + 6
        if letter in "bfnrt" and self.single_backslashes:
            run = re.match(r"[A-Za-z]+", text[position + 1 :]).group()
            if run in _LATEX_ON_ESCAPES:
                out.append("\\" + run)
                return position + 1 + len(run)
        if letter in _ESCAPES:
            out.append(_ESCAPES[letter])
            return position + 2
        out.append("\\" + letter)  # \alpha, \(, \, ...: not JSON escapes, so LaTeX as written
        return position + 2


@dataclass(frozen=True)
class FoundJson:
    value: Any
    start: int
    end: int

    @property
    def complete(self) -> bool:
        return is_complete(self.value)


def json_values(text: str | None) -> list[FoundJson]:
    """Every top-level JSON object or array in the text, in order, read leniently; the last may be cut off.

    Prose, fences and notes around them are skipped; a brace that does not open JSON (LaTeX, a set) is passed by.
    """
    if not text:
        return []
    # a model that escapes its LaTeX (`\\frac`) means \n as a newline; one that never does writes LaTeX as is
    single = not re.search(r"\\\\[A-Za-z]", text)
    found, position = [], 0
    while True:
        starts = [p for p in (text.find("{", position), text.find("[", position)) if p != -1]
        if not starts:
            return found
        start = min(starts)
        reader = _JsonReader(text, single)
        reader.pos = start
        try:
            value = reader.value("top")
        except (_NotJson, IndexError):
            position = start + 1
            continue
        if isinstance(value, dict) or (isinstance(value, list) and (not value or isinstance(value[0], (dict, list)))):
            found.append(FoundJson(value, start, reader.pos))
            position = reader.pos
        else:
            position = start + 1
        if not is_complete(value):
            return found


def normal_key(key: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().lower())


def member(obj: dict, *names: str) -> Any:
    """The value of the first of `names` present in `obj`, keys compared in normal form ("Question", "QA Pairs")."""
    normal = {normal_key(k): v for k, v in obj.items()}
    for name in names:
        if name in normal:
            return normal[name]
    return None


def as_text(value: Any) -> str:
    """A JSON value as the text it stands for: numbers as written, lists one item a line."""
    if value is None or value is INCOMPLETE:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "\n".join(as_text(item) for item in value)
    if isinstance(value, dict):
        return "\n".join(as_text(item) for item in value.values())
    return str(value)


_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}


def as_bool(value: Any) -> bool | None:
    """True / False from every spelling a model uses (true, "True", "yes", 1); None if it is neither."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().strip("*`'\".").lower() if value is not None and value is not INCOMPLETE else ""
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    return None


def plain(value: Any) -> Any:
    """A value read by json_values as plain Python (numbers as int / float), the way json.loads gives it."""
    if isinstance(value, JNumber):
        return float(value) if any(c in value for c in ".eE") else int(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return str(value) if isinstance(value, JString) else value


def parse_json_object(text: str | None, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The last complete JSON object in `text` that satisfies `schema` (if given); ParseError if there is none."""
    _require_text(text)
    problems = []
    for found in reversed(json_values(text)):
        if not isinstance(found.value, dict) or not found.complete:
            continue
        candidate = plain(found.value)
        if schema is None:
            return candidate
        from jsonschema import Draft202012Validator

        errors = sorted(Draft202012Validator(schema).iter_errors(candidate), key=lambda e: list(e.path))
        if not errors:
            return candidate
        problems.append(errors[0].message)
    if problems:
        raise ParseError(f"JSON does not match the schema: {problems[0]}")
    raise ParseError(f"no JSON object in the output (starts {_snippet(text)!r})")


def parse_choices(text: str | None, finish_reason: str | None, choices: dict[str, tuple[str, ...]], aliases: dict[str, str]) -> dict[str, str]:
    """{field: value} from the last JSON object naming an allowed value for every field (values compared in normal
    form, "Undergraduate" = "undergraduate", "high school" = "high_school", `aliases` mapping other spellings)."""
    _require_text(text)
    problems = []
    for found in reversed(json_values(text)):
        if not isinstance(found.value, dict):
            continue
        values, missing = {}, []
        for name, allowed in choices.items():
            raw = member(found.value, name)
            if raw is None or not is_complete(raw):
                missing.append(name)
                continue
            word = re.sub(r"_level$", "", normal_key(as_text(raw)).strip("._*"))
            word = aliases.get(word, word)
            if word in allowed:
                values[name] = word
            else:
                problems.append(f"{name} {as_text(raw)!r} is not one of {', '.join(allowed)}")
        if len(values) == len(choices):
            return values
        if missing:
            problems.append(f"no {', '.join(missing)}")
    if problems:
        raise ParseError(f"{problems[0]}" + (" (cut off at max_tokens)" if was_cut(finish_reason) else ""))
    raise ParseError(f"no JSON object in the output (starts {_snippet(text)!r})")


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
_QA_LIST_KEYS = ("qa_pairs", "qapairs", "pairs", "qa", "question_answer_pairs", "questions")
_QUESTION_KEYS = ("question", "q", "problem", "rewritten_question", "refined_question")
_ANSWER_KEYS = ("answer", "a", "solution", "rewritten_answer", "refined_answer")
# What a model copies from the requested format instead of content: "...", "the question", "<answer>".
_PLACEHOLDER = re.compile(r"^\W*(?:\.\.\.|…|(?:the\s+)?(?:rewritten\s+)?(?:question|answer)(?:\s+text)?|string|<[^>]*>|\[[^\]]*\])\W*$", re.I)


@dataclass
class _Pair:
    question: str
    answer: str
    complete: bool

    def placeholder(self) -> bool:
        return bool(_PLACEHOLDER.match(self.question)) and bool(_PLACEHOLDER.match(self.answer or "..."))


def _json_pair(item: dict) -> _Pair | None:
    question, answer = member(item, *_QUESTION_KEYS), member(item, *_ANSWER_KEYS)
    if question is None:
        return None
    whole = item.complete or (is_complete(question) and answer is not None and is_complete(answer))
    return _Pair(as_text(question).strip(), as_text(answer).strip(), whole)


def _json_pair_items(value: Any, depth: int = 0) -> tuple[list, bool] | None:
    """(pair objects, whether their container closed) held by a found JSON value, or None if it holds none."""
    if isinstance(value, list):
        if all(isinstance(item, dict) for item in value):
            return list(value), value.complete
        return None
    if not isinstance(value, dict):
        return None
    listed = member(value, *_QA_LIST_KEYS)
    if isinstance(listed, list):
        return [item for item in listed if isinstance(item, dict)], listed.complete
    if member(value, *_QUESTION_KEYS) is not None:
        return [value], value.complete
    if depth == 0:
        for inner in value.values():
            held = _json_pair_items(inner, 1)
            if held is not None:
                return held
    return None


def _json_pairs(text: str) -> tuple[list[_Pair], bool] | None:
    """Pairs from the JSON in the text and whether the last container closed; None when it holds no pair JSON."""
    pairs, closed, any_json = [], True, False
    stripped = re.sub(r"^```\w*\s*|\s*```$", "", text.strip())
    for found in json_values(text):
        held = _json_pair_items(found.value)
        if held is None:
            continue
        items, closed = held
        if not items and isinstance(found.value, list) and stripped != "[]":
            continue  # an empty list in prose ("the set []") is not an answer
        any_json = True
        for item in items:
            pair = _json_pair(item)
            if pair is not None and not pair.placeholder():
                pairs.append(pair)
    return (pairs, closed) if any_json else None


_TAG = re.compile(r"<\s*(/?)\s*(question|answer|solution)(?:[\s_-]*\d+)?\s*>", re.I)
_RULE_LINE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,})\s*$")
_FENCE_LINE = re.compile(r"^\s*```")


def _kind(name: str) -> str:
    return "question" if name.lower() in ("question", "q", "problem") else "answer"


def _clean_body(body: str) -> str:
    """A body that ran to the end of the output, without a closing fence, a rule and what follows them."""
    lines = []
    for line in body.splitlines():
        if _RULE_LINE.match(line) or _FENCE_LINE.match(line):
            break
        lines.append(line)
    return "\n".join(lines).strip()


def _tagged_pairs(text: str, cut: bool) -> list[_Pair]:
    """Pairs between <question>/<answer> tags anywhere in the text; text outside the tags is not content."""
    segments: list[tuple[str, str, bool]] = []  # (kind, body, ended by its own closing tag or a later tag)
    opened: re.Match | None = None
    for tag in _TAG.finditer(text):
        kind = _kind(tag.group(2))
        if tag.group(1):  # a closing tag
            if opened is not None and _kind(opened.group(2)) == kind:
                segments.append((kind, text[opened.end() : tag.start()].strip(), True))
                opened = None
            continue
        if opened is not None:
            segments.append((_kind(opened.group(2)), _clean_body(text[opened.end() : tag.start()]), True))
        opened = tag
    if opened is not None:  # the last body ran to the end of the output
        segments.append((_kind(opened.group(2)), _clean_body(text[opened.end() :]), not cut))
    return _assemble(segments, cut)


def _assemble(segments: list[tuple[str, str, bool]], cut: bool) -> list[_Pair]:
    pairs: list[_Pair] = []
    answered: list[bool] = []
    for kind, body, whole in segments:
        if kind == "question":
            pairs.append(_Pair(body, "", whole))
            answered.append(False)
        elif pairs and not answered[-1]:
            pairs[-1].answer, pairs[-1].complete = body, pairs[-1].complete and whole
            answered[-1] = True
        elif pairs:  # a second answer body: part of the same answer
            pairs[-1].answer = f"{pairs[-1].answer}\n\n{body}".strip()
            pairs[-1].complete = pairs[-1].complete and whole
    if cut and pairs and not answered[-1]:
        pairs[-1].complete = False  # cut before its answer began
    return [p for p in pairs if p.question and not p.placeholder()]


# A line that opens a question or an answer in markdown or labelled text: **Question 1:**, ### Answer, Q:, A1:,
# Refined Question:. A bare "A." / "A)" is an option label, "Solution A:" a heading inside an answer.
_LABEL = re.compile(
    r"^\s*(?:(?:\d+[.)]|[-*•])\s+)?(?:#{1,6}\s*)?(?:\*\*|__)?\s*(?:(?:refined|revised|rewritten|improved)\s+)?"
    r"(?P<word>question|answer|solution|problem|q|a)(?:\s*(?P<number>\d+))?\s*(?P<delim>:|\.|\)|\*\*|__)?"
    r"(?:\s*(?:\*\*|__))?\s*:?",
    re.I,
)


def _label(line: str) -> tuple[str, str] | None:
    """(kind, rest of the line) when the line opens a question or an answer."""
    match = _LABEL.match(line)
    if not match:
        return None
    word, delim, rest = match.group("word").lower(), match.group("delim"), line[match.end() :]
    if word in ("q", "a"):
        if ":" not in line[: match.end()] and not (match.group("number") and delim == "."):
            return None
    elif not delim and rest.strip() and not line.lstrip().startswith("#"):
        return None  # "Question 3 asks ...", "Answer the following": prose
    if rest[:1].isalnum() and not delim:
        return None
    return ("question" if word in ("question", "q", "problem") else "answer"), rest.strip()


def _labelled_pairs(text: str, cut: bool) -> list[_Pair]:
    segments: list[tuple[str, list[str]]] = []
    open_body = False
    for line in text.splitlines():
        label = _label(line)
        if label and (label[0] == "question" or not segments or segments[-1][0] == "question" or not open_body):
            segments.append((label[0], [label[1]]))
            open_body = True
        elif _RULE_LINE.match(line) or (_FENCE_LINE.match(line) and not open_body):
            open_body = False
        elif segments and open_body:
            segments[-1][1].append(line)
    bodies = [(kind, "\n".join(lines).strip(), True) for kind, lines in segments]
    if cut and bodies:
        bodies[-1] = (bodies[-1][0], bodies[-1][1], False)
    return _assemble(bodies, cut)


@dataclass(frozen=True)
class ReadPairs:
    pairs: list[_Pair]  # in order; the one cut off, if any, is last with complete = False
    output_cut: bool  # the output stopped before its end: more pairs may follow


def read_pairs(text: str | None, finish_reason: str | None = None) -> ReadPairs:
    """Question/answer pairs from JSON, tagged, markdown or labelled text; an empty list for an explicit none.

    Raises ParseError when the output holds neither pairs nor a statement that there are none.
    """
    text = _require_text(text)
    cut = was_cut(finish_reason)
    first_tag, first_brace = _TAG.search(text), text.find("{")
    tags_first = first_tag is not None and (first_brace == -1 or first_tag.start() < first_brace)
    from_json = None if tags_first else _json_pairs(text)
    if from_json is not None:  # a container left open was cut, whatever the finish reason says
        pairs, closed = from_json
        return ReadPairs(pairs, not closed or (bool(pairs) and not pairs[-1].complete))
    pairs = _tagged_pairs(text, cut) if first_tag else _labelled_pairs(text, cut)
    if pairs:
        return ReadPairs(pairs, cut)
    if re.search(rf"\b{NO_QA_MARKER}\b|\bno (?:qa|q&a|question[- ]answer) pairs?\b", text, re.IGNORECASE):
        return ReadPairs([], cut)
    raise ParseError(f"no question/answer pairs and no {NO_QA_MARKER} marker (starts {_snippet(text)!r})")


def parse_qa_pairs(text: str | None, finish_reason: str | None = None) -> dict[str, Any]:
    """{"qa_pairs": complete pairs (a question without an answer keeps an empty answer: the stage drops it with a
    reason, it is never merged into the next one), "cut_pair": the pair cut off at max_tokens or None,
    "output_cut": whether the output stopped before its end}."""
    read = read_pairs(text, finish_reason)
    whole = [{"question": p.question, "answer": p.answer} for p in read.pairs if p.complete]
    cut = [{"question": p.question, "answer": p.answer} for p in read.pairs if not p.complete]
    return {"qa_pairs": whole, "cut_pair": cut[-1] if cut else None, "output_cut": read.output_cut}


REFINED_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
    "additionalProperties": False,
}


def parse_refined(text: str | None, finish_reason: str | None = None) -> dict[str, Any]:
    """{"question", "answer", "cut"}: the rewritten pair (JSON, tags or labels); cut = the answer was cut off."""
    read = read_pairs(text, finish_reason)
    if not read.pairs:
        raise ParseError("the answer holds no rewritten question")
    pair = read.pairs[0]
    return {"question": pair.question, "answer": pair.answer, "cut": not pair.complete}


# --- decisions ----------------------------------------------------------------------------------------------------

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["verdict"],
    "additionalProperties": False,
}


class Conclusion(NamedTuple):
    """A phrase that states a verdict in words ("they are not the same problem" -> no)."""

    pattern: re.Pattern
    verdict: str


SAME_PROBLEM = (
    Conclusion(re.compile(r"\b(?:are|is|'re)\s+(?:not|n't)\s+(?:\w+\s+)?the\s+same\s+problem|\bn't\s+the\s+same\s+problem", re.I), "no"),
    Conclusion(re.compile(r"\b(?:are|is|'re)\s+(?:indeed\s+|essentially\s+|really\s+|just\s+)?the\s+same\s+problem", re.I), "yes"),
    Conclusion(re.compile(r"\b(?:are|is|'re)\s+(?:two\s+|clearly\s+|genuinely\s+)?(?:different|distinct)\s+problems?", re.I), "no"),
)
SHOWS_REASONING = (
    Conclusion(re.compile(r"\b(?:does\s+not|doesn't|do\s+not|fails\s+to|never)\s+show\s+(?:its|the|any)\s+(?:reasoning|intermediate\s+steps|working)", re.I), "no"),
    Conclusion(re.compile(r"(?<!not )(?<!n't )\b(?:shows|presents)\s+(?:its|the|clear)\s+(?:reasoning|intermediate\s+steps)", re.I), "yes"),
)

_WORD = r"(yes|no)"
_VERDICT_LABEL = re.compile(
    rf"(?P<final>\bfinal\s+|\boverall\s+)?\b(?:verdict|answer|decision|judg(?:e)?ment|conclusion|result)\s*(?:\*\*|__)?\s*[:=\-–]\s*(?:\*\*|__)?\s*\"?{_WORD}\b",
    re.I,
)
# "Yes, ..." / "... Yes." / "answer is: no": the word alone in its clause, not "No intermediate step is given"
_BARE_WORD = re.compile(rf"(?:^|(?<=[.!?:;]))\s*[*_>\"'`#]*\s*{_WORD}\s*[*_\"'`]*\s*(?=[,.!;:—–\-)]|$)", re.I | re.M)
_ECHO_GAP = re.compile(r"\}\s*(?:or|/|\|)\s*\{", re.I)  # {"verdict": "yes"} or {"verdict": "no"}


@dataclass(frozen=True)
class _Statement:
    position: int
    verdict: str
    explicit: bool  # JSON or a labelled line ("Verdict: no"), as opposed to words in prose
    final: bool = False


def _json_verdicts(text: str, key: str) -> list[_Statement]:
    found = json_values(text)

    def echo_gap(left: FoundJson, right: FoundJson) -> bool:
        return bool(_ECHO_GAP.fullmatch(text[left.end - 1 : right.start + 1]))

    statements = []
    for i, item in enumerate(found):
        if not isinstance(item.value, dict):
            continue
        echoed = (i + 1 < len(found) and echo_gap(item, found[i + 1])) or (i > 0 and echo_gap(found[i - 1], item))
        value = member(item.value, key)
        verdict = as_bool(value) if value is not None and is_complete(value) else None
        if verdict is not None and not echoed:
            statements.append(_Statement(item.start, "yes" if verdict else "no", True))
    return statements


def parse_yes_no(
    text: str | None, finish_reason: str | None = None, key: str = "verdict", conclusions: tuple[Conclusion, ...] = ()
) -> str:
    """'yes' or 'no' as a careful reader concludes it.

    A verdict marked final ("Final verdict: no") wins; else the explicit verdicts (a JSON `{"<key>": ...}`, a
    "Verdict: yes" line), which must agree; else the last verdict stated in words (the opening "Yes", a closing
    "No.", or a `conclusions` phrase), so the conclusion beats the opening word. An echo of the requested format
    (`{"verdict": "yes"} or {"verdict": "no"}`) is not a verdict; whole words only ("Note" is not "no"). An output
    cut off at max_tokens is read only by its complete JSON verdict: its conclusion was never written.
    """
    text = _require_text(text)
    statements = _json_verdicts(text, key)
    if was_cut(finish_reason):
        if not statements:
            raise ParseError("cut off at max_tokens before a verdict")
        return statements[-1].verdict
    statements += [
        _Statement(m.start(), m.group(2).lower(), True, bool(m.group("final"))) for m in _VERDICT_LABEL.finditer(text)
    ]
    finals = [s for s in statements if s.final]
    if finals:
        return max(finals, key=lambda s: s.position).verdict
    explicit = {s.verdict for s in statements}
    if len(explicit) > 1:
        raise ParseError("the output states both yes and no")
    if explicit:
        return explicit.pop()
    worded = [_Statement(m.start(1), m.group(1).lower(), False) for m in _BARE_WORD.finditer(text)]
    for conclusion in conclusions:
        worded += [_Statement(m.start(), conclusion.verdict, False) for m in conclusion.pattern.finditer(text)]
    if worded:
        return max(worded, key=lambda s: s.position).verdict
    raise ParseError(f"no clear yes/no decision (starts {_snippet(text)!r})")


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


def parse_flags(text: str | None, finish_reason: str | None, names: tuple[str, ...]) -> dict[str, bool]:
    """{name: bool} for every name, from the last JSON object stating them all (true, "True", "yes", 1 ...), else
    from "name: value" lines; an extra key ("reasoning") is ignored, a missing one is a ParseError naming it."""
    text = _require_text(text)
    best: dict[str, bool] = {}
    for found in reversed(json_values(text)):
        if not isinstance(found.value, dict):
            continue
        read = {}
        for name in names:
            value = member(found.value, name)
            if value is not None and is_complete(value) and as_bool(value) is not None:
                read[name] = as_bool(value)
        if len(read) == len(names):
            return read
        best = read if len(read) > len(best) else best
    if not best and not was_cut(finish_reason):
        for name in names:
            spelled = name.replace("_", r"[\s_]")
            lines = re.findall(rf"\b{spelled}\b\W*?[:=]\s*[*_`\"]*\s*(true|false|yes|no)\b", text, re.I)
            if lines:
                best[name] = as_bool(lines[-1])
        if len(best) == len(names):
            return best
    missing = [n for n in names if n not in best]
    cut = " (cut off at max_tokens)" if was_cut(finish_reason) else ""
    raise ParseError(f"no readable {', '.join(missing)}{cut}")


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

_SCORE_NUMBER = r"(\d+(?:\.\d+)?)"
_SCORE_STATEMENTS = (
    re.compile(rf"\b(?:score|grade|rating|mark)\b(?:\s*\([^)\n]*\))?\s*(?:\*\*|__)?\s*(?:[:=]|is)\s*(?:\*\*|__)?\s*{_SCORE_NUMBER}", re.I),
    re.compile(rf"{_SCORE_NUMBER}\s*(?:/|out\s+of)\s*10\b", re.I),
    re.compile(rf"^\W*{_SCORE_NUMBER}\W*$"),  # the whole output is the number ("**8**")
    re.compile(rf"^#+\s*(?:final\s+)?(?:score|grade)\s*\n+\s*(?:\*\*)?{_SCORE_NUMBER}\b", re.I | re.M),  # ### Score / 9
)


def _score_value(raw: Any) -> float | None:
    if isinstance(raw, bool) or raw is None or not is_complete(raw):
        return None
    match = re.match(rf"\s*{_SCORE_NUMBER}\s*(?:(?:/|out\s+of)\s*10)?\s*$", as_text(raw).strip("*` "), re.I)
    return float(match.group(1)) if match else None


def parse_grade(text: str | None, finish_reason: str | None = None) -> dict[str, Any]:
    """{"score": 0-10, "reasoning": ...}: the grader's JSON score ("7", "7/10" and 6.5 read too), else the last score
    stated in the text ("Score (0-10): 6", "Revised score: 9", "4 out of 10", "**8**"). A half point rounds to the
    even whole grade (the rubric's bands are whole numbers). Missing or out of range: ParseError, never a guess."""
    text = _require_text(text)
    score, reasoning = None, ""
    for found in reversed(json_values(text)):
        if isinstance(found.value, dict) and member(found.value, "score", "grade") is not None:
            score = _score_value(member(found.value, "score", "grade"))
            reasoning = as_text(member(found.value, "reasoning", "explanation")).strip()
            if score is not None:
                break
    if score is None and not was_cut(finish_reason):
        stated = [(m.start(), float(m.group(1))) for pattern in _SCORE_STATEMENTS for m in pattern.finditer(text)]
        if stated:
            position, score = max(stated)
            reasoning = text[:position].strip()
    if score is None:
        raise ParseError("cut off at max_tokens before a score" if was_cut(finish_reason) else "no score in the output")
    if not 0 <= score <= 10:
        raise ParseError(f"the score {score:g} is not within 0 to 10")
    return {"score": int(round(score)), "reasoning": reasoning}


# --- final answers ------------------------------------------------------------------------------------------------

REFERENCE_SCHEMA = {
    "type": "object",
    "properties": {"reference_answer": {"type": "string"}},
    "required": ["reference_answer"],
    "additionalProperties": False,
}


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, contents) of every \\boxed{...} and \\fbox{...}, nested braces balanced; unclosed ones skipped."""
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
                    found.append((match.start(), position + 1, text[start:position].strip()))
                    break
    return found


def boxed_contents(text: str | None) -> list[str]:
    """Contents of every \\boxed{...} (and \\fbox{...}) in order, nested braces balanced; unclosed ones are skipped."""
    return [contents for _, _, contents in _boxes(text or "")]


_FINAL_LINE = re.compile(
    r"(?:^|(?<=[.!?])[ \t]+)[ \t]*(?:\*\*|__|#+\s*)?\s*(?:the\s+)?final\s+answer(?:\s+is)?\s*(?:\*\*|__)?\s*[:=]?\s*(?:\*\*|__)?[ \t]*(?P<answer>[^\n]+)",
    re.IGNORECASE | re.MULTILINE,
)


def _bare_answer(text: str) -> str:
    """An answer stated in a line, without markdown emphasis, math delimiters and the closing full stop."""
    text = re.sub(r"(?<=[^\s.])\.$", "", text.strip()).strip("*_ ")
    text = re.sub(r"(?<!\\)\$", "", text).strip()
    boxes = _boxes(text)
    if len(boxes) == 1 and boxes[0][0] == 0 and boxes[0][1] >= len(text.rstrip(". ")):
        return boxes[0][2]
    return re.sub(r"(?<=[^\s.])\.$", "", text).strip()


def final_answer(text: str | None) -> tuple[str, str] | None:
    """(answer, method): the last explicit 'Final answer: ...' line if it comes after the last \\boxed{} (a boxed
    intermediate result does not beat the stated conclusion), else the last non-empty \\boxed{}; None if neither."""
    text = text or ""
    boxes = [b for b in _boxes(text) if b[2]]
    lines = [(m.start(), _bare_answer(m.group("answer"))) for m in _FINAL_LINE.finditer(text)]
    lines = [(position, answer) for position, answer in lines if answer]
    if lines and (not boxes or lines[-1][0] > boxes[-1][0]):
        inner = [b for b in boxes if b[0] >= lines[-1][0]]
        if inner:
            return inner[-1][2], "boxed"
        return lines[-1][1], "final_answer_line"
    if boxes:
        return boxes[-1][2], "boxed"
    return None


_REFERENCE_LINE = re.compile(r"\b(?:reference|short|final)(?:\s+final)?\s+answer\b(?:\s+is)?\s*[:=]?\s*(?P<answer>[^\n]+)", re.I)


def parse_reference(text: str | None, finish_reason: str | None = None) -> str | None:
    """The short final answer a reference extractor states: `{"reference_answer": ...}` (any key case, a number,
    commentary around it), else a "reference/short final answer: X" line, else a one-line output; None when it
    says there is none (an empty string). A single \\boxed{} around the answer is taken off."""
    text = _require_text(text)
    for found in reversed(json_values(text)):
        if isinstance(found.value, dict):
            value = member(found.value, "reference_answer", "short_answer", "final_answer", "answer")
            if value is not None and is_complete(value):
                return _bare_answer(as_text(value)) or None
    if was_cut(finish_reason):
        raise ParseError("cut off at max_tokens before a reference answer")
    line = list(_REFERENCE_LINE.finditer(text))
    if line:
        return _bare_answer(line[-1].group("answer")) or None
    stripped = text.strip()
    if "\n" not in stripped and len(stripped) <= 80:
        return _bare_answer(stripped) or None
    raise ParseError(f"no reference answer in the output (starts {_snippet(text)!r})")


# --- rules that drop content ----------------------------------------------------------------------------------------


class RuleMatch(NamedTuple):
    """Which drop rule fired, and on what text: the `detail` of the row it drops."""

    rule: str
    span: str

    def describe(self) -> str:
        return f"rule {self.rule} matched {self.span!r}"


# Unambiguous talk about the source only: "the passage of current", "a point source", "the text of a theorem",
# "encrypt this text", "the Document Object Model" are science. Ambiguous wording goes to the filter model.
_SOURCE_RULES = (
    ("source_passage", re.compile(r"\b(?:the|this|that|above|given|provided|following|preceding)\s+(?:(?:given|provided|above|following|preceding)\s+)?(?:excerpt|passage)s?\b(?!\s+(?:of|through|from|into|between|across|along)\b)", re.I)),
    ("provided_source", re.compile(r"\b(?:the|this)\s+(?:given|provided|supplied|above|preceding)\s+(?:context|text|document|material|source|reading)\b(?!\s*[:\"“'«]|\s+below)", re.I)),
    ("text_above", re.compile(r"\b(?:text|document|excerpt|passage|material)\s+above\b", re.I)),
    ("the_textbook", re.compile(r"\b(?:the|this|our)\s+textbook\b(?!\s+(?:case|example)\b)", re.I)),
    ("according_to_source", re.compile(r"\baccording\s+to\s+the\s+(?:text|author|authors|book|chapter|section|reading|notes|lecture|excerpt|passage|document)\b", re.I)),
    ("as_stated_in_source", re.compile(r"\bas\s+(?:stated|mentioned|described|discussed|noted|explained|defined|shown)\s+(?:above|earlier|previously|in\s+the\s+(?:text|passage|excerpt|chapter|section|book|document))\b", re.I)),
    ("rewrite_label", re.compile(r"\b(?:refined|revised|improved|rewritten)\s+(?:question|answer)\s*:", re.I)),
)


def source_reference(text: str | None) -> RuleMatch | None:
    """The first unambiguous phrase that talks about the source ("according to the passage", "the provided
    context", "the textbook states"), if any."""
    for rule, pattern in _SOURCE_RULES:
        match = pattern.search(text or "")
        if match:
            return RuleMatch(rule, match.group(0))
    return None


_UNITS = (
    r"(?:[kmcµμnpMG]?(?:m|g|s|l|L|J|W|V|A|N|Pa|Hz|K|C|F|T|eV|mol|Ω|ohms?)|°C?|%|cm|mm|km|kg|mg|min|h|hr|atm|bar|"
    r"in\.|ft|lb|mph|rad|deg|degrees|meters?|metres?|centimet(?:er|re)s?|seconds?|kilograms?|grams?|liters?|litres?|"
    r"units?|times|apart|high|long|wide|thick|deep|tall|across|away|by|x|×)\b"
)
_LABEL_NUMBER = r"(?P<label>\d+(?:[.\-–]\d+)*[a-h]?)"
_MATERIAL_RULES = (
    ("numbered_figure", re.compile(rf"\b(?:fig(?:ure)?s?\.?|diagrams?|charts?|graphs?|exhibits?|schemes?)\s*{_LABEL_NUMBER}", re.I)),
    ("numbered_table", re.compile(rf"\btables?\s*{_LABEL_NUMBER}", re.I)),
    ("numbered_equation", re.compile(r"\b(?:eq(?:uation)?s?\.?|formulas?|expressions?|relations?)\s*\((?P<label>\d+(?:[.\-–]\d+)*[a-z]?)\)", re.I)),
    ("numbered_equation", re.compile(r"\b(?:eq(?:uation)?s?\.?)\s+(?P<label>\d+(?:[.\-–]\d+)+)", re.I)),
    ("shown_in_figure", re.compile(r"\b(?:shown|depicted|illustrated|plotted|sketched|drawn|given)\s+(?:in|on)\s+the\s+(?:accompanying\s+|following\s+|above\s+|adjacent\s+)?(?:figure|diagram|graph|image|picture|sketch|drawing|photograph)\b", re.I)),
    ("shown_in_figure", re.compile(r"\b(?:in|from|on)\s+the\s+(?:accompanying\s+|above\s+|adjacent\s+)?(?:diagram|picture|image|sketch|drawing|photograph)\b|\bthe\s+(?:figure|diagram|graph)\s+(?:above|below)\b", re.I)),
)


def _is_label(text: str, match: re.Match) -> bool:
    """Whether a 'Table 1.25' style match is a reference ('see Table 2.1') rather than a measure ('a table 1.25 m
    high'), a glued term ('graph 3-colorable', '2.5x - 1') or a label the text itself defines ('x + y = 3 (1)')."""
    if "label" not in match.groupdict():
        return True
    before, after = text[: match.start()], text[match.end() :]
    if re.search(r"\b(?:a|an|one|each|every|this)\s+$", before, re.I):
        return False  # "a table 1.25 m high": an object, not a reference
    if re.match(r"[A-Za-z\-–]\w", after) or re.match(rf"\s*(?:{_UNITS}|[-+=*/^<>]|\d)", after):
        return False
    if match.re.pattern.startswith(r"\b(?:eq(?:uation)?s?\.?|formulas?") and "(" in match.group(0):
        tag = f"({match.group('label')})"
        elsewhere = text[: match.start()] + text[match.end() :]
        if re.search(rf"(?<![A-Za-z.]\s){re.escape(tag)}", elsewhere):
            return False  # the text numbers the equation itself
    if match.group(0).lower().startswith("table") and re.search(r"^\s*\|.*\|.*\|", text, re.M):
        return False  # the table is given inline
    return True


def missing_material_reference(text: str | None) -> RuleMatch | None:
    """The first unambiguous reference to material that is not given: a numbered figure, table or equation
    ('Fig. 4-16', 'equation (8.75)') or a figure shown elsewhere ('as shown in the figure'), if any."""
    text = text or ""
    for rule, pattern in _MATERIAL_RULES:
        for match in pattern.finditer(text):
            if _is_label(text, match):
                return RuleMatch(rule, match.group(0))
    return None
