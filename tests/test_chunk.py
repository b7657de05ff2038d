"""The chunk stage: the lossless-chunking invariant as a seeded property test, and stages 1-4 end to end."""

import random
import shutil

import pytest

from megascience.jobs.cli.sample_corpus import book_sources
from megascience.jobs.pipeline import run_pipeline, select_stages
from megascience.jobs.platform.lineage import describe_run
from megascience.jobs.platform.tables import Lakehouse
from megascience.jobs.stages import chunk
from megascience.jobs.testing.llm_server import ScriptedLLMServer, olmocr_answer
from megascience.udfs.chunking import (
    BOOK_PAGE_SEPARATOR,
    TiktokenTokenizer,
    TokenizerSpec,
    chunk_book,
    chunk_spans,
    load_tokenizer,
)
from tests.conftest import make_config

TABLES = ("books", "pages", "book_labels", "chunks", "llm_calls")


class CharTokenizer:
    """One token per character: cut points are exactly predictable."""

    def token_starts(self, text):
        return list(range(len(text)))

    def count(self, text):
        return len(text)


def byte_level_tiktoken():
    """A small byte-level BPE in tiktoken (cl100k's pre-tokenizer pattern, a few merges): cl100k's file is not here."""
    import tiktoken

    ranks = {bytes([i]): i for i in range(256)}
    for piece in (b"th", b"he", b"the", b"in", b" t", b" the", b"\n\n", b"  ", b"er", b"an", b"\xc3\xa9"):
        ranks[piece] = len(ranks)
    pattern = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    return TiktokenTokenizer(tiktoken.Encoding("bytes-test", pat_str=pattern, mergeable_ranks=ranks, special_tokens={}))


PIECES = ["the ", "then ", "in", "é", "∫x dx", "😀", "数学", "  ", "\n", "\n\n", "\t", "x", "12345", ".", "—", "\r\n"]


def random_text(rng: random.Random) -> str:
    """Words, unicode, runs of spaces and newlines; sometimes no newline at all, sometimes one very long line."""
    pieces = [p for p in PIECES if "\n" not in p] if rng.random() < 0.2 else PIECES
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 600)))


def check_chunks(text, spans, tokenizer, max_tokens):
    pieces = [text[start:end] for start, end, _ in spans]
    assert "".join(pieces) == text  # nothing lost, nothing duplicated, nothing added
    assert all(piece for piece in pieces)
    for (start, end, count), piece in zip(spans, pieces):
        assert count == tokenizer.count(piece) <= max_tokens
    for piece in pieces[:-1]:  # a cut is after a newline, or a hard cut in a chunk without one (past its first char)
        assert piece.endswith("\n") or "\n" not in piece[1:]


def test_cuts_move_back_to_the_last_newline_or_are_hard():
    tokenizer = CharTokenizer()

    def cut(text, max_tokens):
        return [text[s:e] for s, e, _ in chunk_spans(text, tokenizer, max_tokens)]

    assert cut("aaa\nbbb\nccc", 6) == ["aaa\n", "bbb\n", "ccc"]
    assert cut("aa\nb\ncccccc", 6) == ["aa\nb\n", "cccccc"]  # the last newline that fits, not the first
    assert cut("abcdefghij", 4) == ["abcd", "efgh", "ij"]  # no newline: hard cuts
    assert cut("\nabcdefgh", 4) == ["\nabc", "defg", "h"]  # a newline as the chunk's first character is no cut point
    assert cut("abc\n", 4) == ["abc\n"] and cut("", 4) == []


def test_chunking_invariant_over_random_texts(smoke_model):
    tokenizers = {"transformers": load_tokenizer(TokenizerSpec("transformers", str(smoke_model), "smoke")), "tiktoken": byte_level_tiktoken()}
    rng = random.Random(20260402)
    cases = 0
    for name, tokenizer in tokenizers.items():
        for _ in range(150):
            text, max_tokens = random_text(rng), rng.randint(16, 120)
            check_chunks(text, chunk_spans(text, tokenizer, max_tokens), tokenizer, max_tokens)
            cases += 1
    assert cases == 300


def test_sample_books_chunk_losslessly_with_stable_ids(smoke_model):
    tokenizer = load_tokenizer(TokenizerSpec("transformers", str(smoke_model), "smoke"))
    for source in book_sources():
        pages = list(enumerate(source.pages, start=1))
        rows = chunk_book(source.slug, "physics", pages, tokenizer, 200, "smoke")
        text = BOOK_PAGE_SEPARATOR.join(source.pages)
        assert "".join(r["text"] for r in rows) == text and len(rows) > 1
        assert [r["chunk_index"] for r in rows] == list(range(len(rows)))
        assert all(r["token_count"] <= 200 and r["status"] == "kept" for r in rows)
        assert rows[0]["first_page"] == 1 and rows[-1]["last_page"] == len(pages)
        assert all(a["last_page"] <= b["first_page"] for a, b in zip(rows, rows[1:]))
        again = chunk_book(source.slug, "physics", list(reversed(pages)), tokenizer, 200, "smoke")
        assert [r["chunk_id"] for r in again] == [r["chunk_id"] for r in rows]  # page order comes from page numbers
    empty = chunk_book("b0", "math", [], tokenizer, 200, "smoke")
    assert [(r["status"], r["reason"], r["chunk_index"]) for r in empty] == [("failed", "no_text", None)]


