"""An answer key for the sample corpus: a rule-based stand-in for the LLM endpoint that plays every role.

It is fine for plumbing (the pipeline runs end to end with checkable answers) and never evidence that a stage reads
real model output: it answers exactly in the format asked, as no real model does. tests/realistic_model.py dresses
its answers the way instruction-tuned models write them.

It reads the prompt and answers in the expected format: olmOCR pages, book labels, extracted pairs
(worked examples for the high standard, examples and exercises for the low one), refined answers with \\boxed{},
yes/no verdicts, filter flags, reference answers, and contamination verdicts that say yes exactly for the planted
rephrasings of conf/sample/planted.yaml and conf/sample/external/planted.yaml. Plugged into
megascience.jobs.testing.llm_server.ScriptedLLMServer as its `respond` hook, it lets the whole pipeline run over the sample corpus with
realistic, checkable output.
"""

from __future__ import annotations

import json
import re
from importlib import resources

import yaml

_BLOCK = re.compile(
    r"^(?P<label>Example|Exercise)\s*[\d.]*\s*(?P<question>.+?)\n+\s*(?:Solution|Answer)\.\s*(?P<answer>.+?)(?=\n\s*\n|\n(?:Example|Exercise|Definition|#)|\Z)",
    re.M | re.S,
)


def _planted(*path: str) -> dict:
    return yaml.safe_load(resources.files("megascience.conf").joinpath("sample", *path, "planted.yaml").read_text())


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


