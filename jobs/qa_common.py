"""Pieces every QA curation stage shares: pending rows, row outcomes from LLM statuses, ids, writing outcomes."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.llm import STATUS_OK
from jobs.stage import StageContext
from schemas import status as S


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


def llm_failed(column: str = "llm_status") -> Column:
    return F.col(column) != STATUS_OK


def failure_outcome(column: str = "llm_status", error: str = "llm_error") -> tuple[Column, Column, Column]:
    """(status, reason, detail) of a row whose LLM call did not give a usable answer."""
    return F.lit(S.FAILED), F.col(column), F.col(error)


def with_outcome(df: DataFrame, status: Column, reason: Column, detail: Column, ctx: StageContext) -> DataFrame:
    return df.withColumns(
        {
            "status": status,
            "reason": reason,
            "detail": detail,
            "run_id": F.lit(ctx.run_id),
            "processed_at": F.lit(ctx.started_at).cast("timestamp"),
        }
    )


def outcome_counts(rows: DataFrame) -> dict[str, int]:
    return {r["status"]: r["count"] for r in rows.groupBy("status").count().collect()}
