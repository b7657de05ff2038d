"""Pieces every QA curation stage shares: pending rows, row outcomes from LLM statuses, ids, writing outcomes."""

from __future__ import annotations

from typing import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.outcome import commit_rows, run_columns
from jobs.stage import StageContext, StageOutcome
from schemas import status as S
from schemas.tables import table_spec


def pending_rows(inputs: DataFrame, output: DataFrame, keys: list[str]) -> DataFrame:
    """Input rows with no finished row in the stage's output yet; rows that failed before are tried again."""
    finished = output.where(F.col("status") != S.FAILED).select(*keys).distinct()
    return inputs.join(finished, keys, "left_anti")


def content_id(*parts: Column | str) -> Column:
    """sha256 of the parts joined by a separator that cannot occur in text: a deterministic, content-derived id."""
    return F.sha2(F.concat_ws("\u241f", *[F.col(p) if isinstance(p, str) else p for p in parts]), 256)


def normalised(text: Column) -> Column:
    """Lower case, runs of whitespace as one space, trimmed: two spellings of the same question get one id."""
    return F.trim(F.regexp_replace(F.lower(text), r"\s+", " "))


def decide(df: DataFrame, rules: list[tuple[Column, str, str, Column | str | None]], ctx: StageContext) -> DataFrame:
    """Set status, reason and detail from the first rule whose condition holds; rows no rule catches are kept.

    A rule is (condition, status, reason, detail). Put `llm_failed_rule()` first so that a failed call is never
    mistaken for a verdict.
    """
    status, reason, detail = F.lit(S.KEPT), F.lit(S.REASON_OK), F.lit(None).cast("string")
    for condition, rule_status, rule_reason, rule_detail in reversed(rules):
        rule_detail = rule_detail if isinstance(rule_detail, Column) else F.lit(rule_detail).cast("string")
        status = F.when(condition, F.lit(rule_status)).otherwise(status)
        reason = F.when(condition, F.lit(rule_reason) if isinstance(rule_reason, str) else rule_reason).otherwise(reason)
        detail = F.when(condition, rule_detail).otherwise(detail)
    return with_run(df.withColumns({"status": status, "reason": reason, "detail": detail}), ctx)


def llm_failed_rule(prefix: str = "llm") -> tuple[Column, str, Column, Column]:
    """A call that gave no usable answer: failed, reason = its llm status, tried again next run."""
    return F.col(f"{prefix}_status") != S.LLM_OK, S.FAILED, F.col(f"{prefix}_status"), F.col(f"{prefix}_error")


def with_run(df: DataFrame, ctx: StageContext) -> DataFrame:
    return df.withColumns(run_columns(ctx))


def run_pending(
    ctx: StageContext,
    inputs: DataFrame,
    output: str,
    keys: list[str],
    transform: Callable[[DataFrame], DataFrame],
    already_pending: bool = False,
) -> StageOutcome:
    """The body of a curation stage: the input rows not finished yet -> transform -> merged into `output`.

    Rows that failed on an earlier run are processed again and their rows updated in place. `already_pending`:
    the stage chose its pending rows itself.
    """
    todo = (inputs if already_pending else pending_rows(inputs, ctx.read_input(output), keys)).cache()
    try:
        count = todo.count()
        ctx.progress(f"{count} rows to process")
        if count == 0:
            return StageOutcome(0, 0, 0, 0, None)
        rows = transform(todo).select(*table_spec(output).schema.names)
        return commit_rows(ctx, output, rows, count, update_matched=True)
    finally:
        todo.unpersist()
