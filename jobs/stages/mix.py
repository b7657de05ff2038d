"""MegaScience part 2, mix: the gold `megascience` table -> `question, answer, subject, reference_answer, source` and
lineage columns.

Every row of the gold `textbook_reasoning` table (source textbook_reasoning, selection_method all, as the paper
takes TextbookReasoning whole), and every kept row of `external_annotated` whose question the select stage still
keeps (source = the dataset's name, selection_method = the dataset's method). Like textbook_reasoning, a snapshot
rewritten only when its content changes (jobs/stages/publish.py's write_snapshot).
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from megascience.jobs.platform.stage import Stage, StageContext, StageOutcome
from megascience.jobs.stages.publish import write_snapshot
from megascience.schemas import status as S
from megascience.schemas.tables import MEGASCIENCE

TEXTBOOK_SOURCE = "textbook_reasoning"


def mixture_rows(textbook: DataFrame, annotated: DataFrame, selection: DataFrame, run_id: str) -> DataFrame:
    textbook_rows = textbook.select(
        "question",
        "answer",
        "subject",
        "reference_answer",
        F.lit(TEXTBOOK_SOURCE).alias("source"),
        "qa_id",
        F.lit(None).cast("string").alias("source_uri"),
        F.col("book_id").alias("source_id"),
        F.lit("all").alias("selection_method"),
    )
    selected = selection.where(F.col("status") == S.KEPT).select("qa_id", F.col("method").alias("selection_method"))
    external_rows = annotated.where(F.col("status") == S.KEPT).join(selected, "qa_id").select(
        "question",
        "answer",
        "subject",
        "reference_answer",
        F.col("dataset").alias("source"),
        "qa_id",
        F.col("source").alias("source_uri"),
        "source_id",
        "selection_method",
    )
    return textbook_rows.unionByName(external_rows).withColumn("run_id", F.lit(run_id)).select(*MEGASCIENCE.schema.names)


def run(ctx: StageContext) -> StageOutcome:
    rows = mixture_rows(
        ctx.read_input("textbook_reasoning"), ctx.read_input("external_annotated"), ctx.read_input("selection_scores"), ctx.run_id
    )
    return write_snapshot(ctx, "megascience", rows)


STAGE = Stage(
    name="mix",
    inputs=("textbook_reasoning", "external_annotated", "selection_scores", "megascience"),
    output="megascience",
    settings=None,
    run=run,
    description="the gold megascience mixture: all of textbook_reasoning plus the selected, re-annotated external questions",
)
