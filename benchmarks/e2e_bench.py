"""End to end: every stage of `make run` over the sample corpus, and over the corpus doubled, side by side.

The doubled corpus adds a variant of every sample book (the scanned and the restricted one too) whose words of five
letters or more carry a suffix, so its chunks, questions and shingles are new (nothing is answered from the request
cache or removed as a near-duplicate of the original) while the structure the stages react to (worked examples,
exercises, figure references) stays. Both runs share one warm Spark session, after an untimed warm-up run over one
book (JVM, Python workers, the embedding model). LLM roles are answered by the rule-based stand-in endpoint of the
tests (jobs/testing/scripted_model.py) on localhost, so the times are the pipeline's own (Spark, Delta, MLflow, embeddings),
not a model's. Times are per stage from its lineage record; rows are the stage's input rows and rows written.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
import time
from importlib import resources
from pathlib import Path

PROTECTED = {"Example", "Exercise", "Solution", "Answer", "Definition", "Figure", "Table", "Chapter"}


def _variant_text(text: str, suffix: str) -> str:
    return re.sub(r"\b[A-Za-z]{5,}\b", lambda m: m.group(0) if m.group(0) in PROTECTED else m.group(0) + suffix, text)


def _corpus(directory: Path, copies: int) -> Path:
    """The sample corpus plus `copies - 1` variants of each of its books, and a label file for all of them."""
    from megascience.jobs.cli.sample_corpus import (
        SCANNED_BOOK,
        BookSource,
        book_sources,
        build_sample_corpus,
        render_book,
    )

    build_sample_corpus(directory)
    labels = list(csv.DictReader(io.StringIO(resources.files("megascience.conf").joinpath("sample", "book_labels.csv").read_text())))
    by_file = {row["file_name"]: row for row in labels}
    for copy in range(1, copies):
        suffix = "abcdefgh"[copy - 1] * 2
        for source in book_sources():
            variant = BookSource(
                f"{source.slug}_v{copy}", source.header, [_variant_text(page, suffix) for page in source.pages]
            )
            (directory / f"{variant.slug}.pdf").write_bytes(render_book(variant, scanned=source.slug == SCANNED_BOOK))
            if f"{source.slug}.pdf" in by_file:
                labels.append({**by_file[f"{source.slug}.pdf"], "file_name": f"{variant.slug}.pdf"})
    with open(directory / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "subject", "level"])
        writer.writeheader()
        writer.writerows(labels)
    return directory


def _run(spark, root: Path, corpus: Path, settings: list[str]) -> tuple[float, list]:
    from megascience.jobs.pipeline import STAGES, run_pipeline
    from megascience.jobs.platform.config import load_config
    from megascience.jobs.platform.tables import Lakehouse

    config = load_config(
        "local",
        [f"lake.root={root}", f"ingest.sources=[{corpus}]", f"classify.labels_file={corpus / 'labels.csv'}", *settings],
    )
    started = time.perf_counter()
    reports = run_pipeline(spark, config, Lakehouse.open(spark, config), list(STAGES))
    return time.perf_counter() - started, reports


def _ratio(a: float, b: float) -> float | None:
    return round(b / a, 2) if a else None


def run() -> dict:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from megascience.jobs.platform.config import load_config
    from megascience.jobs.platform.session import get_spark
    from megascience.jobs.platform.smoke_model import build_smoke_model
    from megascience.jobs.testing.llm_server import ScriptedLLMServer
    from megascience.jobs.testing.scripted_model import ScriptedModel

    with tempfile.TemporaryDirectory(prefix="megascience-e2e-") as tmp, ScriptedLLMServer(respond=ScriptedModel()) as server:
        tmp_path = Path(tmp)
        settings = [
            "run.progress=false",
            "llm.default_engine=openai",
            f"llm.openai.base_url={server.base_url}",
            "llm.openai.max_retries=0",
            f"chunk.tokenizer={build_smoke_model(tmp_path / 'smoke')}",  # cl100k's file is not on this machine
        ]
        started = time.perf_counter()
        spark = get_spark(load_config("local", [f"lake.root={tmp_path / 'warm_up'}", *settings]))
        session_s = time.perf_counter() - started

        corpora = {copies: _corpus(tmp_path / f"corpus_{copies}x", copies) for copies in (1, 2)}
        warm_up = tmp_path / "corpus_warm_up"
        warm_up.mkdir()
        for name in ("physics_mechanics.pdf", "labels.csv"):
            (warm_up / name).write_bytes((corpora[1] / name).read_bytes())
        _run(spark, tmp_path / "lake_warm_up", warm_up, settings)

        measured = {}
        for copies, corpus in corpora.items():
            before = len(server.requests)
            total_s, reports = _run(spark, tmp_path / f"lake_{copies}x", corpus, settings)
            measured[copies] = (total_s, reports, len(server.requests) - before)

    (total_1, reports_1, calls_1), (total_2, reports_2, calls_2) = measured[1], measured[2]
    rows = []
    for one, two in zip(reports_1, reports_2):
        written_1 = one.outcome.commit.rows_written if one.outcome.commit else 0
        written_2 = two.outcome.commit.rows_written if two.outcome.commit else 0
        rows.append(
            {
                "stage": one.stage,
                "rows_in_1x": one.outcome.rows_in,
                "rows_in_2x": two.outcome.rows_in,
                "written_1x": written_1,
                "written_2x": written_2,
                "s_1x": round(one.duration_s, 1),
                "s_2x": round(two.duration_s, 1),
                "time_ratio": _ratio(one.duration_s, two.duration_s),
            }
        )
    rows.append(
        {
            "stage": "TOTAL",
            "rows_in_1x": sum(r["rows_in_1x"] for r in rows),
            "rows_in_2x": sum(r["rows_in_2x"] for r in rows),
            "written_1x": sum(r["written_1x"] for r in rows),
            "written_2x": sum(r["written_2x"] for r in rows),
            "s_1x": round(total_1, 1),
            "s_2x": round(total_2, 1),
            "time_ratio": _ratio(total_1, total_2),
        }
    )
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in headers}
    table = "\n".join(
        ["  ".join(h.rjust(widths[h]) for h in headers)] + ["  ".join(str(r[h]).rjust(widths[h]) for h in headers) for r in rows]
    )
    table += (
        f"\nSpark session start {session_s:.1f} s (not in the totals); LLM calls {calls_1} (1x) / {calls_2} (2x), "
        "answered by a local scripted endpoint"
    )
    return {
        "rows": rows,
        "session_start_s": round(session_s, 1),
        "llm_calls": {"1x": calls_1, "2x": calls_2},
        "table": table,
        "note": "1x = the sample corpus, 2x = plus a variant of every book with distinct words; one warm Spark session",
    }
