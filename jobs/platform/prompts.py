"""Prompt templates: versioned text files under conf/prompts/, rendered with $placeholders.

A template's sha256 goes into lineage (and, through the rendered text, into every request id), so a changed prompt
is visible in MLflow and never answered from the cache of the old one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from string import Template


@dataclass(frozen=True)
class PromptTemplate:
    name: str  # file name without .txt, e.g. "classify.v1"
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def render(self, **values: object) -> str:
        """Fill $placeholders; a missing value is an error (KeyError), never an empty hole in the prompt."""
        return Template(self.text).substitute({key: str(value) for key, value in values.items()})


@lru_cache(maxsize=None)
def load_prompt(name: str) -> PromptTemplate:
    try:
        text = resources.files("megascience.conf").joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no prompt template conf/prompts/{name}.txt") from None
    return PromptTemplate(name, text)


@dataclass(frozen=True)
class ChatPrompt:
    """A prompt builder for LlmGateway.generate: one user message rendered from the row's columns.

    `placeholders` maps template names to row columns where they differ. A placeholder whose value is null is an
    error (the row gets prompt_error), never the word "None" in a prompt.
    """

    template: PromptTemplate
    suffix: PromptTemplate | None = None  # e.g. the output-format instructions, chosen per engine
    placeholders: tuple[tuple[str, str], ...] = ()

    def templates(self) -> list[PromptTemplate]:
        return [self.template] + ([self.suffix] if self.suffix else [])

    def __call__(self, row: dict) -> list[dict[str, str]]:
        columns = dict(self.placeholders)
        values = {}
        for name in Template(self.template.text).get_identifiers():
            value = row[columns.get(name, name)]
            if value is None:
                raise ValueError(f"no value for ${name} in prompt {self.template.name}")
            values[name] = value
        content = self.template.render(**values)
        if self.suffix:
            content = f"{content}\n{self.suffix.text}"
        return [{"role": "user", "content": content}]