class ScriptedModel:
    def __init__(self):
        rephrasings = _planted()["rephrasings"] + _planted("external")["rephrasings"]
        lines = resources.files("megascience.conf").joinpath("sample", "benchmarks", "benchmark_sample.jsonl").read_text().splitlines()
        items = {item["item_id"]: item for item in map(json.loads, lines)}
        # (training question words, benchmark question words) of every planted rephrasing
        self.rephrasings = [
            (_words(r["text"])[:60], _words(items[r["benchmark_item"]]["question"])[:60]) for r in rephrasings
        ]

    def __call__(self, payload: dict) -> str | list[str]:
        return self.answer_as(payload)[1]

    def answer_as(self, payload: dict) -> tuple[str, str | list[str]]:
        """(role, answer) for a request."""
        content = payload["messages"][-1]["content"]
        if isinstance(content, list):
            text = " ".join(part.get("text", "") for part in content if part.get("type") == "text")
            if "You sort textbooks" in text:  # classify before ocr: a scan's first pages come as images
                return "classifier", self.classify(text)
            return "ocr", self.ocr()
        for marker, role, answer in (
            ("You sort textbooks", "classifier", self.classify),
            ("You sort science questions by subject", "question_classifier", self.question_subject),
            ("Textbook excerpt:", "extractor", self.extract),
            ("Rewrite them into a training example", "refiner", self.refine),
            ("Does this answer show its reasoning", "reasoning_checker", self.reasoning),
            ("Solve the following", "distiller", self.distill),
            ("strict examiner", "filter", self.filter),
            ("short final answer", "reference_extractor", self.reference),
            ("as a capable expert would", "answerer", self.answer),
            ("Work out the answer to the question below", "student", self.student),
            ("You grade a student's answer", "grader", self.grade),
            ("book of worked solutions", "annotator", self.annotate),
        ):
            if marker in content:
                return role, answer(content)
        return "judge", self.judge(content)

    @staticmethod
    def classify(content: str) -> str:
        """The sample corpus's true labels (conf/sample/book_labels.csv), found by the book's title."""
        import csv

        from megascience.jobs.cli.sample_corpus import book_sources

        labels = {r["file_name"]: r for r in csv.DictReader(resources.files("megascience.conf").joinpath("sample", "book_labels.csv").open())}
        title = content.split("Title: ", 1)[1].split("\n", 1)[0].strip()
        for book in book_sources():
            if title in (book.header.get("title", book.slug), f"{book.slug}.pdf") and f"{book.slug}.pdf" in labels:
                label = labels[f"{book.slug}.pdf"]
                return json.dumps({"subject": label["subject"], "level": label["level"]})
        return json.dumps({"subject": "other", "level": "high_school"})

    @staticmethod
    def ocr() -> str:
        return (
            "---\nprimary_language: en\nis_rotation_valid: True\nrotation_correction: 0\nis_table: False\n"
            "is_diagram: False\n---\n# Isothermal expansion\n\nExample 1.1. Two moles of an ideal gas expand slowly and "
            "isothermally at 300 K from 10 L to 20 L. Find the work done by the gas.\n\nSolution. W = nRT ln(V2/V1) = "
            "4988 J x 0.693 = 3458 J, about 3.46 kJ.\n"
        )

    @staticmethod
    def extract(content: str) -> str:
        excerpt = content.split("<<<", 1)[1].rsplit(">>>", 1)[0]
        high = "high-standard" in content
        pairs = [
            {"question": " ".join(m.group("question").split()), "answer": " ".join(m.group("answer").split())}
            for m in _BLOCK.finditer(excerpt)
            if not high or m.group("label") == "Example"
        ]
        return json.dumps({"qa_pairs": pairs})

    @staticmethod
    def _field(content: str, name: str, until: str) -> str:
        return content.split(f"{name}: ", 1)[1].split(until, 1)[0].strip()

    def refine(self, content: str) -> str:
        question = self._field(content, "Question", "\nAnswer: ")
        answer = self._field(content, "Answer", "\n\nRewrite them")
        numbers = re.findall(r"-?\d+(?:\.\d+)?", answer)
        final = numbers[-1] if numbers else answer.split(".")[0]
        return json.dumps({"question": question, "answer": f"{answer}\nTherefore the result is \\boxed{{{final}}}."})

    def reasoning(self, content: str) -> str:
        answer = self._field(content, "Answer", "\n\nDoes this answer")
        return json.dumps({"verdict": "yes" if answer.count(".") >= 2 or "=" in answer else "no"})

    @staticmethod
    def distill(content: str) -> str:
        return "Step 1: write down what is given.\nStep 2: apply the relation step by step.\n\\boxed{1}"

    @staticmethod
    def filter(content: str) -> str:
        return json.dumps({"self_contradictory": False, "missing_material": False, "answer_valid": True})

    @staticmethod
    def reference(content: str) -> str:
        return json.dumps({"reference_answer": "see answer"})

    @staticmethod
    def _question(content: str) -> str:
        return content.split("Question:", 1)[1].split(">>>", 1)[0].strip(" \n<")

    def answer(self, content: str) -> str:
        """The answerer: longer questions get longer worked answers (what the length method ranks by)."""
        steps = 2 + len(self._question(content).split()) // 5
        return "\n".join(f"Step {i + 1}: work out part {i + 1} of the problem." for i in range(steps)) + "\n\\boxed{1}"

    @staticmethod
    def student(content: str) -> list[str]:
        """16 sampled attempts (one request with n = 16), told apart by their number."""
        return [f"Attempt {i}: reason it through step by step.\n\\boxed{{{i}}}" for i in range(16)]

    def grade(self, content: str) -> str:
        """Longer questions are harder: fewer of the 16 attempts solve them (so the shortest are too easy for the
        difficulty filter and the longest too hard)."""
        attempt = int(re.search(r"Attempt (\d+):", content).group(1))
        solved_by = min(16, max(0, round(16 * (36 - len(self._question(content).split())) / 26)))
        right = attempt < solved_by
        return json.dumps({"reasoning": "agrees with the reference" if right else "a different result", "score": 10 if right else 0})

    def annotate(self, content: str) -> str:
        """A concise solution ending in a boxed final answer: the question's last number, if it has one."""
        numbers = re.findall(r"-?\d+(?:\.\d+)?", self._question(content))
        final = numbers[-1] if numbers else "see the steps above"
        return f"Given: the data of the question.\nStep 1: set up the governing relation.\nStep 2: solve it.\n\\boxed{{{final}}}"

    # words that give a question's subject away, most telling first
    SUBJECT_WORDS = (
        ("medicine", ("patient", "dose", "drug", "clinical")),
        ("biology", ("cell", "dna", "organelle", "enzyme", "photosynthesis", "gene")),
        ("chemistry", ("mol", "acid", "ph of", "reaction", "oxidation", "solution of")),
        ("economics", ("price", "demand", "market", "cost")),
        ("cs", ("algorithm", "array", "binary", "complexity")),
        ("math", ("integral", "derivative", "equation", "polynomial", "probability")),
    )

    def question_subject(self, content: str) -> str:
        """The classifier on a question: the first subject whose telling words it uses, else physics."""
        question = self._question(content).lower()
        subject = next((s for s, words in self.SUBJECT_WORDS if any(w in question for w in words)), "physics")
        return json.dumps({"subject": subject})

    def judge(self, content: str) -> str:
        text = _words(content)
        same = any(book in text and item in text for book, item in self.rephrasings)
        return json.dumps({"verdict": "yes" if same else "no"})
