"""The per-subject funnel, like the paper's Table 2: pairs -> after dedup -> after filter -> after decontamination
-> published, and the share of high-standard pairs; and the external datasets' funnel per dataset: records -> after
dedup -> after decontamination -> selected -> annotated. Beside the paper (`megascience funnel --paper`, the dataset
card): the shares kept at each step next to the paper's, the corpus yield, LLM calls and tokens per role and stage,
the mixture per source and subject. Queries over the stage tables, never log lines."""

from __future__ import annotations

from typing import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from megascience.jobs.platform.tables import Lakehouse
from megascience.schemas import status as S
from megascience.schemas.tables import TABLES

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


# --- beside the paper (megascience funnel --paper, the dataset card) ------------------------------------------------

# The paper's funnel per subject (arXiv 2507.16812, Table 2): pairs -> after dedup -> after filter -> after
# decontamination; shared/spec/PIPELINE.md holds the same figures.
PAPER_FUNNEL = {
    "biology": (104_320, 71_693, 70_102, 52_850),
    "chemistry": (72_735, 39_984, 37_890, 32_157),
    "cs": (22_212, 19_433, 18_843, 17_742),
    "economics": (1_945, 1_790, 1_725, 1_296),
    "math": (560_162, 472_740, 444_126, 424_714),
    "medicine": (125_215, 111_930, 109_192, 81_638),
    "physics": (59_094, 50_323, 46_889, 41_443),
    "total": (945_683, 767_893, 728_767, 651_840),
}
PAPER_STEPS = ("after_dedup", "after_filter", "after_decontamination")
# the paper's corpus yield: (measure, value); mean answer length is of the published pairs
PAPER_CORPUS = {
    "books": 12_800,
    "chunks": 546_134,
    "chunks_with_a_pair": 72_548,
    "high_standard_pairs": 25_483,
    "low_standard_pairs": 920_200,
    "mean_answer_tokens": 410,
}


def _share(part, whole) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def paper_comparison(funnel_rows: list[dict]) -> list[dict]:
    """Per subject and in total: the share of extracted pairs kept after dedup, filter and decontamination, ours
    next to the paper's (a subject the paper has no figure for, "other", gets None there)."""
    rows = []
    for row in funnel_rows:
        if "pairs" not in row:  # a lake without the extraction: nothing to set beside the paper
            return []
        paper = PAPER_FUNNEL.get(row["subject"])
        compared = {"subject": row["subject"], "pairs": row["pairs"], "paper_pairs": paper[0] if paper else None}
        for i, step in enumerate(PAPER_STEPS, start=1):
            compared[f"{step}_%"] = _share(row.get(step, 0), row["pairs"])
            compared[f"{step}_%_paper"] = _share(paper[i], paper[0]) if paper else None
        rows.append(compared)
    return rows


def corpus_yield(lake: Lakehouse, mean_answer_tokens: float | None) -> list[dict]:
    """(measure, ours, paper) for the corpus: books kept (after the copyright filter and classify), chunks, chunks
    with at least one pair, high and low standard pairs, books kept without rights metadata, mean answer tokens."""
    def kept(table: str) -> DataFrame | None:
        return lake.read(table).where(F.col("status") == S.KEPT) if lake.exists(table) else None

    def count(frame: DataFrame | None) -> int | None:
        return frame.count() if frame is not None else None

    books, labels, chunks, pairs = kept("books"), kept("book_labels"), kept("chunks"), kept("qa_extracted")
    pairs = pairs.where(F.col("question").isNotNull()) if pairs is not None else None
    per_standard = dict(pairs.groupBy("standard").count().collect()) if pairs is not None else {}
    measures = [
        ("books_listed", count(lake.read("books")) if lake.exists("books") else None, None),
        ("books_after_copyright_filter", count(books), None),
        ("books_without_rights_metadata", count(books.where(F.col("reason") == S.REASON_NO_RIGHTS_METADATA)) if books is not None else None, None),
        ("books", count(labels), PAPER_CORPUS["books"]),  # the books classify kept
        ("chunks", count(chunks), PAPER_CORPUS["chunks"]),
        ("chunks_with_a_pair", count(pairs.select("chunk_id").distinct()) if pairs is not None else None, PAPER_CORPUS["chunks_with_a_pair"]),
        ("high_standard_pairs", per_standard.get("high", 0) if pairs is not None else None, PAPER_CORPUS["high_standard_pairs"]),
        ("low_standard_pairs", per_standard.get("low", 0) if pairs is not None else None, PAPER_CORPUS["low_standard_pairs"]),
        ("mean_answer_tokens", round(mean_answer_tokens, 1) if mean_answer_tokens is not None else None, PAPER_CORPUS["mean_answer_tokens"]),
    ]
    return [{"measure": m, "ours": ours, "paper": paper} for m, ours, paper in measures]


def stages_by_role() -> dict[str, str]:
    """role -> the stages that call it, in pipeline order ("classify, annotate")."""
    from megascience.jobs.pipeline import STAGES

    found: dict[str, list[str]] = {}
    for stage in STAGES:
        for role in stage.roles:
            found.setdefault(role, []).append(stage.name)
    return {role: ", ".join(names) for role, names in found.items()}


def mixture_per_subject(lake: Lakehouse) -> DataFrame | None:
    """The megascience mixture: rows per source and subject."""
    if not lake.exists("megascience"):
        return None
    mixture = lake.read("megascience")
    return mixture.groupBy("source", "subject").agg(F.count("*").alias("rows")).orderBy("source", "subject")