def test_tokenizer_choice_falls_back_or_fails_as_configured(lake_root, smoke_model, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(lake_root / "empty-tiktoken-cache"))  # cl100k's file is not there
    messages = []
    spec, note = chunk.resolve_tokenizer(make_config(lake_root, f"llm.smoke_model_dir={smoke_model}"), messages.append)
    if spec == chunk.CL100K:
        pytest.skip("tiktoken could download cl100k_base here, so there is no fallback to test")
    assert spec.label == "transformers:megascience-smoke-model (random weights: output is noise)"
    assert spec.source == str(smoke_model) and "cl100k_base file is not available here" in note
    assert "chunking with the extractor model's tokenizer (chunk" in messages[0]
    with pytest.raises(chunk.TokenizerUnavailableError, match="or set chunk.tokenizer=extractor"):
        chunk.resolve_tokenizer(make_config(lake_root, "chunk.if_cl100k_missing=error"), messages.append)
    named, note = chunk.resolve_tokenizer(make_config(lake_root, f"chunk.tokenizer={smoke_model}"), messages.append)
    assert named == TokenizerSpec("transformers", str(smoke_model), f"transformers:{smoke_model}") and note is None
    with pytest.raises(chunk.TokenizerUnavailableError, match="cannot load the tokenizer of '/nonexistent/tok'"):
        chunk.resolve_tokenizer(make_config(lake_root, "chunk.tokenizer=/nonexistent/tok"), messages.append)
    with pytest.raises(chunk.ConfigError, match="--set chunk.max_tokens: chunk.max_tokens must be at least 16, got 8"):
        make_config(lake_root, "chunk.max_tokens=8")


def test_pages_stages_end_to_end_and_rerun_changes_nothing(spark, lake_root, sample_corpus, smoke_model):
    scanned_text = "Lecture 1: The First Law\n\nThermodynamics describes systems with very many particles."
    with ScriptedLLMServer(respond=lambda payload: olmocr_answer(scanned_text)) as server:
        config = make_config(
            lake_root,
            f"ingest.sources=[{sample_corpus}]",
            f"llm.smoke_model_dir={smoke_model}",
            "llm.roles.ocr.engine=openai",
            f"llm.roles.ocr.base_url={server.base_url}",
            "chunk.max_tokens=512",
        )
        lake = Lakehouse.open(spark, config)
        stages = select_stages("ingest", "chunk")
        assert [s.name for s in stages] == ["ingest", "classify", "ocr", "chunk"]  # the paper's order
        reports = run_pipeline(spark, config, lake, stages)
        versions = {name: lake.version(name) for name in TABLES}
        assert all(version is not None for version in versions.values())

        labels = {r["book_id"]: r for r in lake.read("book_labels").collect()}
        assert len(labels) == 8 and all(r["label_source"] == "override" and r["keep"] for r in labels.values())
        pages = {}
        for row in lake.read("pages").where("status = 'kept'").collect():
            pages.setdefault(row["book_id"], {})[row["page_number"]] = row["text"]
        chunks = {}
        for row in lake.read("chunks").collect():
            chunks.setdefault(row["book_id"], []).append(row)
        assert set(chunks) == set(labels)
        for book_id, rows in chunks.items():
            rows.sort(key=lambda r: r["chunk_index"])
            book_text = BOOK_PAGE_SEPARATOR.join(text for _, text in sorted(pages[book_id].items()))
            assert "".join(r["text"] for r in rows) == book_text
            assert all(r["token_count"] <= 512 and r["subject"] == labels[book_id]["subject"] for r in rows)
            assert rows[0]["first_page"] == 1 and rows[-1]["last_page"] == max(pages[book_id])
        assert {r["tokenizer"] for rows in chunks.values() for r in rows} == {
            "transformers:megascience-smoke-model (random weights: output is noise)"
        }
        chunk_run = describe_run(config, reports[-1].run_id)
        assert chunk_run.params["chunk.tokenizer_used"].startswith("transformers:megascience-smoke-model")
        assert "chunk.tokenizer_fallback" in chunk_run.params and chunk_run.params["chunk.max_tokens"] == "512"

        # a rerun commits nothing anywhere and calls nothing
        requests = len(server.requests)
        run_pipeline(spark, config, lake, stages)
        assert {name: lake.version(name) for name in TABLES} == versions and len(server.requests) == requests

        # chunking again from scratch gives the same ids
        ids = {r["chunk_id"] for rows in chunks.values() for r in rows}
        shutil.rmtree(lake.location("chunks"))
        run_pipeline(spark, config, lake, [chunk.STAGE])
        assert {r["chunk_id"] for r in lake.read("chunks").collect()} == ids
