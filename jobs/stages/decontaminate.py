"""Stage 10, decontamination: a training question that restates a benchmark item is removed.

Two stages, one table each (drop_contaminated is its own module, jobs/stages/drop_contaminated.py):
- `decontaminate` -> `contamination`: one row per (question, benchmark item) candidate pair, with the judge's verdict;
- `drop_contaminated` -> `qa_decontaminated`: one row per question of `qa_filtered` (kept rows): dropped when any of
  its pairs was judged the same problem.
The pair table is the audit trail and the state that makes runs incremental; the question-level decision is a cheap
aggregate of it, redone whenever its pairs change (a failed call answered, a benchmark added), with no model call.

Retrieval. Questions and benchmark items are embedded with sentence-transformers (`decontamination.embedding_model`;
the paper's BAAI/bge-large-en-v1.5 on clusters, an offline all-MiniLM-L6-v2 here), normalised, so that a faiss
IndexFlatIP gives the exact cosine. The items of each benchmark are embedded on the executors, which write them as
Parquet files in a scratch folder of the lake; each Python worker reads those files once and builds the benchmarks'
exact indexes (no broadcast variable, which Spark Connect lacks, and nothing passes through the driver; nothing holds
all training embeddings either: each partition of questions embeds and searches its own rows in a mapInPandas, on a
GPU when there is one).

Candidates and judging. Each question gets the top_k (5) items of every benchmark. Candidates are ranked over all
benchmarks by cosine; those within top_k - the paper's top-5 over the whole suite - go to the `judge` role
(conf/prompts/decontam_judge.v1.txt: same problem? rephrasings, renamed entities, reordered words count as the same).
The other candidates are recorded with verdict `skipped` (reason outside_top_k), and so are pairs under
`decontamination.cosine_floor` when one is set (below_cosine_floor; off by default, as in the paper). A verdict that
is neither yes nor no is `unparsed` (a failed pair, never read as either); a failed call has no verdict.

Incremental. Keeping every benchmark's top_k makes "question q was searched against benchmark b" a fact of the pair
table: a new question is searched against every benchmark, a new benchmark by every question already checked, and
nothing else. A new benchmark's candidates are ranked among the question's earlier ones; those that enter its top_k
are judged (earlier verdicts stand, so a question's judged pairs are the top_k over all benchmarks plus any pairs a
later benchmark pushed down). Pairs are merged by (qa_id, benchmark, item_id) and judge requests go through the
llm_calls request cache, so a judged pair is never judged again; failed pairs are retried on the next run, and
skipped pairs that a larger top_k or a lower floor now admit are judged then.

`make_stage` (and drop_contaminated's) make the stages for other tables (jobs/stages/external.py): the external datasets' deduplicated questions (kept in
`external_qa` and `external_clusters`) go through decontaminate_external and drop_contaminated_external into
`external_contamination` and `external_decontaminated`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, FloatType, IntegerType, StringType, StructField, StructType

from megascience.jobs.platform.config import ConfigError
from megascience.jobs.platform.prompts import ChatPrompt, load_prompt
from megascience.jobs.platform.session import default_parallelism
from megascience.jobs.platform.settings import DecontaminationSettings
from megascience.jobs.platform.stage import Stage, StageContext, StageOutcome, commit_rows, decide, llm_failed_rule
from megascience.jobs.stages.check_reasoning import VERDICT
from megascience.schemas import status as S
from megascience.schemas.tables import table_spec
from megascience.udfs.embeddings import SHIPMENT_COLUMNS, embed_texts, search_questions
from megascience.udfs.parsers import SAME_PROBLEM, VERDICT_SCHEMA, parse_yes_no

VERDICT_YES, VERDICT_NO, VERDICT_UNPARSED, VERDICT_SKIPPED = "yes", "no", "unparsed", "skipped"


def parse_same_problem(text: str, finish_reason: str | None) -> dict:
    """The judge's verdict as its conclusion states it ("Yes, both ... but they are not the same problem" is no)."""
    return {"verdict": parse_yes_no(text, finish_reason, conclusions=SAME_PROBLEM)}


# With embed_partitions 0, a task gets at least this many texts to embed: a smaller task spends longer starting its
# worker and loading the embedding model than encoding.
TEXTS_PER_TASK = 1000
CANDIDATES = StructType(
    [
        StructField("qa_id", StringType()),
        StructField("benchmark", StringType()),
        StructField("item_id", StringType()),
        StructField("benchmark_rank", IntegerType()),
        StructField("cosine", DoubleType()),
    ]
)


def kept(df: DataFrame) -> DataFrame:
    return df.where(F.col("status") == S.KEPT)


