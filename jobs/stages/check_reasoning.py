"""Stage 8, check_reasoning: a judge decides whether each refined answer shows its reasoning; answers that do not
are regenerated step by step from the question alone (the distiller, final answer boxed).

A judge output that is neither yes nor no is a failed row (reason parse_error), never read as either: the paper's
scripts dropped such rows silently. The verdict is read as a careful reader concludes it (udfs.parsers.parse_yes_no:
the conclusion, not the opening word). A regenerated answer cut off at the distiller's max_tokens is dropped
(truncated), never kept as complete.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, StringType, StructField, StructType

from megascience.jobs.platform.prompts import ChatPrompt, load_prompt
from megascience.jobs.platform.stage import Stage, StageContext, StageOutcome, decide, llm_failed_rule, run_pending
from megascience.schemas import status as S
from megascience.udfs.llm_calls import ParseError
from megascience.udfs.parsers import SHOWS_REASONING, VERDICT_SCHEMA, parse_yes_no, was_cut

VERDICT = StructType([StructField("verdict", StringType())])
DISTILLED = StructType([StructField("distilled_answer", StringType()), StructField("answer_cut", BooleanType())])


def parse_verdict(text: str, finish_reason: str | None) -> dict:
    return {"verdict": parse_yes_no(text, finish_reason, conclusions=SHOWS_REASONING)}


def parse_distilled(text: str, finish_reason: str | None) -> dict:
    """The whole text is the answer; `answer_cut` says it stopped at max_tokens (the stage never keeps that)."""
    if not text or not text.strip():
        raise ParseError("empty answer")
    return {"distilled_answer": text.strip(), "answer_cut": was_cut(finish_reason)}


def _llm_columns(prefix: str) -> list:
    """The call's status, error, id and model under a role prefix (judge_status, distill_model, ...)."""
    return [F.col(f"llm_{c}").alias(f"{prefix}_{c}") for c in ("status", "error", "call_id", "model")]


def reasoned_rows(judged: DataFrame, distilled: DataFrame, ctx: StageContext) -> DataFrame:
    """Judged rows, with the distilled answer joined in for the 'no' verdicts."""
    rows = judged.join(distilled.select("qa_id", "distilled_answer", "answer_cut", *_llm_columns("distill")), "qa_id", "left")
    without_reasoning = F.col("verdict") == "no"
    rows = decide(
        rows,
        [
            llm_failed_rule("judge"),
            (without_reasoning & (F.col("distill_status") != "ok"), S.FAILED, F.col("distill_status"), F.col("distill_error")),
            (without_reasoning & F.col("answer_cut"), S.DROPPED, S.REASON_TRUNCATED, "the regenerated answer was cut off at the distiller's max_tokens"),
        ],
        ctx,
    )
    return rows.withColumns(
        {
            "reasoning_verdict": F.col("verdict"),
            "distilled": without_reasoning,
            "answer": F.when(without_reasoning, F.col("distilled_answer")).otherwise(F.col("answer")),
            "model": F.when(without_reasoning, F.col("distill_model")).otherwise(F.col("source_model")),
        }
    )


def run(ctx: StageContext) -> StageOutcome:
    refined = ctx.read_input("qa_refined").where(F.col("status") == S.KEPT).withColumnRenamed("model", "source_model")

    def check(todo: DataFrame) -> DataFrame:
        judge_prompt = ChatPrompt(load_prompt("reasoning_check.v1"))
        distill_prompt = ChatPrompt(load_prompt("distill.v1"))
        ctx.recorder.prompts_used(judge_prompt.templates() + distill_prompt.templates())
        judged = ctx.llm.generate(todo, "reasoning_checker", judge_prompt, parse_verdict, VERDICT, VERDICT_SCHEMA)
        judged = judged.select(*todo.columns, "verdict", *_llm_columns("judge"))
        needs_answer = judged.where(F.col("verdict") == "no").select("qa_id", "subject", "question")
        distilled = ctx.llm.generate(needs_answer, "distiller", distill_prompt, parse_distilled, DISTILLED)
        return reasoned_rows(judged, distilled, ctx)

    return run_pending(ctx, refined, "qa_reasoned", ["qa_id"], check)


STAGE = Stage(
    name="check_reasoning",
    inputs=("qa_refined", "qa_reasoned"),
    output="qa_reasoned",
    settings=None,
    run=run,
    description="judge whether each answer shows reasoning; regenerate step-by-step answers where it does not",
    roles=("reasoning_checker", "distiller"),
)
