"""The stage toolkit: what a stage is (name, the tables it reads and writes, its typed settings, its body) and the
pieces every stage body is made of: the pending rows, rows shaped to their table, row outcomes from LLM statuses,
content ids, and the commit that turns rows into a `StageOutcome` counted by status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Any, Callable, Mapping

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from megascience.jobs.platform.config import Config
from megascience.jobs.platform.lineage import StageRecorder
from megascience.jobs.platform.settings import RunSettings, Settings
from megascience.jobs.platform.tables import Commit, Lakehouse
from megascience.schemas import status as S
from megascience.schemas.tables import table_spec


class UndeclaredTableError(RuntimeError):
    """A stage committed to a table its Stage declaration does not list (a programming error, caught in tests)."""


@dataclass
class StageContext:
    spark: SparkSession
    config: Config
    lake: Lakehouse
    recorder: StageRecorder
    stage: str
    input_versions: dict[str, int | None] = field(default_factory=dict)
    settings: Any = None  # the stage's typed section (an instance of Stage.settings), None for a stage without one
    output: str = ""  # the Stage's output table
    writes: tuple[str, ...] = ()  # every table the Stage declares it writes (Stage.writes)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc).replace(microsecond=0))

    @property
    def run_id(self) -> str:
        return self.recorder.run_id

    def read_input(self, name: str) -> DataFrame:
        """An input table at the version logged for this run (empty with its schema if it does not exist yet)."""
        version = self.input_versions.get(name)
        if version is None:
            return self.spark.createDataFrame([], table_spec(name).schema)
        return self.lake.as_of(name, version)

    def progress(self, message: str) -> None:
        if RunSettings.of(self.config).progress:
            print(f"[{self.stage}] {message}", flush=True)

    def commit(self, table: str, rows: DataFrame, update_matched: bool = False, overwrite: bool = False) -> Commit | None:
        """The one way a stage body commits rows: merged by the table's keys (or the table overwritten), only into a
        table its Stage declares. A side table's version is logged here; the output's when the stage ends."""
        if table not in self.writes:
            raise UndeclaredTableError(
                f"stage {self.stage} commits to {table!r}, which its Stage does not declare "
                f"(output {self.output!r}, side_outputs add others); it writes: {', '.join(self.writes)}"
            )
        if overwrite:
            commit = self.lake.write(table, rows, mode="overwrite")
        else:
            commit = self.lake.merge(table, rows, update_matched=update_matched)
        if commit is not None and table != self.output:
            self.recorder.table_used("output", table, self.lake.location(table), commit.version, self.lake.in_catalog)
        return commit

    @cached_property
    def llm(self):
        """The LLM gateway of this stage run; each role it resolves is logged as run parameters."""
        from megascience.jobs.platform.llm import LlmGateway

        return LlmGateway(self.spark, self.config, self.lake, self.run_id, self.progress, self.recorder.role_used)


@dataclass(frozen=True)
class StageOutcome:
    """Counts of one stage run; `commit` is None when there was nothing new to write."""

    rows_in: int
    rows_kept: int
    rows_dropped: int
    rows_failed: int
    commit: Commit | None


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[str, ...]
    output: str
    settings: type[Settings] | None  # the typed configuration section the stage reads (ctx.settings)
    run: Callable[[StageContext], StageOutcome]
    description: str
    roles: tuple[str, ...] = ()  # LLM roles the stage calls
    side_outputs: tuple[str, ...] = ()  # tables it also writes, beside its output (state it keeps between runs)

    @property
    def config_section(self) -> str | None:
        return self.settings.SECTION if self.settings else None

    @property
    def writes(self) -> tuple[str, ...]:
        """Every table a run of the stage may commit to: its output, its side tables, llm_calls if it calls a model."""
        return (self.output, *self.side_outputs, *(("llm_calls",) if self.roles else ()))


# --- rows and commits -----------------------------------------------------------------------------------------------


def run_columns(ctx: StageContext) -> dict[str, Column]:
    """run_id and processed_at of the rows a stage run writes."""
    return {"run_id": F.lit(ctx.run_id), "processed_at": F.lit(ctx.started_at).cast("timestamp")}


def table_rows(ctx: StageContext, table: str, df: DataFrame, **columns: Column) -> DataFrame:
    """`df` as rows of `table`: each column from `columns`, else df's column of that name, else null.

    run_id and processed_at are the stage run's.
    """
    chosen = {**run_columns(ctx), **columns}
    selected = []
    for target in table_spec(table).schema.fields:
        if target.name in chosen:
            column = chosen[target.name]
        elif target.name in df.columns:
            column = F.col(target.name)
        else:
            column = F.lit(None)
        selected.append(column.cast(target.dataType).alias(target.name))
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
        commit = ctx.commit(table, rows, update_matched=update_matched) if counts else None
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


# --- the body of a stage ---------------------------------------------------------------------------------------------


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
