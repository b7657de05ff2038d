"""A realistic-model endpoint for tests: every role answered the way instruction-tuned models write, with the
failure modes of real output mixed in at known rates, and the true content of every answer recorded.

The content comes from the answer key (jobs/testing/scripted_model.py); this stand-in only dresses it: JSON fenced or
after a preamble, trailing notes, capitalised and extra keys, bare arrays, trailing commas, quotes left unescaped,
LaTeX written with single backslashes, echoes of the requested format, tagged text ignoring a JSON request, verdicts
whose opening word differs from their conclusion or that change their mind, booleans and scores in every spelling,
and answers cut off at max_tokens (finish_reason "length"). A continuation request (the extract stage's) gets the
pairs it did not name. The style of each answer is drawn from a seeded hash of its prompt, so a rerun asks the
same and gets the same. `truth` holds what a careful reader must take from the answers, for the tests to check
against the tables, through the real stages.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from megascience.jobs.testing.llm_server import ScriptedLLMServer
from megascience.jobs.testing.scripted_model import ScriptedModel

CUT = "length"

# (style, share) per role; the shares of a role add up to 1
RATES = {
    "extractor": (
        ("clean", 0.10), ("fenced_preamble", 0.12), ("trailing_notes", 0.08), ("keys", 0.10), ("bare_array", 0.10),
        ("single_backslash", 0.08), ("unescaped_quotes", 0.06), ("trailing_commas", 0.06), ("format_echo", 0.05),
        ("tagged", 0.05), ("cut", 0.20),
    ),
    "refiner": (("clean", 0.3), ("fenced_preamble", 0.2), ("notes", 0.15), ("keys", 0.1), ("single_backslash", 0.1), ("tagged", 0.05), ("cut", 0.1)),
    "reasoning_checker": (("json", 0.3), ("echo", 0.15), ("opening", 0.2), ("changed_mind", 0.15), ("bare", 0.2)),
    "judge": (("json", 0.3), ("echo", 0.15), ("opening_then_conclusion", 0.2), ("changed_mind", 0.15), ("bare", 0.2)),
    "filter": (("json", 0.3), ("strings", 0.2), ("python", 0.15), ("reasoning_key", 0.2), ("lines", 0.15)),
    "grader": (("json", 0.3), ("string_fraction", 0.15), ("line", 0.2), ("revised", 0.15), ("bold", 0.1), ("out_of", 0.1)),
    "reference_extractor": (("json", 0.4), ("fenced", 0.3), ("sentence", 0.3)),
    "classifier": (("json", 0.4), ("capitalised", 0.3), ("preamble_reasoning", 0.3)),
    "question_classifier": (("json", 0.5), ("capitalised", 0.25), ("preamble_reasoning", 0.25)),
    "distiller": (("plain", 0.7), ("cut", 0.3)),
    "annotator": (("plain", 0.85), ("cut", 0.15)),
}


@dataclass
class Truth:
    """What the answers hold, keyed by what the tables can be joined on."""

    pairs: dict[str, set] = field(default_factory=lambda: {"high": set(), "low": set()})  # standard -> (q, a)
    extractions_cut: int = 0
    refined: dict[str, tuple] = field(default_factory=dict)  # extracted question -> (question, answer) or "cut"
    reasoning: dict[str, str] = field(default_factory=dict)  # refined question -> yes / no
    distilled_cut: set = field(default_factory=set)  # questions whose regenerated answer was cut off
    filter_flags: dict[str, tuple] = field(default_factory=dict)  # question -> the three flags
    same_problem: dict[tuple, str] = field(default_factory=dict)  # (question, benchmark question) -> yes / no
    grades: dict[tuple, int] = field(default_factory=dict)  # (question, attempt) -> score
    annotated_cut: set = field(default_factory=set)  # external questions whose solution was cut off
    labels: dict[str, tuple] = field(default_factory=dict)  # book title -> (subject, level)
    styles: dict[str, set] = field(default_factory=dict)  # role -> styles served


def _words(text: str) -> str:
    return " ".join(text.split())


def _field(content: str, name: str, until: str) -> str:
    return content.split(f"{name}: ", 1)[1].split(until, 1)[0].strip()


def _unescaped(pairs, q="question", a="answer") -> str:
    """JSON written by hand, as a model does: quotes inside text left as they are."""
    items = ", ".join(f'{{"{q}": "{x}", "{a}": "{y}"}}' for x, y in pairs)
    return '{"qa_pairs": [' + items.replace("\\", "\\\\").replace("\n", "\\n") + "]}"


class RealisticModel:
    def __init__(self, seed: int = 0):
        self.seed, self.key, self.truth = seed, ScriptedModel(), Truth()

    def _style(self, role: str, content: str) -> str:
        draw = int(hashlib.sha256(f"{self.seed}|{role}|{content}".encode()).hexdigest()[:8], 16) / 16**8
        total = 0.0
        for style, share in RATES[role]:
            total += share
            if draw < total:
                break
        self.truth.styles.setdefault(role, set()).add(style)
        return style

    def __call__(self, payload: dict):
        role, answer = self.key.answer_as(payload)
        content = ScriptedLLMServer.prompt_text(payload)  # the text parts of a request with images
        dress = getattr(self, f"_{role}", None)
        return dress(content, answer) if dress else answer

    # --- roles --------------------------------------------------------------------------------------------------

    def _extractor(self, content: str, keyed: str):
        pairs = [(p["question"], p["answer"]) for p in json.loads(keyed)["qa_pairs"]]
        standard = "high" if "high-standard" in content else "low"
        if "cut off at its length limit" in content:  # a continuation: the pairs it does not name
            given = set(re.findall(r"^\d+\. (.+)$", content.split("cut off at its length limit", 1)[1], re.M))
            rest = [p for p in pairs if _words(p[0]) not in given]
            return "Continuing with the remaining pairs:\n\n```json\n" + json.dumps({"qa_pairs": [dict(question=q, answer=a) for q, a in rest]}, indent=2, ensure_ascii=False) + "\n```"
        self.truth.pairs[standard] |= {(_words(q), _words(a)) for q, a in pairs}
        style = self._style("extractor", content)
        objects = [{"question": q, "answer": a} for q, a in pairs]
        clean = json.dumps({"qa_pairs": objects}, ensure_ascii=False)
        if style == "cut" and pairs:
            self.truth.extractions_cut += 1
            whole = json.dumps({"qa_pairs": objects}, indent=2, ensure_ascii=False)
            last = whole.rindex('"answer": "') + len('"answer": "')
            return {"content": whole[: last + max(1, (len(whole) - last) // 3)], "finish_reason": CUT}
        if style == "fenced_preamble":
            return "Here are the question-answer pairs I extracted from the excerpt:\n\n```json\n" + json.dumps({"qa_pairs": objects}, indent=2, ensure_ascii=False) + "\n```"
        if style == "trailing_notes":
            return clean + "\n\nNote: definitions and exercises without worked solutions were left out, as asked."
        if style == "keys":
            return json.dumps({"QA_Pairs": [{"Question": q, "Answer": a, "type": "worked example"} for q, a in pairs]}, ensure_ascii=False)
        if style == "bare_array":
            return json.dumps(objects, indent=2, ensure_ascii=False)
        if style == "single_backslash":
            return clean.replace("\\\\", "\\")
        if style == "unescaped_quotes":
            return _unescaped(pairs)
        if style == "trailing_commas":
            return re.sub(r'"\}(?=, \{"|\]\}$)', '",}', clean).replace("}]}", "},]}")
        if style == "format_echo":
            return 'The answer must be {"qa_pairs": [{"question": "...", "answer": "..."}]}.\n\n' + clean
        if style == "tagged":
            body = "\n\n".join(f"<question>{q}</question>\n<answer>{a}</answer>" for q, a in pairs) or "NO_QA_PAIRS"
            return body + "\n\n---\nAll pairs are taken from the excerpt."
        return clean

    def _refiner(self, content: str, keyed: str):
        refined = json.loads(keyed)
        original = _words(_field(content, "Question", "\nAnswer: "))
        style = self._style("refiner", content)
        self.truth.refined[original] = "cut" if style == "cut" else (_words(refined["question"]), _words(refined["answer"]))
        text = json.dumps(refined, ensure_ascii=False)
        if style == "cut":
            return {"content": text[: text.index('"answer": "') + 30], "finish_reason": CUT}
        if style == "fenced_preamble":
            return "Here is the rewritten training example:\n\n```json\n" + json.dumps(refined, indent=2, ensure_ascii=False) + "\n```"
        if style == "notes":
            return text + "\n\nChanges: the needed quantities were brought into the question and the answer was boxed."
        if style == "keys":
            return json.dumps({"Question": refined["question"], "Answer": refined["answer"], "changes": "none"}, ensure_ascii=False)
        if style == "single_backslash":
            return text.replace("\\\\", "\\")
        if style == "tagged":
            return f"<question>{refined['question']}</question>\n<answer>{refined['answer']}</answer>\n\nNote: the final answer is boxed."
        return text

    def _verdict(self, role: str, content: str, verdict: str, opening: str, conclusion: dict[str, str]) -> str:
        style = self._style(role, content)
        other = "no" if verdict == "yes" else "yes"
        if style == "echo":
            return f'You asked for {{"verdict": "yes"}} or {{"verdict": "no"}}.\n\n{{"verdict": "{verdict}"}}'
        if style in ("opening", "opening_then_conclusion"):
            return f"{other.capitalize()}, {opening}, but {conclusion[verdict]}."
        if style == "changed_mind":
            return f"Verdict: {other}\n\nLooking again at both carefully.\nFinal verdict: {verdict}"
        if style == "bare":
            return f"{verdict.capitalize()}."
        return json.dumps({"verdict": verdict})

    def _reasoning_checker(self, content: str, keyed: str):
        verdict = json.loads(keyed)["verdict"]
        self.truth.reasoning[_words(_field(content, "Question", "\n\nAnswer: "))] = verdict
        phrases = {"yes": "the answer shows its reasoning step by step", "no": "the answer does not show its reasoning"}
        return self._verdict("reasoning_checker", content, verdict, "at first sight", phrases)

    def _judge(self, content: str, keyed: str):
        verdict = json.loads(keyed)["verdict"]
        training = _words(content.split("Training question:\n<<<", 1)[1].split(">>>", 1)[0])
        benchmark = _words(content.split("Benchmark question:\n<<<", 1)[1].split(">>>", 1)[0])
        self.truth.same_problem[(training, benchmark)] = verdict
        phrases = {"yes": "they are the same problem", "no": "they are not the same problem"}
        return self._verdict("judge", content, verdict, "both are on the same topic", phrases)

    def _filter(self, content: str, keyed: str):
        flags = json.loads(keyed)
        names = ("self_contradictory", "missing_material", "answer_valid")
        self.truth.filter_flags[_words(_field(content, "Question", "\n\nAnswer: "))] = tuple(flags[n] for n in names)
        style = self._style("filter", content)
        if style == "strings":
            return json.dumps({n: str(flags[n]).lower() for n in names})
        if style == "python":
            return "{" + ", ".join(f'"{n}": {flags[n]}' for n in names) + "}"
        if style == "reasoning_key":
            return json.dumps({"reasoning": "The answer is consistent and the question is self-contained.", **flags})
        if style == "lines":
            return "\n".join(f"- **{n}**: {'Yes' if flags[n] else 'No'}" for n in names)
        return json.dumps(flags)

    def _grader(self, content: str, keyed: str):
        grade = json.loads(keyed)
        attempt = int(re.search(r"Attempt (\d+):", content).group(1))
        question = _words(content.split("Question:\n<<<", 1)[1].split(">>>", 1)[0])
        self.truth.grades[(question, attempt)] = score = grade["score"]
        style = self._style("grader", content)
        if style == "string_fraction":
            return json.dumps({"reasoning": grade["reasoning"], "score": f"{score}/10"})
        if style == "line":
            return f"The student's result {grade['reasoning']}.\n\nScore: {score}"
        if style == "revised":
            return f"Score: {10 - score}\n\nOn a second reading the result {grade['reasoning']}.\nRevised score: {score}"
        if style == "bold":
            return f"**{score}**"
        if style == "out_of":
            return f"I would give this answer a {score} out of 10: it {grade['reasoning']}."
        return keyed

    def _reference_extractor(self, content: str, keyed: str):
        answer = json.loads(keyed)["reference_answer"]
        style = self._style("reference_extractor", content)
        if style == "fenced":
            return f"```json\n{keyed}\n```"
        if style == "sentence":
            return f"The short final answer is **{answer}**."
        return keyed

    def _classifier(self, content: str, keyed: str):
        label = json.loads(keyed)
        self.truth.labels[content.split("Title: ", 1)[1].split("\n", 1)[0].strip()] = (label["subject"], label["level"])
        style = self._style("classifier", content)
        if style == "capitalised":
            return json.dumps({"Subject": label["subject"].capitalize(), "Level": label["level"].replace("_", " ").capitalize()})
        if style == "preamble_reasoning":
            return f"Based on the title and the first pages:\n```json\n{json.dumps({**label, 'reasoning': 'a university course'})}\n```"
        return keyed

    def _question_classifier(self, content: str, keyed: str):
        subject = json.loads(keyed)["subject"]
        style = self._style("question_classifier", content)
        if style == "capitalised":
            return json.dumps({"Subject": subject.capitalize()})
        if style == "preamble_reasoning":
            return f"The question asks for a calculation in {subject}.\n```json\n{keyed}\n```"
        return keyed

    def _cut_text(self, role: str, content: str, text: str, cut_questions: set, question: str):
        if self._style(role, content) == "cut":
            cut_questions.add(question)
            return {"content": text[: max(1, len(text) // 2)], "finish_reason": CUT}
        return text

    def _distiller(self, content: str, text: str):
        question = _words(content.split("\\boxed{...} at the end.", 1)[1])
        return self._cut_text("distiller", content, text, self.truth.distilled_cut, question)

    def _annotator(self, content: str, text: str):
        question = _words(content.split("Question:", 1)[1])
        return self._cut_text("annotator", content, text, self.truth.annotated_cut, question)
