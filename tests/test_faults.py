"""Fault injection and bad inputs, on real Spark, Delta and MLflow; a scripted HTTP server plays the LLM endpoint.

- bad files (zero pages, a huge page, control characters in the text layer) through ingest -> chunk, and
  benchmark or dataset files holding bytes that are not UTF-8;
- a broken endpoint (429, 500, timeouts, a body that is not JSON, a truncated answer) and empty chunks through
  extract, then a rerun that retries only what failed;
- two processes merging into one Delta table at once, and a merge that loses the commit race;
- `megascience run` killed with SIGKILL at seeded points (mid LLM stage, right after a stage's commit), resumed:
  every table equals the uninterrupted run's (the `sample_lake` fixture), and no answered LLM call is paid twice;
- the API key given in the environment appears in no log, MLflow record or table file.

The other bad inputs of the recipe are covered where their stage is tested: corrupt, encrypted, not-PDF and
restricted files (test_ingest.py, test_pdf.py), image-only pages (test_ocr.py), malformed model output
(test_parsers.py, test_extract.py), unparseable judges and benchmark files with missing fields
(test_decontaminate.py, test_curation.py), bad configuration values (test_config.py).
"""

import io
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from deltalake import DeltaTable
from fpdf import FPDF
from pypdf import PdfWriter
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from megascience.jobs.pipeline import run_pipeline, select_stages
from megascience.jobs.platform.session import delta_connector_loaded
from megascience.jobs.platform.tables import ConcurrentWriteError, DeltaRsBackend, DeltaSparkBackend, Lakehouse
from megascience.jobs.stages import extract
from megascience.jobs.testing.crashes import KILL_CHUNK_ROWS, KILL_LOSS_BOUND, KILL_WINDOW, call_id_of, lake_differences
from megascience.jobs.testing.llm_server import ScriptedLLMServer
from megascience.jobs.testing.scripted_model import ScriptedModel
from megascience.schemas import status as S
from megascience.schemas import tables as table_schemas
from megascience.schemas.tables import CHUNKS, TableSpec
from tests.conftest import ROOT, make_config

SEED = 20261122
NOW = datetime(2026, 1, 1)


# --- bad files: ingest -> ocr -> classify -> chunk ------------------------------------------------------------------


def zero_page_pdf() -> bytes:
    out = io.BytesIO()
    PdfWriter().write(out)
    return out.getvalue()


