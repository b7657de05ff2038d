"""The load step shared by stages: rows shaped to their table, LLM statuses turned into reason codes, the merge and
the counts by status that make a `StageOutcome`."""

from __future__ import annotations

from typing import Mapping

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.stage import StageContext, StageOutcome
from schemas import status as S
from schemas.tables import table_spec


def run_columns(ctx: StageContext) -> dict[str, Column]:
    """run_id and processed_at of the rows a stage run writes."""
    return {"run_id": F.lit(ctx.run_id), "processed_at": F.lit(ctx.started_at).cast("timestamp")}


def table_rows(ctx: StageContext, table: str, df: DataFrame, **columns: Column) -> DataFrame:
    """`df` as rows of `table`: each column from `columns`, else df's column of that name, else null.

    run_id and processed_at are the stage run's.
    """
    chosen = {**run_columns(ctx), **columns}
    selected = []
    for field in table_spec(table).schema.fields:
        if field.name in chosen:
            column = chosen[field.name]
        elif field.name in df.columns:
            column = F.col(field.name)
        else:
            column = F.lit(None)
        selected.append(column.cast(field.dataType).alias(field.name))
    return df.select(*selected)


def llm_failure_reason(reason_by_llm_status: Mapping[str, str]) -> Column:
    """The stage's reason code for a row whose `llm_status` is in the mapping; null otherwise (e.g. for ok)."""
    reason = F.lit(None).cast("string")
    for llm_status, code in reason_by_llm_status.items():
        reason = F.when(F.col("llm_status") == llm_status, F.lit(code)).otherwise(reason)
    return reason


def commit_rows(
    ctx: StageContext, table: str, rows: DataFrame, rows_in: int, update_matched: bool = False
) -> StageOutcome:
    """Merge the stage's rows into its table (nothing is committed when there are none) and count them by status."""
    rows = rows.persist()
    try:
        counts = {r["status"]: r["count"] for r in rows.groupBy("status").count().collect()}
        if counts:
            by_status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            ctx.progress(f"{sum(counts.values())} {table} rows: {by_status}")
        commit = ctx.lake.merge(table, rows, update_matched=update_matched) if counts else None
    finally:
        rows.unpersist()
    return StageOutcome(
        rows_in=rows_in,
        rows_kept=counts.get(S.KEPT, 0),
        rows_dropped=counts.get(S.DROPPED, 0),
        rows_failed=counts.get(S.FAILED, 0),
        commit=commit,
    )


def commit_new_rows(ctx: StageContext, table: str, rows: DataFrame, what: str) -> StageOutcome:
    """Merge rows that are all new to `table` (each one an input row of the run); nothing to commit when there are
    none. `what` names them in the progress line."""
    rows = rows.cache()
    try:
        count = rows.count()
        ctx.progress(f"{count} new {what}")
        return commit_rows(ctx, table, rows, rows_in=count) if count else StageOutcome(0, 0, 0, 0, None)
    finally:
        rows.unpersist()
