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
        text = resources.files("conf").joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no prompt template conf/prompts/{name}.txt") from None
    return PromptTemplate(name, text)
