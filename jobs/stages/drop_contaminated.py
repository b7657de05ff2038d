"""Stage 10b, drop_contaminated: the question-level decision of decontamination -> `qa_decontaminated`.

One row per kept question of `qa_filtered`, once it has been searched against every current benchmark: dropped when
any of its pairs in `contamination` was judged the same problem; a failed judge call (retried by decontaminate) or,
under `decontamination.unparsed: exclude`, an unreadable verdict makes it a failed row (all-unparsed distinct from
some-unparsed). The decision is a cheap aggregate of the pair table with no model call, redone whenever its pairs
change; only new or changed decisions are committed. `make_stage` makes it for the external datasets' tables too
(jobs/stages/external.py).
"""

from __future__ import annotations

from functools import partial, reduce

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from megascience.jobs.platform.settings import DecontaminationSettings
from megascience.jobs.platform.stage import Stage, StageContext, StageOutcome, commit_rows, decide
from megascience.jobs.stages.decontaminate import (
    TEXTBOOK_TABLES,
    VERDICT_NO,
    VERDICT_UNPARSED,
    VERDICT_YES,
    DecontaminationTables,
    benchmark_names,
)
from megascience.schemas import status as S
from megascience.schemas.tables import table_spec


def verdict_counts(pairs: DataFrame, names: list[str]) -> DataFrame:
    """Per question, over the pairs of the current benchmarks: benchmarks checked, pairs judged, unparsed verdicts,
    failed calls, and the items judged the same problem (most similar first)."""
    verdict, failed = F.col("verdict"), F.col("status") == S.FAILED
    sent = verdict.isin(VERDICT_YES, VERDICT_NO, VERDICT_UNPARSED) | failed
    same = F.when(verdict == VERDICT_YES, F.struct("cosine", "benchmark", "item_id"))
    counts = (
        pairs.where(F.col("benchmark").isin(names))
        .groupBy("qa_id")
        .agg(
            F.array_sort(F.collect_set("benchmark")).alias("benchmarks_checked"),
            F.sum(sent.cast("int")).cast("int").alias("pairs_judged"),
            F.sum((verdict == VERDICT_UNPARSED).cast("int")).cast("int").alias("pairs_unparsed"),
            F.sum((failed & verdict.isNull()).cast("int")).cast("int").alias("pairs_failed"),
            F.sort_array(F.collect_list(same), asc=False).alias("_same"),
        )
    )
    fields = ("benchmark", "item_id", "cosine")  # the order of qa_decontaminated.matched_items
    as_items = F.transform("_same", lambda same: F.struct(*[same[field].alias(field) for field in fields]))
    return counts.withColumn("matched_items", as_items).drop("_same")


def decided_questions(
    questions: DataFrame, counts: DataFrame, benchmarks: int, unparsed: str, ctx: StageContext
) -> DataFrame:
    """qa_decontaminated rows of the questions searched against every current benchmark.

    Any pair judged the same drops the question; otherwise a failed call (retried by decontaminate) or, under
    `unparsed: exclude`, an unreadable verdict makes it a failed row, all-unparsed distinct from some-unparsed.
    """
    rows = questions.join(counts.where(F.size("benchmarks_checked") == benchmarks), "qa_id")
    best = F.col("matched_items")[0]
    some_unparsed = F.col("pairs_unparsed") > 0
    rules = [
        (
            F.size("matched_items") > 0,
            S.DROPPED,
            S.REASON_CONTAMINATED,
            F.format_string("the judge found the same problem as %s %s (cosine %.3f); %d item(s) matched",
                            best["benchmark"], best["item_id"], best["cosine"], F.size("matched_items")),
        ),
        (
            F.col("pairs_failed") > 0,
            S.FAILED,
            S.REASON_JUDGE_ERROR,
            F.format_string(
                "%d of %d judge calls failed (decontaminate tries them again)", "pairs_failed", "pairs_judged"
            ),
        ),
    ]
    if unparsed == "exclude":
        rules += [
            (
                some_unparsed & (F.col("pairs_unparsed") == F.col("pairs_judged")),
                S.FAILED,
                S.REASON_ALL_UNPARSED,
                F.format_string("none of the %d verdicts could be read", "pairs_judged"),
            ),
            (
                some_unparsed,
                S.FAILED,
                S.REASON_SOME_UNPARSED,
                F.format_string(
                    "%d of %d verdicts could not be read, none of the others is yes", "pairs_unparsed", "pairs_judged"
                ),
            ),
        ]
    decided = decide(rows, rules, ctx)
    contaminated = F.when(F.col("status") == S.DROPPED, True).when(F.col("status") == S.KEPT, False)
    return decided.withColumn("contaminated", contaminated)


def changed_rows(decided: DataFrame, current: DataFrame) -> DataFrame:
    """Decided rows that are new, or differ from the stored row in anything but the run columns."""
    compared = [c for c in decided.columns if c not in ("qa_id", "run_id", "processed_at")]
    before = current.select("qa_id", *[F.col(c).alias(f"_before_{c}") for c in compared])
    same = reduce(lambda a, b: a & b, [F.col(c).eqNullSafe(F.col(f"_before_{c}")) for c in compared])
    return decided.join(before, "qa_id", "left").where(~same).select(*decided.columns)


def run(ctx: StageContext, tables: DecontaminationTables) -> StageOutcome:
    settings = ctx.settings
    names = benchmark_names(ctx.read_input("benchmarks"))
    questions = tables.kept_questions(ctx)
    counts = verdict_counts(ctx.read_input(tables.pairs), names)
    decided = decided_questions(questions, counts, len(names), settings.unparsed, ctx)
    decided = decided.select(*table_spec(tables.decided).schema.names)
    rows = changed_rows(decided, ctx.read_input(tables.decided)).cache()
    try:
        count = rows.count()
        waiting = questions.join(decided, "qa_id", "left_anti").count()
        ctx.progress(f"{count} new or changed decisions; {waiting} questions not yet searched against every benchmark")
        ctx.recorder.counts(questions_waiting=waiting)
        if count == 0:
            return StageOutcome(0, 0, 0, 0, None)
        return commit_rows(ctx, tables.decided, rows, rows_in=count, update_matched=True)
    finally:
        rows.unpersist()


def make_stage(name: str, tables: DecontaminationTables) -> Stage:
    """A drop_contaminated stage for `tables`: the decisions of `tables.pairs` -> `tables.decided`."""
    return Stage(
        name=name,
        inputs=(*tables.questions, "benchmarks", tables.pairs, tables.decided),
        output=tables.decided,
        settings=DecontaminationSettings,
        run=partial(run, tables=tables),
        description=(
            "drop questions with any pair judged the same problem; all-unparsed verdicts are a distinct failure"
        ),
    )


STAGE = make_stage("drop_contaminated", TEXTBOOK_TABLES)
