"""Stage 5, extract: every kept chunk through the high- and the low-standard prompt of its subject -> qa_extracted.

The two prompts of a chunk share their prefix (system message, then the excerpt) and differ only in the task that
follows, and they are sent as one prefix group: same batch, same engine, side by side, so the engine's prefix cache
computes the 4k-token excerpt once. The model answers JSON under QA_PAIRS_SCHEMA when the engine takes a schema and
tagged text otherwise; both parse (udfs.parsers.parse_qa_pairs).

Rows: one per extracted pair (qa_id = sha256 of chunk, standard and normalised question; the same question from the
high and the low prompt is two rows that dedup later joins, keeping the high one), plus one marker row, with a null
question, for each (chunk, standard) that gave no usable pair: dropped/no_qa_pairs or failed/<llm status>. A failed
(chunk, standard) is tried again on the next run; if it then yields pairs, its marker becomes dropped/superseded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, StringType, StructField, StructType

from jobs.prompts import PromptTemplate, load_prompt
from jobs.qa_common import content_id, normalised, run_pending, with_run
from jobs.stage import Stage, StageContext, StageOutcome
from schemas import status as S
from udfs.parsers import QA_PAIRS_SCHEMA, parse_qa_pairs

SUBJECTS = ("math", "physics", "chemistry", "biology", "medicine", "cs", "economics")
STANDARDS = ("high", "low")
PAIRS = StructType(
    [
        StructField(
            "qa_pairs",
            ArrayType(StructType([StructField("question", StringType()), StructField("answer", StringType())])),
        )
    ]
)


@dataclass(frozen=True)
class ExtractionPrompts:
    """The templates of one run, loaded on the driver and shipped to executors with the prompt builder."""

    structured: bool
    system: PromptTemplate = field(default_factory=lambda: load_prompt("extract_system.v1"))
    excerpt: PromptTemplate = field(default_factory=lambda: load_prompt("extract_excerpt.v1"))
    tasks: dict[tuple[str, str], PromptTemplate] = field(
        default_factory=lambda: {(s, q): load_prompt(f"extract_{s}_{q}.v1") for s in SUBJECTS for q in STANDARDS}
    )

    @property
    def output_format(self) -> PromptTemplate:
        return load_prompt("extract_format_json.v1" if self.structured else "extract_format_tagged.v1")

    def templates(self) -> list[PromptTemplate]:
        return [self.system, self.excerpt, *self.tasks.values(), self.output_format]

    def __call__(self, row: dict[str, Any]) -> list[dict[str, str]]:
        task = self.tasks.get((row["subject"], row["standard"]))
        if task is None:
            raise ValueError(f"no extraction prompt for subject {row['subject']!r} ({row['standard']} standard)")
        if not (row["text"] or "").strip():  # a model asked about nothing invents pairs: never send it
            raise ValueError("empty chunk: no text to extract questions from")
        excerpt = self.excerpt.render(subject=row["subject"], chunk=row["text"])
        return [
            {"role": "system", "content": self.system.text},
            {"role": "user", "content": f"{excerpt}\n{task.text}\n{self.output_format.text}"},
        ]


# --- transforms ----------------------------------------------------------------------------------------------------


def extraction_requests(chunks: DataFrame) -> DataFrame:
    """Each chunk twice: once per standard."""
    standards = chunks.sparkSession.createDataFrame([(s,) for s in STANDARDS], "standard string")
    return chunks.select("chunk_id", "book_id", "subject", "text").crossJoin(standards)


def pair_rows(generated: DataFrame) -> DataFrame:
    """One row per extracted pair; a repeated question within one answer keeps its first occurrence."""
    pairs = generated.where(F.col("llm_status") == "ok").select(
        "chunk_id", "book_id", "subject", "standard", "llm_call_id", "llm_model", F.posexplode("qa_pairs").alias("position", "pair")
    )
    pairs = pairs.select(
        "*", F.trim(F.col("pair.question")).alias("question"), F.trim(F.col("pair.answer")).alias("answer")
    ).withColumn("qa_id", content_id("chunk_id", "standard", normalised(F.col("question"))))
    pairs = pairs.withColumn("_first", F.min("position").over(Window.partitionBy("qa_id")))
    has_answer = F.length(F.coalesce(F.col("answer"), F.lit(""))) > 0
    return pairs.where(F.col("position") == F.col("_first")).select(
        "qa_id",
        "chunk_id",
        "book_id",
        "subject",
        "standard",
        "question",
        "answer",
        F.col("llm_call_id").alias("call_id"),
        F.col("llm_model").alias("model"),
        F.when(has_answer, S.KEPT).otherwise(S.DROPPED).alias("status"),
        F.when(has_answer, S.REASON_OK).otherwise(S.REASON_MISSING_ANSWER).alias("reason"),
        F.when(has_answer, None).otherwise("the model gave this question no answer").cast("string").alias("detail"),
    )


def marker_rows(generated: DataFrame, earlier_failures: DataFrame) -> DataFrame:
    """One null-question row per (chunk, standard) without usable pairs, and superseded markers of old failures."""
    answered_ok = F.col("llm_status") == "ok"
    no_pairs = generated.where(~answered_ok | (F.size("qa_pairs") == 0)).select(
        "chunk_id",
        "book_id",
        "subject",
        "standard",
        "llm_call_id",
        "llm_model",
        F.when(answered_ok, S.DROPPED).otherwise(S.FAILED).alias("status"),
        F.when(answered_ok, S.REASON_NO_QA_PAIRS).otherwise(F.col("llm_status")).alias("reason"),
        F.when(answered_ok, "the model found no question meeting the standard").otherwise(F.col("llm_error")).alias("detail"),
    )
    answered = generated.where(answered_ok & (F.size("qa_pairs") > 0)).select("chunk_id", "standard", "llm_call_id", "llm_model")
    superseded = earlier_failures.join(answered, ["chunk_id", "standard"]).select(
        "chunk_id",
        "book_id",
        "subject",
        "standard",
        "llm_call_id",
        "llm_model",
        F.lit(S.DROPPED).alias("status"),
        F.lit(S.REASON_SUPERSEDED).alias("reason"),
        F.lit("an earlier failed extraction, answered on a later run").alias("detail"),
    )
    markers = no_pairs.unionByName(superseded)
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


def qa_rows(generated: DataFrame, earlier_failures: DataFrame, ctx: StageContext) -> DataFrame:
    return with_run(pair_rows(generated).unionByName(marker_rows(generated, earlier_failures)), ctx)


# --- the stage -----------------------------------------------------------------------------------------------------


def run(ctx: StageContext) -> StageOutcome:
    chunks = ctx.read_input("chunks").where(F.col("status") == S.KEPT)
    earlier_failures = (
        ctx.read_input("qa_extracted")
        .where(F.col("question").isNull() & (F.col("status") == S.FAILED))
        .select("chunk_id", "standard", "book_id", "subject")
    )

    def extract(todo: DataFrame) -> DataFrame:
        prompts = ExtractionPrompts(structured=ctx.llm.role("extractor").sends_json_schema)
        ctx.recorder.prompts_used(prompts.templates())
        generated = ctx.llm.generate(
            todo,
            "extractor",
            prompts,
            parse=parse_qa_pairs,
            output_schema=PAIRS,
            json_schema=QA_PAIRS_SCHEMA if prompts.structured else None,
            prefix_group="chunk_id",
        )
        return qa_rows(generated, earlier_failures, ctx)

    return run_pending(ctx, extraction_requests(chunks), "qa_extracted", ["chunk_id", "standard"], extract)


STAGE = Stage(
    name="extract",
    inputs=("chunks", "qa_extracted"),
    output="qa_extracted",
    config_section=None,
    run=run,
    description="high- and low-standard question/answer extraction from every kept chunk",
    roles=("extractor",),
)
