"""Pages throughput: the ocr stage per path and the chunk stage, each against the same work in one plain process.

- text layer: `ocr` with method text_layer over born-digital books vs `get_anchor_text` (pdfium) in a loop.
- OCR path: `ocr` with method olmocr over a scanned book, against a scripted OpenAI-compatible endpoint on localhost
  that answers instantly in olmOCR's format. No model runs, so this measures OUR cost per page: rendering
  (pdftoppm at olmOCR's 1288 px), building and hashing the request, the llm_calls cache and commits, parsing. A
  real olmOCR model adds its own seconds per page on top. The peer renders, asks the same endpoint (same client,
  same concurrency) and parses in one process.
- chunking: `chunk` over the text-layer books vs a bare loop calling the same tokenizer once over each book's
  text in one process (the smoke model's tokenizer: tiktoken's cl100k file is not on this offline machine). Our
  chunker tokenizes about twice (the whole text once for offsets, then each chunk on its own for its exact count).
Each stage runs once untimed first on other books (Spark's JVM, Python workers, MLflow's store).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

TEXT_BOOKS = 8  # each holds every page of the seven sample subject books (36 pages)
SCANNED_PAGES = 24
WARM_UP_BOOKS = 1


def _write_books(folder: Path, prefix: str, count: int, scanned: bool, pages: list[str]) -> list[Path]:
    from megascience.jobs.cli.sample_corpus import BookSource, render_book

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        path = folder / f"{prefix}_{n:03d}.pdf"
        path.write_bytes(render_book(BookSource(path.stem, {"title": f"{prefix} {n}"}, pages), scanned=scanned))
        paths.append(path)
    return paths


def _subject_pages() -> list[str]:
    from megascience.jobs.cli.sample_corpus import RESTRICTED_BOOK, SCANNED_BOOK, book_sources

    return [page for source in book_sources() if source.slug not in (SCANNED_BOOK, RESTRICTED_BOOK) for page in source.pages]


def _stage_seconds(spark, config, stage) -> tuple[float, int]:
    from megascience.jobs.pipeline import run_pipeline
    from megascience.jobs.platform.tables import Lakehouse

    report = run_pipeline(spark, config, Lakehouse.open(spark, config), [stage])[0]
    return report.duration_s, report.outcome.rows_kept


def run() -> dict:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from olmocr.prompts.anchor import get_anchor_text

    from megascience.jobs.platform.config import load_config
    from megascience.jobs.platform.session import get_spark
    from megascience.jobs.platform.smoke_model import build_smoke_model
    from megascience.jobs.platform.tables import Lakehouse
    from megascience.jobs.stages import chunk, classify, ingest, ocr
    from megascience.jobs.testing.llm_server import ScriptedLLMServer, olmocr_answer
    from megascience.udfs.chunking import BOOK_PAGE_SEPARATOR, TokenizerSpec, chunk_book, load_tokenizer
    from megascience.udfs.llm_engines import EngineSpec, OpenAIEngine, Request, Sampling
    from megascience.udfs.ocr import page_request, parse_page_answer

    rows = []
    with tempfile.TemporaryDirectory(prefix="megascience-pages-bench-") as tmp, ScriptedLLMServer(
        respond=lambda payload: olmocr_answer("A scanned page.\nIts second line.")
    ) as server:
        tmp_path = Path(tmp)
        pages = _subject_pages()
        smoke = build_smoke_model(tmp_path / "smoke")
        _write_books(tmp_path / "warm", "warm_text", WARM_UP_BOOKS, False, pages[:6])
        _write_books(tmp_path / "warm", "warm_scan", WARM_UP_BOOKS, True, pages[:2])
        text_books = _write_books(tmp_path / "text", "text", TEXT_BOOKS, False, pages)
        scanned_books = _write_books(tmp_path / "scanned", "scanned", 1, True, pages[:SCANNED_PAGES])
        labels = tmp_path / "labels.csv"
        listed = [p.name for p in text_books] + [f"warm_{kind}_{n:03d}.pdf" for kind in ("text", "scan") for n in range(WARM_UP_BOOKS)]
        labels.write_text("file_name,subject,level\n" + "".join(f"{name},physics,undergraduate\n" for name in listed))

        def config_for(folder: str, *settings: str):
            return load_config(
                "local",
                [
                    f"lake.root={tmp_path / ('lake_' + folder)}",
                    f"ingest.sources=[{tmp_path / folder}]",
                    "run.progress=false",
                    f"llm.smoke_model_dir={smoke}",
                    "llm.roles.ocr.engine=openai",
                    f"llm.roles.ocr.base_url={server.base_url}",
                    "llm.openai.max_retries=0",
                    f"classify.labels_file={labels}",
                    "classify.before_ocr=false",  # ocr timed on its own, over every kept book, before classify
                    "chunk.tokenizer=extractor",
                    *settings,
                ],
            )

        spark = get_spark(config_for("warm"))
        for stage in (ingest.STAGE, ocr.STAGE, classify.STAGE, chunk.STAGE):
            _stage_seconds(spark, config_for("warm"), stage)

        # text layer
        text_config = config_for("text", "ocr.method=text_layer")
        _stage_seconds(spark, text_config, ingest.STAGE)
        spark_s, page_count = _stage_seconds(spark, text_config, ocr.STAGE)
        started = time.perf_counter()
        for path in text_books:
            for number in range(1, len(pages) + 1):
                get_anchor_text(str(path), number, "pdfium")
        bare_s = time.perf_counter() - started
        rows.append(_row("text layer (pdfium)", "pages", page_count, spark_s, bare_s))

        # OCR path against the instant endpoint
        scan_config = config_for("scanned", "ocr.method=olmocr")
        _stage_seconds(spark, scan_config, ingest.STAGE)
        spark_s, page_count = _stage_seconds(spark, scan_config, ocr.STAGE)
        engine_options = {"base_url": server.base_url, "max_concurrency": 8, "timeout_s": 120.0, "max_retries": 0}
        engine = OpenAIEngine(EngineSpec("openai", server.model, tuple(sorted(engine_options.items()))))
        sampling = Sampling(temperature=0.1, top_p=1.0, max_tokens=4096, n=1, seed=0)
        started = time.perf_counter()
        requests = [
            Request(page_request({"source_uri": str(scanned_books[0]), "page_number": n, "rotation": 0}, 1288), sampling)
            for n in range(1, SCANNED_PAGES + 1)
        ]
        answers = [parse_page_answer(c.texts[0]) for c in engine.generate(requests)]
        bare_s = time.perf_counter() - started
        assert len(answers) == page_count == SCANNED_PAGES, f"{page_count} OCR pages kept of {SCANNED_PAGES}"
        rows.append(_row("olmOCR path (instant endpoint)", "pages", page_count, spark_s, bare_s))

        # chunking
        _stage_seconds(spark, text_config, classify.STAGE)
        started = time.perf_counter()
        _, chunk_count = _stage_seconds(spark, text_config, chunk.STAGE)
        spark_s = time.perf_counter() - started  # includes resolving and loading the tokenizer on the driver
        lake = Lakehouse.open(spark, text_config)
        tokens = lake.read("chunks").groupBy().sum("token_count").first()[0]
        page_texts = lake.read("pages").orderBy("book_id", "page_number").select("book_id", "page_number", "text").collect()
        books: dict[str, list[tuple[int, str]]] = {}
        for row in page_texts:
            books.setdefault(row["book_id"], []).append((row["page_number"], row["text"]))
        tokenizer = load_tokenizer(TokenizerSpec("transformers", str(smoke), "smoke"))
        started = time.perf_counter()
        for book in books.values():
            tokenizer.count(BOOK_PAGE_SEPARATOR.join(text for _, text in book))
        bare_s = time.perf_counter() - started
        started = time.perf_counter()
        local_chunks = sum(len(chunk_book(b, None, book, tokenizer, 4096, "smoke")) for b, book in books.items())
        chunker_s = time.perf_counter() - started
        assert local_chunks == chunk_count
        rows.append(_row("chunk (stage vs one tokenizer pass)", "tokens", tokens, spark_s, bare_s))
        rows.append(_row("chunk_book in one process (no Spark)", "tokens", tokens, chunker_s, bare_s))

    headers = ["path", "unit", "count", "spark_s", "per_s", "bare_s", "bare_per_s", "slowdown"]
    lines = ["  ".join(f"{h:>36}" if h == "path" else f"{h:>15}" for h in headers)]
    lines += ["  ".join(f"{str(r[h]):>36}" if h == "path" else f"{str(r[h]):>15}" for h in headers) for r in rows]
    lines.append("OCR path: a scripted endpoint answers instantly, so its rate is our overhead per page, not a model's speed.")
    return {"rows": rows, "table": "\n".join(lines)}


def _row(path: str, unit: str, count: int, spark_s: float, bare_s: float) -> dict:
    return {
        "path": path,
        "unit": unit,
        "count": int(count),
        "spark_s": round(spark_s, 2),
        "per_s": round(count / spark_s, 1),
        "bare_s": round(bare_s, 3),
        "bare_per_s": round(count / bare_s, 1),
        "slowdown": round(spark_s / bare_s, 1),
    }
