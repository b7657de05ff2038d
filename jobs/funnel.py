"""The per-subject funnel, like the paper's Table 2: pairs -> after dedup -> after filter -> after decontamination
-> published, and the share of high-standard pairs; and the external datasets' funnel per dataset: records -> after
dedup -> after decontamination -> selected -> annotated. Queries over the stage tables, never log lines."""

from __future__ import annotations

from typing import Callable

from pyspark.sql import Column, DataFrame
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
# (column, table) of the external datasets' path, counted per dataset
EXTERNAL_STEPS = (
    ("records", "external_qa"),
    ("after_dedup", "external_clusters"),
    ("after_decontamination", "external_decontaminated"),
    ("selected", "selection_scores"),  # kept = selected by the dataset's own method: one row per question
    ("annotated", "external_annotated"),
)


def kept_pairs(df: DataFrame) -> DataFrame:
    kept = df.where(F.col("status") == S.KEPT) if "status" in df.columns else df  # gold tables hold kept rows only
    if "question" in df.columns:
        kept = kept.where(F.col("question").isNotNull())
    return kept.select("qa_id", "subject", "standard")


def per_group(
    steps: list[tuple[str, DataFrame]], by: str, extra: Callable[[str], list[Column]] = lambda step: []
) -> DataFrame:
    """One row per value of `by` (and a total): the rows at each step, plus the `extra` aggregates of each step."""
    counts = None
    for column, rows in steps:
        per_value = rows.groupBy(by).agg(F.count("*").alias(column), *extra(column))
        counts = per_value if counts is None else counts.join(per_value, by, "full_outer")
    numeric = [c for c in counts.columns if c != by]
    counts = counts.fillna(0, subset=numeric)
    total = counts.agg(*[F.sum(c).alias(c) for c in numeric]).withColumn(by, F.lit("total"))
    return counts.orderBy(by).unionByName(total)


def funnel(steps: list[tuple[str, DataFrame]]) -> DataFrame:
    """One row per subject (and a total): the kept pairs at each step and the high-standard share of the first and
    last step."""
    high = lambda step: [F.sum((F.col("standard") == "high").cast("int")).alias(f"_{step}_high")]  # noqa: E731
    table = per_group(steps, "subject", high)
    first, last = steps[0][0], steps[-1][0]
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


def external_funnel_from_lake(lake: Lakehouse) -> DataFrame | None:
    """One row per external dataset (and a total): its kept questions after ingest, dedup, decontamination,
    selection and annotation."""
    if not lake.exists("external_qa"):
        return None
    datasets = lake.read("external_qa").select("qa_id", "dataset")
    kept = lambda table: lake.read(table).where(F.col("status") == S.KEPT).select("qa_id")  # noqa: E731
    steps = [(column, kept(table).join(datasets, "qa_id")) for column, table in EXTERNAL_STEPS if lake.exists(table)]
    return per_group(steps, "dataset")
