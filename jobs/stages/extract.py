"""Stage 5, extract: every kept chunk through the high- and the low-standard prompt of its subject -> qa_extracted.

The two prompts of a chunk share their prefix (system message, then the excerpt) and differ only in the task that
follows, and they are sent as one prefix group: same batch, same engine, side by side, so the engine's prefix cache
computes the 4k-token excerpt once. The model answers JSON under QA_PAIRS_SCHEMA when the engine takes a schema and
tagged text otherwise; both are read by udfs.parsers.parse_qa_pairs, whatever the model actually wrote.

An answer cut off at max_tokens keeps every pair completed before the cut; the pair cut is a dropped/truncated row
(never kept), and the rest is asked for by a continuation request: the same prompt (so the same cached prefix)
plus the questions already given, at most extract.continuation_rounds times. A continuation is an ordinary request
with its own llm_calls row; the pairs it gives name the call they continue in `detail`.

Rows: one per extracted pair (qa_id = sha256 of chunk, standard and normalised question; the same question from the
high and the low prompt is two rows that dedup later joins, keeping the high one; within one chunk and standard a
question given twice keeps its first complete answer), plus at most one marker row, with a null question, per
(chunk, standard): failed/<llm status> when a call failed (the chunk and standard are then tried again on the next
run, from the request cache up to the failed call), dropped/no_qa_pairs when the model found none, dropped/
output_cut when the answer was still cut off after the last continuation, dropped/superseded for an earlier failure
a later run answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, BooleanType, StringType, StructField, StructType

from megascience.jobs.platform.prompts import PromptTemplate, load_prompt
from megascience.jobs.platform.settings import ExtractSettings
from megascience.jobs.platform.stage import (
    Stage,
    StageContext,
    StageOutcome,
    content_id,
    normalised,
    run_pending,
    with_run,
)
from megascience.schemas import status as S
from megascience.schemas.vocabulary import SUBJECTS as BOOK_SUBJECTS
from megascience.udfs.parsers import QA_PAIRS_SCHEMA, parse_qa_pairs

SUBJECTS = tuple(subject for subject in BOOK_SUBJECTS if subject != "other")  # the subjects with extraction prompts
STANDARDS = ("high", "low")
PAIR = StructType([StructField("question", StringType()), StructField("answer", StringType())])
PAIRS = StructType(
    [StructField("qa_pairs", ArrayType(PAIR)), StructField("cut_pair", PAIR), StructField("output_cut", BooleanType())]
)


@dataclass(frozen=True)
class ExtractionPrompts:
    """The templates of one run, loaded on the driver and shipped to executors with the prompt builder."""

    structured: bool
    continuation: PromptTemplate = field(default_factory=lambda: load_prompt("extract_continue.v1"))
    system: PromptTemplate = field(default_factory=lambda: load_prompt("extract_system.v1"))
    excerpt: PromptTemplate = field(default_factory=lambda: load_prompt("extract_excerpt.v1"))
    tasks: dict[tuple[str, str], PromptTemplate] = field(
        default_factory=lambda: {(s, q): load_prompt(f"extract_{s}_{q}.v1") for s in SUBJECTS for q in STANDARDS}
    )

    @property
    def output_format(self) -> PromptTemplate:
        return load_prompt("extract_format_json.v1" if self.structured else "extract_format_tagged.v1")

    def templates(self) -> list[PromptTemplate]:
        return [self.system, self.excerpt, *self.tasks.values(), self.output_format, self.continuation]

    def __call__(self, row: dict[str, Any]) -> list[dict[str, str]]:
        task = self.tasks.get((row["subject"], row["standard"]))
        if task is None:
            raise ValueError(f"no extraction prompt for subject {row['subject']!r} ({row['standard']} standard)")
        if not (row["text"] or "").strip():  # a model asked about nothing invents pairs: never send it
            raise ValueError("empty chunk: no text to extract questions from")
        excerpt = self.excerpt.render(subject=row["subject"], chunk=row["text"])
        content = f"{excerpt}\n{task.text}\n{self.output_format.text}"
        if row.get("round"):  # a continuation: the same prompt (the same cached prefix), then what was given
            given = row["given_questions"]
            listed = "\n".join(f"{i}. {' '.join(q.split())}" for i, q in enumerate(given, 1)) if len(given) else "(none)"
            content = f"{content}\n\n{self.continuation.render(given=listed)}"
        return [{"role": "system", "content": self.system.text}, {"role": "user", "content": content}]


# --- transforms ----------------------------------------------------------------------------------------------------


def extraction_requests(chunks: DataFrame) -> DataFrame:
    """Each chunk twice: once per standard; a first answer (round 0), nothing given yet."""
    standards = chunks.sparkSession.createDataFrame([(s,) for s in STANDARDS], "standard string")
    return chunks.select("chunk_id", "book_id", "subject", "text").crossJoin(standards).withColumns(
        {
            "round": F.lit(0),
            "given_questions": F.array().cast("array<string>"),
            "continues_call_id": F.lit(None).cast("string"),
        }
    )


def continuation_requests(generated: DataFrame) -> DataFrame:
    """The next round for every answer that was cut off: the questions given so far, and the call it continues."""
    cut = generated.where((F.col("llm_status") == "ok") & F.col("output_cut"))
    return cut.select(
        "chunk_id",
        "book_id",
        "subject",
        "text",
        "standard",
        (F.col("round") + 1).alias("round"),
        F.concat("given_questions", F.transform("qa_pairs", lambda p: p["question"])).alias("given_questions"),
        F.col("llm_call_id").alias("continues_call_id"),
    )


_PAIR_KEPT, _PAIR_MISSING_ANSWER, _PAIR_CUT = 0, 1, 2


def pair_rows(generated: DataFrame) -> DataFrame:
    """One row per extracted pair over all rounds: a complete pair beats the same question without an answer or
    cut off, an earlier round and position beat later ones."""
    ok = generated.where(F.col("llm_status") == "ok")
    keys = ["chunk_id", "book_id", "subject", "standard", "llm_call_id", "llm_model", "round", "continues_call_id"]
    whole = ok.select(*keys, F.posexplode("qa_pairs").alias("position", "pair"), F.lit(False).alias("cut"))
    cut = ok.where(F.col("cut_pair").isNotNull()).select(
        *keys, F.lit(1 << 20).alias("position"), F.col("cut_pair").alias("pair"), F.lit(True).alias("cut")
    )
    pairs = whole.unionByName(cut).select(
        "*", F.trim(F.col("pair.question")).alias("question"), F.trim(F.col("pair.answer")).alias("answer")
    )
    has_answer = F.length(F.coalesce(F.col("answer"), F.lit(""))) > 0
    kind = F.when(F.col("cut"), _PAIR_CUT).when(has_answer, _PAIR_KEPT).otherwise(_PAIR_MISSING_ANSWER)
    pairs = pairs.withColumns({"qa_id": content_id("chunk_id", "standard", normalised(F.col("question"))), "kind": kind})
    first = F.row_number().over(Window.partitionBy("qa_id").orderBy("kind", "round", "position"))
    pairs = pairs.withColumn("_first", first).where(F.col("_first") == 1)
    continued = F.format_string("given by a continuation (round %d) of the cut-off answer of call %s", "round", "continues_call_id")
    return pairs.select(
        "qa_id",
        "chunk_id",
        "book_id",
        "subject",
        "standard",
        "question",
        "answer",
        F.col("llm_call_id").alias("call_id"),
        F.col("llm_model").alias("model"),
        F.when(F.col("kind") == _PAIR_KEPT, S.KEPT).otherwise(S.DROPPED).alias("status"),
        F.when(F.col("kind") == _PAIR_KEPT, S.REASON_OK)
        .when(F.col("kind") == _PAIR_CUT, S.REASON_TRUNCATED)
        .otherwise(S.REASON_MISSING_ANSWER)
        .alias("reason"),
        F.when(F.col("kind") == _PAIR_CUT, F.format_string("the model was cut off at max_tokens inside this pair (call %s)", "llm_call_id"))
        .when(F.col("kind") == _PAIR_MISSING_ANSWER, F.lit("the model gave this question no answer"))
        .when(F.col("round") > 0, continued)
        .cast("string")
        .alias("detail"),
    )


def marker_rows(generated: DataFrame, pairs: DataFrame, earlier_failures: DataFrame, rounds: int) -> DataFrame:
    """At most one null-question row per (chunk, standard), the first that applies: a failed call, an answer still
    cut off after the last continuation, no pair at all, an earlier failure now answered."""
    key = ["chunk_id", "book_id", "subject", "standard"]
    answered_ok = F.col("llm_status") == "ok"
    failed = generated.where(~answered_ok).select(
        *key,
        "llm_call_id",
        "llm_model",
        F.lit(0).alias("priority"),
        F.lit(S.FAILED).alias("status"),
        F.col("llm_status").alias("reason"),
        F.when(F.col("round") > 0, F.format_string("the continuation of call %s: %s", "continues_call_id", "llm_error"))
        .otherwise(F.col("llm_error"))
        .alias("detail"),
    )
    unfinished = generated.where(answered_ok & F.col("output_cut") & (F.col("round") == rounds)).select(
        *key,
        "llm_call_id",
        "llm_model",
        F.lit(1).alias("priority"),
        F.lit(S.DROPPED).alias("status"),
        F.lit(S.REASON_OUTPUT_CUT).alias("reason"),
        F.lit(
            f"the answer was still cut off at max_tokens after {rounds} continuation request(s) "
            "(extract.continuation_rounds): pairs after the cut were not extracted"
        ).alias("detail"),
    )
    with_pairs = pairs.select("chunk_id", "standard").distinct()
    first_answers = generated.where(answered_ok & (F.col("round") == 0))
    none_found = first_answers.join(with_pairs, ["chunk_id", "standard"], "left_anti").select(
        *key,
        "llm_call_id",
        "llm_model",
        F.lit(2).alias("priority"),
        F.lit(S.DROPPED).alias("status"),
        F.lit(S.REASON_NO_QA_PAIRS).alias("reason"),
        F.lit("the model found no question meeting the standard").alias("detail"),
    )
    answered = first_answers.join(with_pairs, ["chunk_id", "standard"]).select("chunk_id", "standard", "llm_call_id", "llm_model")
    superseded = earlier_failures.join(answered, ["chunk_id", "standard"]).select(
        *key,
        "llm_call_id",
        "llm_model",
        F.lit(3).alias("priority"),
        F.lit(S.DROPPED).alias("status"),
        F.lit(S.REASON_SUPERSEDED).alias("reason"),
        F.lit("an earlier failed extraction, answered on a later run").alias("detail"),
    )
    markers = failed.unionByName(unfinished).unionByName(none_found).unionByName(superseded)
    first = F.row_number().over(Window.partitionBy("chunk_id", "standard").orderBy("priority", "llm_call_id"))
    markers = markers.withColumn("_first", first).where(F.col("_first") == 1)
    return markers.select(
        content_id("chunk_id", "standard", F.lit("#marker")).alias("qa_id"),
        "chunk_id",
        "book_id",
        "subject",
        "standard",
        F.lit(None).cast("string").alias("question"),
        F.lit(None).cast("string").alias("answer"),
        F.col("llm_call_id").alias("call_id"),
        F.col("llm_model").alias("model"),
        "status",
        "reason",
        F.col("detail").cast("string"),
    )


def qa_rows(generated: DataFrame, earlier_failures: DataFrame, rounds: int, ctx: StageContext) -> DataFrame:
    pairs = pair_rows(generated)
    return with_run(pairs.unionByName(marker_rows(generated, pairs, earlier_failures, rounds)), ctx)


def pending_extractions(requests: DataFrame, extracted: DataFrame) -> DataFrame:
    """(chunk, standard) requests without rows yet, or with a failed row (a failed call anywhere in the chain)."""
    keys = ["chunk_id", "standard"]
    failed = extracted.where(F.col("status") == S.FAILED).select(*keys).distinct()
    finished = extracted.select(*keys).distinct().join(failed, keys, "left_anti")
    return requests.join(finished, keys, "left_anti")


# --- the stage -----------------------------------------------------------------------------------------------------


def run(ctx: StageContext) -> StageOutcome:
    settings = ctx.settings
    rounds = settings.continuation_rounds
    chunks = ctx.read_input("chunks").where(F.col("status") == S.KEPT)
    extracted = ctx.read_input("qa_extracted")
    earlier_failures = extracted.where(F.col("question").isNull() & (F.col("status") == S.FAILED)).select(
        "chunk_id", "standard", "book_id", "subject"
    )
    requests = pending_extractions(extraction_requests(chunks), extracted)

    def extract(todo: DataFrame) -> DataFrame:
        prompts = ExtractionPrompts(
            structured=ctx.llm.role("extractor").sends_json_schema, continuation=load_prompt(settings.continuation_prompt)
        )
        ctx.recorder.prompts_used(prompts.templates())

        def ask(rows: DataFrame) -> DataFrame:
            return ctx.llm.generate(
                rows,
                "extractor",
                prompts,
                parse=parse_qa_pairs,
                output_schema=PAIRS,
                json_schema=QA_PAIRS_SCHEMA if prompts.structured else None,
                prefix_group="chunk_id",
            ).localCheckpoint()

        answers, continued = [ask(todo)], 0
        for _ in range(rounds):
            continuing = continuation_requests(answers[-1])
            count = continuing.count()
            if count == 0:
                break
            ctx.progress(f"{count} answers were cut off at max_tokens: asking for the rest (round {len(answers)})")
            answers.append(ask(continuing))
            continued += count
        ctx.recorder.counts(**{"extract.continuation_requests": continued})
        generated = answers[0]
        for later in answers[1:]:
            generated = generated.unionByName(later)
        return qa_rows(generated, earlier_failures, rounds, ctx)

    return run_pending(ctx, requests, "qa_extracted", ["chunk_id", "standard"], extract, already_pending=True)


STAGE = Stage(
    name="extract",
    inputs=("chunks", "qa_extracted"),
    output="qa_extracted",
    settings=ExtractSettings,
    run=run,
    description="high- and low-standard question/answer extraction from every kept chunk",
    roles=("extractor",),
)
