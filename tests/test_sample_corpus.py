"""The bundled sample corpus: reproducible bytes, the planted cases present in the PDFs' text."""

import hashlib
import io
import json
import re
import subprocess
import sys
from importlib import resources

import pytest
import yaml
from pypdf import PdfReader

from megascience.jobs.cli.sample_corpus import book_sources, build_sample_corpus

SUBJECT_BOOKS = {
    "math_calculus",
    "physics_mechanics",
    "chemistry_general",
    "biology_cell",
    "medicine_pharmacology",
    "cs_algorithms",
    "economics_micro",
}


def planted():
    return yaml.safe_load(resources.files("megascience.conf").joinpath("sample", "planted.yaml").read_text())


def pdf_text(path) -> str:
    reader = PdfReader(path)
    return " ".join(page.extract_text() or "" for page in reader.pages)


def words(text: str) -> list[str]:
    return [w for w in re.split(r"\W+", text.lower()) if w]


def contains_words(haystack: str, needle: str) -> bool:
    """Line wrapping and hyphenation in a PDF text layer change spacing, not the word sequence."""
    return " ".join(words(needle)) in " ".join(words(haystack))


def digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_build_is_byte_reproducible_across_processes(tmp_path, sample_corpus):
    other = tmp_path / "again"
    subprocess.run([sys.executable, "-m", "megascience.jobs.cli", "sample-corpus", str(other)], check=True, capture_output=True, timeout=300)
    assert digests(other) == digests(sample_corpus)
    build_sample_corpus(other)  # rebuilding in place rewrites nothing
    assert digests(other) == digests(sample_corpus)


def test_one_book_per_subject_with_worked_examples_and_exercises(sample_corpus):
    sources = {s.slug: s for s in book_sources()}
    assert SUBJECT_BOOKS <= set(sources)
    for slug in SUBJECT_BOOKS:
        text = "\n".join(sources[slug].pages)
        assert re.search(r"^Example \d", text, re.M) and re.search(r"^Solution\.", text, re.M), slug
        assert re.search(r"^Exercise", text, re.M) and re.search(r"^Answer\.", text, re.M), slug
        assert re.search(r"^Definition\.", text, re.M), slug
        assert sources[slug].header["license"] and sources[slug].header["title"]
        assert 4 <= len(PdfReader(sample_corpus / f"{slug}.pdf").pages) <= 8


@pytest.mark.parametrize("kind", ["near_duplicates", "rephrasings", "missing_material"])
def test_planted_questions_are_in_the_pdf_text_layer(sample_corpus, kind):
    cases = planted()[kind]
    assert cases
    for case in cases:
        for side in ([case["a"], case["b"]] if kind == "near_duplicates" else [case]):
            assert contains_words(pdf_text(sample_corpus / f"{side['book']}.pdf"), side["text"]), side["text"][:60]


def test_near_duplicates_are_near_and_rephrasings_point_at_benchmark_items():
    def shingles(text):
        tokens = words(text)
        return {tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)}

    data = planted()
    pairs = data["near_duplicates"]
    assert len({frozenset((p["a"]["book"], p["b"]["book"])) for p in pairs}) == len(pairs) >= 6
    for pair in pairs:
        a, b = shingles(pair["a"]["text"]), shingles(pair["b"]["text"])
        assert pair["a"]["book"] != pair["b"]["book"]
        assert len(a & b) / len(a | b) >= 0.6, pair["id"]
    lines = resources.files("megascience.conf").joinpath("sample", "benchmarks", "benchmark_sample.jsonl").read_text().splitlines()
    items = {item["item_id"]: item for item in map(json.loads, lines)}
    assert {item["benchmark"] for item in items.values()} == {"MMLU-sample", "GSM8K-sample", "GPQA-sample", "MedQA-sample"}
    assert all("not taken from that benchmark" in item["note"] for item in items.values())
    assert all(case["benchmark_item"] in items for case in data["rephrasings"])


def test_special_files(sample_corpus):
    scanned = PdfReader(sample_corpus / "scanned_physics_notes.pdf")
    assert len(scanned.pages) == 2 and pdf_text(sample_corpus / "scanned_physics_notes.pdf").strip() == ""
    assert PdfReader(io.BytesIO((sample_corpus / "encrypted_solutions_manual.pdf").read_bytes())).is_encrypted
    assert not (sample_corpus / "lecture_slides.pdf").read_bytes().startswith(b"%PDF")
    restricted = PdfReader(sample_corpus / "restricted_statistics.pdf").metadata
    assert "not for public distribution" in restricted["/Rights"]
