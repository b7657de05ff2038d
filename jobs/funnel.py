"""The per-subject funnel, like the paper's Table 2: pairs -> after dedup -> after filter -> after decontamination
-> published, and the share of high-standard pairs. A query over the stage tables, never a log line."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.tables import Lakehouse
from schemas import status as S
from schemas.tables import TABLES

# (column, table): the rows of each table with status kept; qa_extracted's marker rows have no question
FUNNEL_STEPS = (
    ("pairs", "qa_extracted"),
    ("after_dedup", "qa_clusters"),
    ("after_filter", "qa_filtered"),
    ("after_decontamination", "qa_decontaminated"),
    ("published", "textbook_reasoning"),
)


def kept_pairs(df: DataFrame) -> DataFrame:
    kept = df.where(F.col("status") == S.KEPT) if "status" in df.columns else df  # gold tables hold kept rows only
    if "question" in df.columns:
        kept = kept.where(F.col("question").isNotNull())
    return kept.select("qa_id", "subject", "standard")


def funnel(steps: list[tuple[str, DataFrame]]) -> DataFrame:
    """One row per subject (and a total): the kept pairs at each step and the high-standard share of the first and
    last step."""
    counts = None
    for column, rows in steps:
        per_subject = rows.groupBy("subject").agg(
            F.count("*").alias(column), F.sum((F.col("standard") == "high").cast("int")).alias(f"_{column}_high")
        )
        counts = per_subject if counts is None else counts.join(per_subject, "subject", "full_outer")
    first, last = steps[0][0], steps[-1][0]
    numeric = [c for c in counts.columns if c != "subject"]
    counts = counts.fillna(0, subset=numeric)
    total = counts.agg(*[F.sum(c).alias(c) for c in numeric]).withColumn("subject", F.lit("total"))
    table = counts.orderBy("subject").unionByName(total)
    share = lambda step: F.round(100 * F.col(f"_{step}_high") / F.greatest(F.col(step), F.lit(1)), 1)  # noqa: E731
    return table.select(
        "subject",
        *[c for c, _ in steps],
        share(first).alias(f"high_%_{first}"),
        share(last).alias(f"high_%_{last}"),
    )


def funnel_from_lake(lake: Lakehouse) -> DataFrame | None:
    steps = [(column, kept_pairs(lake.read(table))) for column, table in FUNNEL_STEPS if table in TABLES and lake.exists(table)]
    return funnel(steps) if steps else None