@dataclass(frozen=True)
class DecontaminationTables:
    """The tables of one decontamination path: where its questions come from, its pair table, its decisions.

    The questions are the rows of `questions[0]` kept there and in every other table of `questions` (by qa_id); the
    decisions carry the first table's columns.
    """

    questions: tuple[str, ...]
    pairs: str
    decided: str

    def kept_questions(self, ctx: StageContext) -> DataFrame:
        first, *others = self.questions
        rows = kept(ctx.read_input(first))
        for name in others:
            rows = rows.join(kept(ctx.read_input(name)).select("qa_id"), "qa_id", "left_semi")
        return rows


def benchmark_names(items: DataFrame) -> list[str]:
    """The benchmarks with at least one kept item: every question is checked against each of them."""
    return sorted(row["benchmark"] for row in kept(items).select("benchmark").distinct().collect())


# --- retrieval: embeddings and faiss ---------------------------------------------------------------------------------


def pending_searches(questions: DataFrame, benchmarks: DataFrame, pairs: DataFrame) -> DataFrame:
    """(qa_id, question, benchmarks): each question with the benchmarks it has not been searched against yet.

    `benchmarks` is (benchmark); a searched question has candidate rows of that benchmark in `pairs`. A question
    without text is searched as "" (its judge prompts then fail, visibly) rather than stopping the encoder.
    """
    searched = pairs.select("qa_id", "benchmark").distinct()
    todo = questions.select("qa_id").crossJoin(benchmarks).join(searched, ["qa_id", "benchmark"], "left_anti")
    per_question = todo.groupBy("qa_id").agg(F.array_sort(F.collect_list("benchmark")).alias("benchmarks"))
    texts = questions.select("qa_id", F.coalesce("question", F.lit("")).alias("question"))
    return texts.join(per_question, "qa_id")


def spread(spark: SparkSession, texts: DataFrame, count: int, settings: DecontaminationSettings) -> DataFrame:
    """`count` rows to embed over `embed_partitions` tasks (0: one per TEXTS_PER_TASK rows, at most one per core)."""
    by_size = max(1, min(default_parallelism(spark), math.ceil(count / TEXTS_PER_TASK)))
    return texts.repartition(settings.embed_partitions or by_size)


def ship_item_embeddings(spark: SparkSession, items: DataFrame, names: list[str], settings: DecontaminationSettings, location: str) -> None:
    """The kept items of the benchmarks `names` with their embeddings (computed on the executors), written as Parquet
    files at `location`: what every worker builds its exact indexes from (udfs.embeddings.read_shipment)."""
    embed = partial(
        embed_texts,
        text_column="question",
        model=settings.embedding_model,
        device=settings.device,
        batch_size=settings.batch_size,
    )
    chosen = kept(items).where(F.col("benchmark").isin(names)).select("benchmark", "item_id", "question")
    schema = StructType(chosen.schema.fields + [StructField("embedding", ArrayType(FloatType()))])
    embedded = spread(spark, chosen, chosen.count(), settings).mapInPandas(embed, schema)
    embedded.select(*SHIPMENT_COLUMNS).write.mode("overwrite").parquet(location)


def search(spark: SparkSession, searches: DataFrame, count: int, shipment: str, settings: DecontaminationSettings) -> DataFrame:
    """CANDIDATES rows: the top_k items of each pending benchmark of each of the `count` questions, found on the
    executors against the item embeddings shipped at `shipment`."""
    body = partial(
        search_questions,
        shipment=shipment,
        model=settings.embedding_model,
        device=settings.device,
        batch_size=settings.batch_size,
        top_k=settings.top_k,
    )
    return spread(spark, searches, count, settings).mapInPandas(body, CANDIDATES)


def ranked(found: DataFrame, pairs: DataFrame) -> DataFrame:
    """`found` with rank: each candidate's place among all candidates of its question, earlier runs' included.

    Earlier candidates keep the rank they were given; ties are broken by benchmark and item id, so the order is a
    function of the rows alone.
    """
    earlier = pairs.join(found.select("qa_id").distinct(), "qa_id", "left_semi")
    both = found.withColumn("_new", F.lit(True)).unionByName(
        earlier.select("qa_id", "benchmark", "item_id", "cosine", F.lit(False).alias("_new")), allowMissingColumns=True
    )
    order = Window.partitionBy("qa_id").orderBy(F.desc("cosine"), "benchmark", "item_id")
    return both.withColumn("rank", F.row_number().over(order)).where("_new").drop("_new")


# --- judging ---------------------------------------------------------------------------------------------------------


