"""Stage 12, publish: the gold `textbook_reasoning` table from the curated pairs that have a reference answer.

The gold table is a snapshot of the current curated set, not an append log: a pair removed upstream (say, found
contaminated by a benchmark added later) leaves it. It is rewritten only when its content changes, so a rerun over
the same lake adds no version. With Unity Catalog configured (lake.catalog / lake.schema) it is a managed table
`<catalog>.<schema>.textbook_reasoning`; every table is also registered for `megascience sql`.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from megascience.jobs.platform.stage import Stage, StageContext, StageOutcome
from megascience.schemas import status as S
from megascience.schemas.tables import TEXTBOOK_REASONING


def gold_rows(references: DataFrame, chunks: DataFrame, run_id: str) -> DataFrame:
    curated = references.where(F.col("status") == S.KEPT)
    pages = chunks.select("chunk_id", "first_page", "last_page")
    return curated.join(pages, "chunk_id", "left").withColumn("run_id", F.lit(run_id)).select(*TEXTBOOK_REASONING.schema.names)


def changed_rows(new: DataFrame, current: DataFrame, ignore: tuple[str, ...] = ("run_id",)) -> int:
    """How many rows differ between two snapshots (either side), comparing every column but `ignore`."""
    columns = [c for c in new.columns if c not in ignore]
    return new.select(*columns).exceptAll(current.select(*columns)).count() + current.select(*columns).exceptAll(
        new.select(*columns)
    ).count()


def write_snapshot(ctx: StageContext, table: str, rows: DataFrame) -> StageOutcome:
    """Overwrite `table` with `rows` if their content differs from the current version."""
    rows = rows.cache()
    try:
        count = rows.count()
        changes = changed_rows(rows, ctx.read_input(table))
        ctx.progress(f"{count} rows, {changes} changed since the current version")
        commit = ctx.commit(table, rows, overwrite=True) if changes or not ctx.lake.exists(table) else None
        return StageOutcome(count, count, 0, 0, commit)
    finally:
        rows.unpersist()


def run(ctx: StageContext) -> StageOutcome:
    rows = gold_rows(ctx.read_input("qa_reference"), ctx.read_input("chunks"), ctx.run_id)
    return write_snapshot(ctx, "textbook_reasoning", rows)


STAGE = Stage(
    name="publish",
    inputs=("qa_reference", "chunks", "textbook_reasoning"),
    output="textbook_reasoning",
    settings=None,
    run=run,
    description="the gold textbook_reasoning table (question, answer, subject, reference_answer + lineage)",
)
