"""Stage 7, refine: each dedup keeper with its source chunk -> a self-contained question and a verified answer.

The refiner sees the chunk, the extracted question and answer, and rewrites them (conf/prompts/refine.v1.txt):
all needed context pulled into the question, the answer checked and corrected, clear intermediate steps, exact
final answers in \\boxed{}, no mention of the source. Dropped: an answer cut off at max_tokens (truncated), an empty
field, or text that unambiguously talks about its source ("according to the passage", "the provided context", "the
textbook states": udfs.parsers.source_reference, the meta-text the paper's drop rule targets). Wording that only
might refer to the source ("the author's", "the source") is left to the filter model, which is asked about it.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, StringType, StructField, StructType

from megascience.jobs.platform.prompts import ChatPrompt, load_prompt
from megascience.jobs.platform.stage import Stage, StageContext, StageOutcome, decide, llm_failed_rule, run_pending
from megascience.schemas import status as S
from megascience.udfs.parsers import REFINED_SCHEMA, parse_refined, source_reference

REFINED = StructType(
    [
        StructField("refined_question", StringType()),
        StructField("refined_answer", StringType()),
        StructField("meta_phrase", StringType()),
        StructField("refine_cut", BooleanType()),
    ]
)


def parse(text: str, finish_reason: str | None) -> dict:
    refined = parse_refined(text, finish_reason)
    meta = source_reference(refined["question"]) or source_reference(refined["answer"])
    return {
        "refined_question": refined["question"],
        "refined_answer": refined["answer"],
        "meta_phrase": meta.describe() if meta else None,
        "refine_cut": refined["cut"],
    }


def refine_inputs(clusters: DataFrame, extracted: DataFrame, chunks: DataFrame) -> DataFrame:
    """Dedup keepers with their extracted pair and the text of their chunk."""
    keepers = clusters.where(F.col("status") == S.KEPT).select("qa_id")
    pairs = extracted.where(F.col("status") == S.KEPT).select("qa_id", "chunk_id", "book_id", "subject", "standard", "question", "answer")
    return keepers.join(pairs, "qa_id").join(chunks.select("chunk_id", F.col("text").alias("chunk")), "chunk_id")


def refined_rows(generated: DataFrame, ctx: StageContext) -> DataFrame:
    empty = (F.length(F.coalesce("refined_question", F.lit(""))) == 0) | (F.length(F.coalesce("refined_answer", F.lit(""))) == 0)
    rows = decide(
        generated,
        [
            llm_failed_rule(),
            (F.col("refine_cut"), S.DROPPED, S.REASON_TRUNCATED, "the rewritten answer was cut off at the refiner's max_tokens"),
            (empty, S.DROPPED, S.REASON_REFINE_EMPTY_FIELD, "the rewritten question or answer is empty"),
            (F.col("meta_phrase").isNotNull(), S.DROPPED, S.REASON_REFINE_META_TEXT, F.concat(F.lit("mentions its source: "), F.col("meta_phrase"))),
        ],
        ctx,
    )
    return rows.withColumns(
        {"question": F.col("refined_question"), "answer": F.col("refined_answer"), "call_id": F.col("llm_call_id"), "model": F.col("llm_model")}
    )


def run(ctx: StageContext) -> StageOutcome:
    inputs = refine_inputs(ctx.read_input("qa_clusters"), ctx.read_input("qa_extracted"), ctx.read_input("chunks"))

    def refine(todo: DataFrame) -> DataFrame:
        structured = ctx.llm.role("refiner").sends_json_schema
        prompt = ChatPrompt(load_prompt("refine.v1"), load_prompt("refine_format_json.v1" if structured else "refine_format_tagged.v1"))
        ctx.recorder.prompts_used(prompt.templates())
        generated = ctx.llm.generate(
            todo, "refiner", prompt, parse=parse, output_schema=REFINED, json_schema=REFINED_SCHEMA if structured else None
        )
        return refined_rows(generated, ctx)

    return run_pending(ctx, inputs, "qa_refined", ["qa_id"], refine)


STAGE = Stage(
    name="refine",
    inputs=("qa_clusters", "qa_extracted", "chunks", "qa_refined"),
    output="qa_refined",
    settings=None,
    run=run,
    description="self-contained questions and verified, step-by-step, boxed answers, written with the source chunk",
    roles=("refiner",),
)