def judge_eligible(top_k: int, cosine_floor: float) -> Column:
    """Pairs the judge sees: within the question's top_k over all benchmarks and, with a floor set, at or above it."""
    within = F.col("rank") <= top_k
    return within & (F.col("cosine") >= cosine_floor) if cosine_floor > 0 else within


def pairs_to_reconsider(pairs: DataFrame, top_k: int, cosine_floor: float) -> DataFrame:
    """Earlier pairs to judge again: failed calls and unparsed verdicts, and skipped pairs the settings now admit."""
    now_eligible = (F.col("verdict") == VERDICT_SKIPPED) & judge_eligible(top_k, cosine_floor)
    return pairs.where((F.col("status") == S.FAILED) | now_eligible).select(*CANDIDATES.names, "rank")


def skipped_rows(pairs: DataFrame, top_k: int, cosine_floor: float, ctx: StageContext) -> DataFrame:
    outside = F.col("rank") > top_k
    reason = F.when(outside, F.lit(S.REASON_OUTSIDE_TOP_K)).otherwise(F.lit(S.REASON_BELOW_COSINE_FLOOR))
    detail = F.when(outside, F.format_string(f"rank %d of the question's candidates (top_k {top_k})", "rank"))
    detail = detail.otherwise(F.format_string(f"cosine %.3f under the floor {cosine_floor}", "cosine"))
    return decide(pairs.withColumn("verdict", F.lit(VERDICT_SKIPPED)), [(F.lit(True), S.KEPT, reason, detail)], ctx)


def judged_rows(judged: DataFrame, ctx: StageContext) -> DataFrame:
    """Pairs with the judge's answer: yes / no, unparsed (a failed pair, retried), no verdict when the call failed."""
    rows = decide(
        judged,
        [
            llm_failed_rule(),
            (F.col("verdict") == VERDICT_YES, S.KEPT, S.REASON_SAME_PROBLEM, None),
            (F.col("verdict") == VERDICT_NO, S.KEPT, S.REASON_DIFFERENT_PROBLEM, None),
        ],
        ctx,
    )
    verdict = F.when(F.col("llm_status") == S.LLM_PARSE_ERROR, F.lit(VERDICT_UNPARSED)).when(
        F.col("llm_status") == "ok", F.col("verdict")
    )
    return rows.withColumns({"verdict": verdict, "judge_model": F.col("llm_model"), "call_id": F.col("llm_call_id")})


def with_texts(pairs: DataFrame, questions: DataFrame, items: DataFrame) -> DataFrame:
    """Pairs with the training question and the benchmark question (null if gone: the prompt then fails, visibly)."""
    benchmark_questions = items.select("benchmark", "item_id", F.col("question").alias("benchmark_question"))
    return pairs.join(questions.select("qa_id", "question"), "qa_id", "left").join(
        benchmark_questions, ["benchmark", "item_id"], "left"
    )


# --- the report: per benchmark -------------------------------------------------------------------------------------


def contamination_summary(pairs: DataFrame, items: DataFrame) -> DataFrame:
    """Per benchmark: items, questions checked, pairs judged, judged the same, unparsed, judge errors, and the
    training questions matched (judged the same problem as one of its items)."""
    verdict = F.col("verdict")
    sent = verdict.isin(VERDICT_YES, VERDICT_NO, VERDICT_UNPARSED) | (F.col("status") == S.FAILED)
    per_pair = pairs.groupBy("benchmark").agg(
        F.countDistinct("qa_id").alias("questions_checked"),
        F.sum(sent.cast("int")).alias("pairs_judged"),
        F.sum((verdict == VERDICT_YES).cast("int")).alias("judged_same"),
        F.sum((verdict == VERDICT_UNPARSED).cast("int")).alias("unparsed"),
        F.sum(((F.col("status") == S.FAILED) & verdict.isNull()).cast("int")).alias("judge_errors"),
        F.countDistinct(F.when(verdict == VERDICT_YES, F.col("qa_id"))).alias("matched_questions"),
    )
    per_item = kept(items).groupBy("benchmark").agg(F.count("*").alias("items"))
    summary = per_item.join(per_pair, "benchmark", "full_outer")
    counts = [c for c in summary.columns if c != "benchmark"]
    summary = summary.fillna(0, subset=counts).select("benchmark", *[F.col(c).cast("long") for c in counts])
    return summary.orderBy("benchmark")