def huge_page_pdf(lines: int) -> bytes:
    """One 4000 x 4000 pt page (55 inches a side) holding `lines` long lines of small text."""
    pdf = FPDF(unit="pt", format=(4000, 4000))
    pdf.set_font("helvetica", size=6)
    pdf.add_page()
    for n in range(lines):
        pdf.cell(text=f"Line {n}: " + " ".join(f"term{n}x{k}" for k in range(110)), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def raw_text_pdf(lines: list[bytes]) -> bytes:
    """A hand-written one-page PDF (Helvetica, WinAnsiEncoding) whose strings hold any bytes: control characters
    and bytes that are not UTF-8 reach the text layer as the font encoding maps them."""
    content = b"BT /F1 10 Tf 50 700 Td 14 TL " + b" ".join(b"(" + line + b") Tj T*" for line in lines) + b" ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1) + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


CONTROL_LINES = [
    b"Example 1. A ball of mass 2 kg falls 5 m. Find the work done by gravity on the ball.",
    b"Control characters \\000 NUL \\033 ESC \\007 BEL and bytes that are not UTF-8: \\200 \\201 \\377 \\376 end.",
    b"Solution. W = mgh = 2 x 9.8 x 5 = 98 J, the work done by gravity on the falling ball.",
]


def test_zero_page_huge_page_and_control_characters_from_ingest_to_chunks(spark, lake_root, smoke_model, tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "zero_pages.pdf").write_bytes(zero_page_pdf())
    (folder / "huge_page.pdf").write_bytes(huge_page_pdf(lines=150))
    (folder / "control_characters.pdf").write_bytes(raw_text_pdf(CONTROL_LINES))
    labels = tmp_path / "labels.csv"
    labels.write_text("file_name,subject,level\nhuge_page.pdf,math,undergraduate\ncontrol_characters.pdf,physics,undergraduate\n")
    settings = [f"classify.labels_file={labels}", f"chunk.tokenizer={smoke_model}", f"llm.smoke_model_dir={smoke_model}"]
    config = make_config(lake_root, f"ingest.sources=[{folder}]", *settings)
    lake = Lakehouse.open(spark, config)
    run_pipeline(spark, config, lake, select_stages("ingest", "chunk"))

    books = {r["file_name"]: r for r in lake.read("books").collect()}
    assert (books["zero_pages.pdf"]["status"], books["zero_pages.pdf"]["reason"]) == (S.FAILED, S.REASON_ZERO_PAGES)
    assert books["zero_pages.pdf"]["detail"]
    assert books["huge_page.pdf"]["status"] == books["control_characters.pdf"]["status"] == S.KEPT
    names = {book["book_id"]: name for name, book in books.items()}
    pages = {names[r["book_id"]]: r for r in lake.read("pages").collect()}
    assert set(pages) == {"huge_page.pdf", "control_characters.pdf"}  # a book of zero pages has no page rows

    huge = pages["huge_page.pdf"]
    assert (huge["status"], huge["method"], huge["char_count"]) == (S.KEPT, "text_layer", len(huge["text"]))
    assert huge["char_count"] > 100_000 and "Line 149: term149x0" in huge["text"]
    chunks = {}
    for row in lake.read("chunks").collect():
        chunks.setdefault(names[row["book_id"]], []).append(row)
    huge_chunks = sorted(chunks["huge_page.pdf"], key=lambda r: r["chunk_index"])
    assert len(huge_chunks) > 1 and all(c["status"] == S.KEPT for c in huge_chunks)
    assert all(c["token_count"] <= config["chunk"]["max_tokens"] and c["first_page"] == c["last_page"] == 1 for c in huge_chunks)
    assert "".join(c["text"] for c in huge_chunks) == huge["text"]  # the page, cut losslessly

    controls = pages["control_characters.pdf"]
    assert controls["status"] == S.KEPT and "Control characters" in controls["text"] and "end." in controls["text"]
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", controls["text"]), repr(controls["text"])
    assert "€" in controls["text"]  # byte 0x80 in WinAnsiEncoding
    [chunk] = chunks["control_characters.pdf"]
    assert chunk["status"] == S.KEPT and chunk["text"] == controls["text"]


# --- text that is not UTF-8 in a benchmark or dataset file ------------------------------------------------------------


def test_source_files_with_bytes_that_are_not_utf8(tmp_path):
    from megascience.jobs.platform.sources import Source, SourceError, Unreadable, file_records, source_records
    from megascience.jobs.stages.benchmarks import BENCHMARK_SOURCES

    lines = [
        json.dumps({"id": "a", "question": "Is \u2028 a line separator?"}, ensure_ascii=False).encode(),
        b'{"id": "b", "question": "caf\xe9 in Latin-1"}',
        json.dumps({"id": "c", "question": "Still read after the bad line?"}).encode(),
    ]
    records = list(file_records(b"\n".join(lines), "jsonl"))
    assert [where for where, _ in records] == ["line 1", "line 2", "line 3"]  # U+2028 in a string splits no line
    assert records[0][1]["question"] == "Is \u2028 a line separator?" and records[2][1]["id"] == "c"
    assert isinstance(records[1][1], Unreadable) and records[1][1].problem.startswith("not UTF-8")
    assert "caf\ufffd" in records[1][1].text

    latin1 = tmp_path / "items.csv"
    latin1.write_bytes("id,question\nx,caf\u00e9 au lait?\n".encode("latin-1"))
    source = Source("latin1", BENCHMARK_SOURCES, {"question": "question"}, file=str(latin1), format="csv")
    with pytest.raises(SourceError, match=r"benchmark source latin1: .*items.csv is not UTF-8 text"):
        list(source_records(source))


# --- a broken endpoint and empty chunks through extract ---------------------------------------------------------------

FAULT_CHUNKS = {
    "ok": "Example 1. A cart of 2 kg accelerates at 3 m/s^2. Find the net force. Solution. F = ma = 6 N.",
    "rate-limited": "Example 2. Find the work done lifting 2 N by 6 m. Solution. W = 12 J. [429-once]",
    "slow": "Example 3. How long does light take to cross 3 m? Solution. About 10 ns. [slow]",
    "down": "Example 4. What is the charge of an electron? Solution. -1.6e-19 C. [500]",
    "malformed": "Example 5. What is 2 + 2? Solution. 4. [malformed]",
    "truncated": "Example 6. What is the speed of sound in air? Solution. About 343 m/s.",
    "controls": "Example 7.\x00 What is\x1b the unit\x07 of power?\ufffd Solution. The watt.",
    "empty": "",
    "blank": " \n\t \n",
}


def fault_chunks(spark):
    rows = [
        (f"chunk-{name}", f"book-{name}", "physics", 0, 1, 1, 20, text, "test", S.KEPT, S.REASON_OK, None, "r0", NOW)
        for name, text in FAULT_CHUNKS.items()
    ]
    return spark.createDataFrame(rows, CHUNKS.schema)


def excerpt_answer(payload):
    """One pair per excerpt, named after it; a truncated JSON answer for the `truncated` chunk."""
    text = payload["messages"][-1]["content"]
    name = next(n for n, chunk_text in FAULT_CHUNKS.items() if chunk_text.strip() and chunk_text in text)
    if name == "truncated":
        return {"content": '{"qa_pairs": [{"question": "What is the speed of sound', "finish_reason": "length"}
    return json.dumps({"qa_pairs": [{"question": f"What does the {name} excerpt ask?", "answer": "It asks a question."}]})


def extract_outcomes(lake):
    """(chunk name, standard) -> (status, reason, detail) of the row for that chunk (its pair, or its marker)."""
    return {
        (r["chunk_id"][len("chunk-"):], r["standard"]): (r["status"], r["reason"], r["detail"] or "")
        for r in lake.read("qa_extracted").where(F.col("status") != S.DROPPED).collect()
    }


def test_endpoint_faults_and_empty_chunks_through_extract_then_a_rerun_retries_only_failures(spark, lake_root):
    lake = Lakehouse.open(spark, make_config(lake_root))
    lake.write("chunks", fault_chunks(spark))
    with ScriptedLLMServer(respond=excerpt_answer, slow_s=2.5) as server:
        settings = ["llm.default_engine=openai", f"llm.openai.base_url={server.base_url}", "llm.openai.max_retries=1"]
        config = make_config(lake_root, *settings, "llm.openai.timeout_s=1.0")
        [report] = run_pipeline(spark, config, lake, [extract.STAGE])
        outcomes = extract_outcomes(lake)
        assert report.outcome.rows_in == 2 * len(FAULT_CHUNKS)
        for standard in extract.STANDARDS:
            def outcome(name):
                return outcomes[(name, standard)]

            for name in ("ok", "rate-limited", "controls"):
                assert outcome(name)[:2] == (S.KEPT, S.REASON_OK), name
            for name, error in (("slow", "Timeout"), ("down", "InternalServerError"), ("malformed", "")):
                assert outcome(name)[:2] == (S.FAILED, S.REASON_ENGINE_ERROR) and error in outcome(name)[2], name
            for name in ("empty", "blank"):
                assert outcome(name) == (S.FAILED, S.REASON_PROMPT_ERROR, "ValueError: empty chunk: no text to extract questions from")
        prompts = [ScriptedLLMServer.prompt_text(p) for p in server.requests]
        sent = {name: text for name, text in FAULT_CHUNKS.items() if text.strip()}
        per_chunk = {name: sum(text in p for p in prompts) for name, text in sent.items()}
        # the cut-off answer is continued (and cut off again); the second continuation would repeat the first word
        # for word (nothing complete was given), so the request cache answers it
        assert per_chunk == {"ok": 2, "rate-limited": 4, "slow": 4, "down": 4, "malformed": 2, "truncated": 4, "controls": 2}
        cut = lake.read("qa_extracted").where(F.col("chunk_id") == "chunk-truncated").collect()
        assert sorted((r["standard"], r["status"], r["reason"]) for r in cut) == [
            (standard, S.DROPPED, reason) for standard in sorted(extract.STANDARDS) for reason in (S.REASON_OUTPUT_CUT, S.REASON_TRUNCATED)
        ]  # the pair cut off is never kept, and the marker says pairs after the cut are missing
        assert len(prompts) == sum(per_chunk.values())  # the empty and blank chunks never reached the model
        assert any("\x1b" in p and "\x00" in p for p in prompts)  # control characters travel JSON-escaped

        # the endpoint has recovered from its slowness: only failed calls are retried, answers come from the cache
        config = make_config(lake_root, *settings, "llm.openai.timeout_s=30")
        [again] = run_pipeline(spark, config, lake, [extract.STAGE])
        retried = [ScriptedLLMServer.prompt_text(p) for p in server.requests[len(prompts):]]
        assert sorted(name for name, text in sent.items() for p in retried if text in p) == (
            ["down"] * 4 + ["malformed"] * 2 + ["slow"] * 2
        )
        assert again.outcome.rows_in == 2 * 5  # slow, down, malformed, empty, blank
        outcomes = extract_outcomes(lake)
        for standard in extract.STANDARDS:
            assert outcomes[("slow", standard)][:2] == (S.KEPT, S.REASON_OK)
            assert outcomes[("down", standard)][:2] == (S.FAILED, S.REASON_ENGINE_ERROR)
        superseded = lake.read("qa_extracted").where(F.col("reason") == S.REASON_SUPERSEDED).collect()
        assert sorted(r["chunk_id"] for r in superseded) == ["chunk-slow", "chunk-slow"]


# --- two writers, one Delta table -------------------------------------------------------------------------------------

CONTENDED = TableSpec(
    name="contended",
    keys=("key",),
    description="a table two processes merge into at once",
    schema=StructType([StructField("key", StringType(), False), StructField("value", StringType(), True)]),
)
KEYS, ROUNDS = 12, 12


def round_rows(writer: str, round_number: int) -> list[tuple[str, str]]:
    """The rows one merge writes: four neighbouring keys (the writers' rounds overlap), valued writer:round."""
    return [(f"k{(3 * round_number + j) % KEYS:02d}", f"{writer}:{round_number}") for j in range(4)]


def contend(lake: Lakehouse, writer: str, go: Path) -> list[list]:
    """Wait for `go`, then merge ROUNDS batches of rows into `contended`; each round's outcome."""
    frames = [lake.spark.createDataFrame(round_rows(writer, n), CONTENDED.schema) for n in range(ROUNDS)]
    while not go.exists():
        time.sleep(0.01)
    outcomes = []
    for number, frame in enumerate(frames):
        try:
            outcomes.append([writer, number, "ok", lake.merge("contended", frame, update_matched=True, skip_unchanged=False).version])
        except ConcurrentWriteError as err:
            outcomes.append([writer, number, "conflict", str(err)])
    return outcomes


OTHER_WRITER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from tests.conftest import make_config
    from tests.test_faults import CONTENDED, contend
    from megascience.jobs.platform.session import get_spark
    from megascience.jobs.platform.tables import Lakehouse
    from megascience.schemas import tables
    tables.TABLES["contended"] = CONTENDED
    config = make_config({lake!r}, "spark.master=local[1]", *{settings!r})
    lake = Lakehouse.open(get_spark(config), config)
    lake.spark.range(1).count()
    Path({ready!r}).touch()
    print(json.dumps(contend(lake, "B", Path({go!r}))))
    """
)


# How the other process opens the same backend (the connector's jars only where they resolve).
WRITER_SETTINGS = {"delta-rs": ("lake.backend=delta-rs",), "delta-spark": ("lake.backend=delta-spark", "spark.delta_packages=true")}


@pytest.fixture
def contended_lake(spark, lake_root, monkeypatch, request):
    monkeypatch.setitem(table_schemas.TABLES, "contended", CONTENDED)
    backend = getattr(request, "param", "delta-rs")
    if backend == "delta-spark":
        if not delta_connector_loaded(spark):
            pytest.skip(
                "two delta-spark writers not tested: the Delta connector's jars are not in this Spark session "
                "(Maven Central is unreachable here); set MEGASCIENCE_TEST_DELTA_PACKAGES=1 where they resolve"
            )
        lake = Lakehouse(spark, DeltaSparkBackend(spark, str(lake_root)))
    else:
        lake = Lakehouse(spark, DeltaRsBackend(spark, str(lake_root)))
    lake.write("contended", spark.createDataFrame([("k00", "seed")], CONTENDED.schema))
    return lake


@pytest.mark.parametrize("contended_lake", ["delta-rs", "delta-spark"], indirect=True)
def test_two_processes_merging_into_one_table_leave_it_consistent(spark, lake_root, contended_lake, tmp_path):
    """The shared commit protocol with two real writers: lost races are redone, every commit is told its own version."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    script = tmp_path / "other_writer.py"
    settings = WRITER_SETTINGS[contended_lake.backend_name]
    script.write_text(OTHER_WRITER.format(root=str(ROOT), lake=str(lake_root), ready=str(ready), go=str(go), settings=settings))
    other = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 240
        while not ready.exists() and other.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "the other writer did not start"
        go.touch()
        mine = contend(contended_lake, "A", go)
        out, _ = other.communicate(timeout=240)
    finally:
        other.kill()
    outcomes = mine + json.loads(out.strip().splitlines()[-1])

    for writer, number, result, detail in outcomes:
        if result == "conflict":  # allowed, if named clearly
            assert "merge into contended" in detail and "concurrent writer committed first" in detail, detail
    committed = sorted((detail, writer, number) for writer, number, result, detail in outcomes if result == "ok")
    versions = [version for version, _, _ in committed]
    assert len(set(versions)) == len(versions)  # no two writers were told they made the same version
    history = contended_lake.history("contended")
    assert sorted(h.version for h in history) == list(range(len(committed) + 1)) == [0] + versions
    # replaying the committed merges in version order gives every version of the table, exactly
    expected = {"k00": "seed"}
    table_path = contended_lake.location("contended")
    for version, writer, number in committed:
        expected.update(round_rows(writer, number))
        at_version = DeltaTable(table_path, version=version).to_pyarrow_table().to_pylist()
        assert len(at_version) == len({r["key"] for r in at_version})  # never a key twice
        assert {r["key"]: r["value"] for r in at_version} == expected, version
    final = contended_lake.read("contended").collect()
    assert {r["key"]: r["value"] for r in final} == expected and len(final) == KEYS


def test_a_merge_that_loses_the_commit_race_is_redone_or_named(spark, contended_lake, monkeypatch):
    """Another writer commits between our snapshot and our commit: the merge is redone on the new snapshot; when it
    keeps losing, a ConcurrentWriteError names the table."""
    contended_lake.merge("contended", spark.createDataFrame([("k01", "v1"), ("k02", "v1")], CONTENDED.schema))
    merge = DeltaTable.merge
    stale = {"left": 2}

    def merge_on_a_stale_snapshot(table, *args, **kwargs):
        if stale["left"]:
            stale["left"] -= 1
            table.load_as_version(0)  # as if version 1 were committed by someone else after we read the table
        return merge(table, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "merge", merge_on_a_stale_snapshot)
    rows = spark.createDataFrame([("k02", "v2"), ("k03", "v2")], CONTENDED.schema)
    commit = contended_lake.merge("contended", rows, update_matched=True)
    assert stale["left"] == 0 and commit.version == 2 and commit.rows_written == 2
    values = {r["key"]: r["value"] for r in contended_lake.read("contended").collect()}
    assert values == {"k00": "seed", "k01": "v1", "k02": "v2", "k03": "v2"}

    stale["left"] = 1000
    with pytest.raises(ConcurrentWriteError, match=r"merge into contended at .*: a concurrent writer committed first .*tried 5 times"):
        contended_lake.merge("contended", spark.createDataFrame([("k04", "v3")], CONTENDED.schema))
    assert contended_lake.version("contended") == 2 and contended_lake.count("contended") == 4


# --- kill -9 and resume ---------------------------------------------------------------------------------------------

THROUGH = "publish"  # the textbook stages: their gold table is compared with the uninterrupted run's


class KillSwitch:
    """The endpoint's answers (jobs/testing/scripted_model.py); SIGKILLs the running command's process group when the
    request numbered `at_request` arrives, before answering it."""

    def __init__(self):
        self.model = ScriptedModel()
        self.child: subprocess.Popen | None = None
        self.at_request: int | None = None
        self.seen = 0
        self._lock = threading.Lock()

    def __call__(self, payload):
        with self._lock:
            self.seen += 1
            fire = self.seen == self.at_request and self.child is not None
        if fire:
            os.killpg(self.child.pid, signal.SIGKILL)
        return self.model(payload)


def ok_call_ids(lake_root: Path) -> set[str]:
    calls = DeltaTable(str(lake_root / "tables" / "llm_calls")).to_pyarrow_table(columns=["call_id", "status"]).to_pylist()
    return {c["call_id"] for c in calls if c["status"] == "ok"}


@pytest.fixture(scope="module")
def killed_and_resumed(spark, sample_lake, sample_corpus, smoke_model, tmp_path_factory):
    """`megascience run --until publish` killed twice at seeded points, then run to the end in-process.

    Kill 1: the driver's whole process group, when a seeded LLM request of the extract stage arrives (chunks of 4
    calls and 4 in flight, so earlier chunks are durable and what was in flight is lost). Kill 2: the same, right after the
    first Delta commit of a seeded later stage's output (between its commit and the end of its MLflow run).
    """
    rng = random.Random(SEED)
    root = tmp_path_factory.mktemp("killed_lake") / "lake"
    secret = "sk-megascience-" + secrets.token_hex(16)
    switch = KillSwitch()
    settings = [
        f"ingest.sources=[{sample_corpus}]",
        "llm.default_engine=openai",
        "llm.openai.max_retries=0",
        f"chunk.tokenizer={smoke_model}",
    ]
    ocr_requests = 3  # the scanned book's pages and the math book's typeset page; classify takes the sample's label file
    kills = [  # (where, the request to kill at; None: at the first commit of table `where`)
        ("extract, mid-way", ocr_requests + rng.randint(2 * KILL_LOSS_BOUND + 1, 3 * KILL_LOSS_BOUND)),
        (rng.choice(["qa_refined", "qa_reasoned", "qa_filtered"]), None),
    ]
    with ScriptedLLMServer(respond=switch) as server:
        settings.append(f"llm.openai.base_url={server.base_url}")
        command = [str(Path(sys.executable).parent / "megascience"), "run", "--until", THROUGH, "--set", f"lake.root={root}"]
        command += [arg for s in (*settings, f"llm.chunk_rows={KILL_CHUNK_ROWS}", f"llm.openai.max_concurrency={KILL_WINDOW}", "llm.commit_interval_s=0.5", "spark.master=local[2]") for arg in ("--set", s)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": secret, "PYSPARK_PYTHON": sys.executable}
        logs, boundaries, committed = [], [], []
        for where, at_request in kills:
            switch.at_request = at_request
            log = root.parent / f"run{len(logs)}.log"
            with open(log, "w") as handle:
                switch.child = child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
                if at_request is None:  # a commit boundary: the table's first commit file appears
                    first_commit = root / "tables" / where / "_delta_log" / f"{0:020d}.json"
                    while child.poll() is None and not first_commit.exists():
                        time.sleep(0.02)
                    os.killpg(child.pid, signal.SIGKILL)
                returncode = child.wait(timeout=900)
                switch.child = None
            logs.append(log.read_text())
            assert returncode == -signal.SIGKILL, (where, logs[-1][-3000:])
            boundaries.append(len(server.requests))
            committed.append(ok_call_ids(root))
        config = make_config(root, *settings)
        lake = Lakehouse.open(spark, config)
        reports = run_pipeline(spark, config, lake, select_stages(until=THROUGH))
        yield {
            "lake": lake,
            "reports": reports,
            "boundaries": boundaries,
            "committed": committed,
            "requests": list(server.requests),
            "authorizations": set(server.authorizations),
            "logs": logs,
            "secret": secret,
        }


# The fixture runs the textbook stages about twice over (and `sample_lake` once, when this file runs alone): on a
# busy 2-core machine that takes longer than the suite's default per-test timeout.
@pytest.mark.timeout(2400)
def test_killed_runs_resume_to_the_uninterrupted_result(killed_and_resumed, sample_lake):
    resumed, reference = killed_and_resumed["lake"], sample_lake.lake
    assert [r.stage for r in killed_and_resumed["reports"]] == [s.name for s in select_stages(until=THROUGH)]
    names = [name for name in table_schemas.TABLES if resumed.exists(name) and name != "llm_calls"]
    assert {"textbook_reasoning", "qa_extracted", "qa_refined", "contamination"} <= set(names)
    skipped = tuple(name for name in table_schemas.TABLES if name not in names)  # the stages after THROUGH, llm_calls
    for name, found in lake_differences(resumed, reference, skip=skipped).items():
        assert found["repeated_keys"] == 0, f"{name}: a key twice"
        assert found["rows_ours"] == found["rows"] and found["equal"], (name, found)

    # the request cache: a call committed before a kill is never asked again; at most one chunk and the calls in
    # flight are lost per kill
    requests = killed_and_resumed["requests"]
    ids = [call_id_of(p) for p in requests]
    for boundary, committed in zip(killed_and_resumed["boundaries"], killed_and_resumed["committed"]):
        assert committed and not committed & set(ids[boundary:])
    assert len(ids) - len(set(ids)) <= KILL_LOSS_BOUND
    calls = {r["call_id"]: r["status"] for r in resumed.read("llm_calls").collect()}
    assert set(calls) == set(ids) and set(calls.values()) == {"ok"}
    reference_calls = {r["call_id"] for r in reference.read("llm_calls").collect()}
    assert set(calls) <= reference_calls


@pytest.mark.timeout(2400)
def test_the_api_key_from_the_environment_is_never_written_down(killed_and_resumed):
    secret = killed_and_resumed["secret"]
    assert f"Bearer {secret}" in killed_and_resumed["authorizations"]  # the key was used
    for log in killed_and_resumed["logs"]:
        assert "[ingest]" in log and secret not in log
    root = Path(killed_and_resumed["lake"].location("books")).parents[1]
    files = [path for path in root.rglob("*") if path.is_file()]
    assert any(p.name == "mlflow.db" for p in files) and any("_delta_log" in p.parts for p in files)
    leaked = [str(path) for path in files if secret.encode() in path.read_bytes()]
    assert leaked == []