def matched_pairs(pairs: DataFrame, questions: DataFrame, items: DataFrame, per_benchmark: int) -> DataFrame:
    """Up to `per_benchmark` pairs judged the same per benchmark, most similar first, with both texts."""
    order = Window.partitionBy("benchmark").orderBy(F.desc("cosine"), "qa_id", "item_id")
    same = pairs.where(F.col("verdict") == VERDICT_YES).withColumn("_n", F.row_number().over(order))
    return (
        with_texts(same.where(F.col("_n") <= per_benchmark), questions, items)
        .select("benchmark", "item_id", "qa_id", "cosine", "question", "benchmark_question")
        .orderBy("benchmark", F.desc("cosine"), "qa_id")
    )


def metric_name(*parts: str) -> str:
    """An MLflow metric key (letters, digits, _ - . / and spaces) from a benchmark name and a count's name."""
    return ".".join(re.sub(r"[^\w\-. /]", "_", part) for part in parts)


# --- stage: decontaminate ------------------------------------------------------------------------------------------


def _candidates(
    ctx: StageContext, settings: DecontaminationSettings, questions: DataFrame, items: DataFrame, pairs: DataFrame
) -> DataFrame:
    """Ranked candidates of every pending (question, benchmark) search, materialised (the search runs once)."""
    names = benchmark_names(items)
    if not names:
        raise ConfigError(
            "no benchmark items to check questions against: run the benchmarks stage first "
            "(decontamination.benchmarks names the sources)"
        )
    benchmarks = ctx.spark.createDataFrame([(name,) for name in names], "benchmark string")
    searches = pending_searches(questions, benchmarks, pairs).cache()
    try:
        needed = sorted(r[0] for r in searches.select(F.explode("benchmarks")).distinct().collect())
        count = searches.count()
        ctx.progress(f"{count} questions to search against {len(needed)} benchmark(s)")
        if not needed:
            return ctx.spark.createDataFrame([], StructType(CANDIDATES.fields + [StructField("rank", IntegerType())]))
        with ctx.lake.scratch("benchmark-embeddings") as shipment:
            ship_item_embeddings(ctx.spark, items, needed, settings, shipment)
            return ranked(search(ctx.spark, searches, count, shipment, settings), pairs).localCheckpoint()
    finally:
        searches.unpersist()


def run_decontaminate(ctx: StageContext, tables: DecontaminationTables) -> StageOutcome:
    settings = ctx.settings
    top_k, floor = settings.top_k, settings.cosine_floor
    questions = tables.kept_questions(ctx).select("qa_id", "question")
    items = kept(ctx.read_input("benchmarks"))
    pairs = ctx.read_input(tables.pairs)
    found = _candidates(ctx, settings, questions, items, pairs)
    considered = found.unionByName(pairs_to_reconsider(pairs, top_k, floor)).localCheckpoint()
    count = considered.count()
    ctx.progress(f"{count} candidate pairs to decide")
    if count == 0:
        return StageOutcome(0, 0, 0, 0, None)

    prompt = ChatPrompt(load_prompt(settings.prompt))
    ctx.recorder.prompts_used(prompt.templates())
    to_judge = with_texts(considered.where(judge_eligible(top_k, floor)), questions, items)
    judged = ctx.llm.generate(to_judge, "judge", prompt, parse_same_problem, VERDICT, VERDICT_SCHEMA)
    rows = judged_rows(judged, ctx).unionByName(
        skipped_rows(considered.where(~judge_eligible(top_k, floor)), top_k, floor, ctx), allowMissingColumns=True
    )
    rows = rows.withColumn("embedding_model", F.lit(settings.embedding_model))
    rows = rows.select(*table_spec(tables.pairs).schema.names)
    outcome = commit_rows(ctx, tables.pairs, rows, rows_in=count, update_matched=True)

    summary = contamination_summary(ctx.lake.read(tables.pairs), items).collect()
    ctx.recorder.counts(
        judge_calls=ctx.llm.stats["judge"].calls_made if "judge" in ctx.llm.stats else 0,
        **{metric_name(c, row["benchmark"]): row[c] for row in summary for c in ("pairs_judged", "matched_questions")},
    )
    return outcome


def make_stage(name: str, tables: DecontaminationTables) -> Stage:
    """A decontaminate stage for `tables` (see DecontaminationTables): search and judge -> `tables.pairs`."""
    return Stage(
        name=name,
        inputs=(*tables.questions, "benchmarks", tables.pairs),
        output=tables.pairs,
        settings=DecontaminationSettings,
        run=partial(run_decontaminate, tables=tables),
        description=(
            "top-k benchmark neighbours of each question by exact embedding cosine (faiss), judged: same problem?"
        ),
        roles=("judge",),
    )


TEXTBOOK_TABLES = DecontaminationTables(questions=("qa_filtered",), pairs="contamination", decided="qa_decontaminated")
STAGE = make_stage("decontaminate", TEXTBOOK_TABLES)
