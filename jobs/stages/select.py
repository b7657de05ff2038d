"""MegaScience part 2, select: which questions of each external dataset go on to annotation -> `selection_scores`.

Input: the kept rows of `external_decontaminated` (deduplicated, decontaminated external questions). Three methods,
as in the paper, each give every question of a dataset a score:
- length: the `answerer` role answers the question (conf/prompts/select_answer.v1.txt); score = the answer's tokens,
  counted by the chunk stage's tokenizer (named on every row). The longest answers are selected. An answer cut off
  at the role's max_tokens counts with the tokens it has.
- difficulty: the `student` role samples the role's `n` (16) answers in one request (select_student.v1); the
  `grader` role scores each 0-10 against a short reference answer with a banded rubric (select_grade.v1, JSON
  {reasoning, score}); score = the mean grade, i.e. easiness. The reference is the dataset's own short answer, else
  one extracted from its response (Nemotron-Science has none): the response's last \\boxed{} or final-answer line,
  else the `reference_extractor` role (the reference_answer stage's prompt), as the grader expects a short answer,
  not a full solution; `reference_method` on every row says which. A mean above select.difficulty.max_mean is too
  easy, below min_mean likely noisy: both are dropped. Unreadable grades are counted on every row (grades_unparsed)
  and handled as select.difficulty.unparsed_grades says, never dropped silently; a question without any short
  reference cannot be graded: dropped as `ungradable` and counted (metric select_ungradable).
- random: score = sha256(seed, qa_id) read as a number in [0, 1): the same questions on every run and machine.

Quota per dataset (select.quota): by default the number of its questions surviving the difficulty filter (so
difficulty is scored for every dataset), which the other methods match; or a fixed count, or a fraction of the
dataset. Each method then takes its best-ranked questions: longest answer, hardest (lowest mean), smallest hash;
ties by qa_id.

One row per (dataset, method, question) scored: kept = selected by the dataset's configured method
(select.datasets, else select.default_method); a question another method would select is dropped
(method_not_chosen), one outside the quota dropped (below_quota). The quota is a decision over a whole dataset, so
each run rescores every kept question: the model's answers come from the request cache (llm_calls), and rows whose
outcome is unchanged are not rewritten.
"""

from __future__ import annotations

from functools import reduce

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, StringType, StructField, StructType

from megascience.jobs.platform.prompts import ChatPrompt, load_prompt
from megascience.jobs.platform.settings import SELECT_METHODS, SelectSettings
from megascience.jobs.platform.stage import (
    Stage,
    StageContext,
    StageOutcome,
    commit_rows,
    content_id,
    decide,
    llm_failed_rule,
    table_rows,
)
from megascience.jobs.stages.chunk import resolve_tokenizer, token_count
from megascience.jobs.stages.reference_answer import EXTRACTED, parse_reference, with_parsed_answers
from megascience.schemas import status as S
from megascience.udfs.parsers import GRADE_SCHEMA, REFERENCE_SCHEMA, parse_grade

LENGTH, DIFFICULTY, RANDOM = SELECT_METHODS

GRADE = StructType([StructField("score", IntegerType()), StructField("reasoning", StringType())])


def methods_to_score(chosen: dict[str, str], settings: SelectSettings) -> dict[str, list[str]]:
    """method -> the datasets it scores: each dataset's own method, difficulty for all when it sets the quota."""
    plan: dict[str, list[str]] = {}
    for dataset, method in sorted(chosen.items()):
        wanted = set(SELECT_METHODS) if settings.score_all_methods else {method}
        if settings.quota == "difficulty":
            wanted.add(DIFFICULTY)
        for name in sorted(wanted):
            plan.setdefault(name, []).append(dataset)
    return plan


def external_questions(decontaminated: DataFrame) -> DataFrame:
    kept = decontaminated.where(F.col("status") == S.KEPT)
    return kept.select("qa_id", "dataset", "subject", "question", "reference_answer", "response")


# --- scorers: questions -> (qa_id, dataset, method, score, ..., status, reason, detail) before the quota -------------


def random_scores(questions: DataFrame, seed: int, ctx: StageContext) -> DataFrame:
    # 13 hex digits = 52 bits: exact in a double, so the order is the hash's order
    score = F.conv(F.substring(content_id(F.lit(str(seed)), "qa_id"), 1, 13), 16, 10).cast("double") / float(16**13)
    return decide(questions.select("qa_id", "dataset", F.lit(RANDOM).alias("method"), score.alias("score")), [], ctx)


def length_outcomes(answered: DataFrame, tokenizer: str, ctx: StageContext) -> DataFrame:
    """Answered questions (llm columns and answer_tokens) -> length scores."""
    scored = answered.select(
        "qa_id",
        "dataset",
        F.lit(LENGTH).alias("method"),
        F.col("answer_tokens").cast("double").alias("score"),
        "answer_tokens",
        F.lit(tokenizer).alias("tokenizer"),
        F.col("llm_call_id").alias("answer_call_id"),
        "llm_status",
        "llm_error",
    )
    return decide(scored, [llm_failed_rule()], ctx)  # a failed call has no text, so no tokens and no score


def length_scores(ctx: StageContext, questions: DataFrame, settings: SelectSettings) -> DataFrame:
    spec, _ = resolve_tokenizer(ctx.config, ctx.progress)
    ctx.recorder.params({"select.tokenizer_used": spec.label})
    prompt = ChatPrompt(load_prompt("select_answer.v1"))
    ctx.recorder.prompts_used(prompt.templates())
    answered = ctx.llm.generate(questions, "answerer", prompt)
    return length_outcomes(answered.withColumn("answer_tokens", token_count(F.col("llm_text"), spec)), spec.label, ctx)


def graded_per_question(graded: DataFrame) -> DataFrame:
    """Grader rows (one per student sample) -> one row per question: grades in sample order (null where unreadable),
    the grader's call ids, how many grades were unreadable and the first failed grader call."""
    graded = graded.select(
        "qa_id",
        F.struct(
            "sample", F.col("score").alias("grade"), F.col("llm_call_id").alias("call_id"), "llm_status", "llm_error"
        ).alias("g"),
    )
    per_question = graded.groupBy("qa_id").agg(F.sort_array(F.collect_list("g")).alias("g"))
    failed = F.filter("g", lambda g: ~g["llm_status"].isin(S.LLM_OK, S.LLM_PARSE_ERROR))
    return per_question.select(
        "qa_id",
        F.size("g").alias("samples"),
        F.transform("g", lambda g: g["grade"]).alias("grades"),
        F.transform("g", lambda g: g["call_id"]).alias("grade_call_ids"),
        F.size(F.filter("g", lambda g: g["llm_status"] == S.LLM_PARSE_ERROR)).alias("grades_unparsed"),
        F.get(failed, 0)["llm_error"].alias("grader_error"),
        (F.size(failed) > 0).alias("grader_failed"),
    )


def mean_grade(grades: Column, policy: str) -> Column:
    """The mean of the readable grades (skip), or of all samples with unreadable ones as 0 (zero); null if none."""
    readable = F.filter(grades, lambda g: g.isNotNull())
    total = F.aggregate(readable, F.lit(0), lambda acc, g: acc + g)
    count = F.size(grades) if policy == "zero" else F.size(readable)
    return F.when(count > 0, total.cast("double") / count)


REFERENCE_SOURCE = "source"


def short_references(ctx: StageContext, questions: DataFrame) -> DataFrame:
    """Questions with `reference` (a short answer to grade against), `reference_method` and, when the
    reference_extractor was asked, its call's status: the dataset's reference_answer, else the response's boxed or
    final-answer line, else the model's reading of the response; null when there is nothing to read."""
    source = F.nullif(F.trim("reference_answer"), F.lit(""))
    given = questions.where(source.isNotNull()).withColumns({"reference": source, "reference_method": F.lit(REFERENCE_SOURCE)})
    rest = questions.where(source.isNull())
    parsed = with_parsed_answers(rest.withColumnRenamed("reference_answer", "_source_reference").withColumn("answer", F.col("response")))
    parsed = parsed.withColumnRenamed("reference_answer", "reference").withColumnRenamed("_source_reference", "reference_answer")
    found = parsed.where(F.col("reference").isNotNull() | F.col("response").isNull()).drop("answer")
    unresolved = parsed.where(F.col("reference").isNull() & F.col("response").isNotNull()).drop("reference", "reference_method")
    prompt = ChatPrompt(load_prompt("reference_extract.v1"))
    ctx.recorder.prompts_used(prompt.templates())
    extracted = ctx.llm.generate(unresolved, "reference_extractor", prompt, parse_reference, EXTRACTED, REFERENCE_SCHEMA)
    from_model = extracted.select(
        *questions.columns,
        F.nullif(F.col("model_reference"), F.lit("")).alias("reference"),
        F.lit("model").alias("reference_method"),
        F.col("llm_status").alias("reference_status"),
        F.col("llm_error").alias("reference_error"),
    )
    return given.unionByName(found, allowMissingColumns=True).unionByName(from_model, allowMissingColumns=True)


def difficulty_outcomes(
    questions: DataFrame, sampled: DataFrame, per_question: DataFrame, settings: SelectSettings, ctx: StageContext
) -> DataFrame:
    """Questions (with `reference`, `reference_method` and the extraction's `reference_status` / `reference_error`),
    the student call per question and the grades per question -> difficulty scores."""
    rules = settings.difficulty
    optional = [c for c in ("reference_method", "reference_status", "reference_error") if c not in questions.columns]
    if optional:  # (withColumns of nothing is an error under Spark Connect)
        questions = questions.withColumns({c: F.lit(None).cast("string") for c in optional})
    student = sampled.select(
        "qa_id",
        F.col("llm_call_id").alias("answer_call_id"),
        F.col("llm_status").alias("student_status"),
        F.col("llm_error").alias("student_error"),
    )
    rows = questions.select(
        "qa_id", "dataset", "reference", F.col("reference").alias("reference_answer"), "reference_method", "reference_status", "reference_error"
    ).join(student, "qa_id", "left")
    rows = rows.join(per_question, "qa_id", "left")
    rows = rows.withColumns(
        {
            "method": F.lit(DIFFICULTY),
            "score": mean_grade(F.coalesce("grades", F.array().cast("array<int>")), rules.unparsed_grades),
            "_readable": F.coalesce(F.size(F.filter("grades", lambda g: g.isNotNull())), F.lit(0)),
        }
    )
    mean = F.format_number("score", 2)
    return decide(
        rows,
        [
            llm_failed_rule("reference"),  # the extraction call failed: asked again next run
            (
                F.col("reference").isNull(),
                S.DROPPED,
                S.REASON_UNGRADABLE,
                "no short reference answer: none in the dataset, and none could be read from its response",
            ),
            llm_failed_rule("student"),
            (F.col("grader_failed"), S.FAILED, S.REASON_ENGINE_ERROR, F.col("grader_error")),
            (
                F.lit(rules.unparsed_grades == "fail") & (F.col("grades_unparsed") > 0),
                S.FAILED,
                S.REASON_GRADES_UNPARSED,
                F.format_string("%d of %d grades unreadable", "grades_unparsed", "samples"),
            ),
            (
                F.col("_readable") < rules.min_grades,
                S.FAILED,
                S.REASON_TOO_FEW_GRADES,
                F.format_string("%d readable grades, fewer than %d", "_readable", F.lit(rules.min_grades)),
            ),
            (F.col("score") > rules.max_mean, S.DROPPED, S.REASON_TOO_EASY, F.concat(F.lit("mean grade "), mean)),
            (F.col("score") < rules.min_mean, S.DROPPED, S.REASON_TOO_HARD, F.concat(F.lit("mean grade "), mean)),
        ],
        ctx,
    )


def difficulty_scores(ctx: StageContext, questions: DataFrame, settings: SelectSettings) -> DataFrame:
    student_prompt = ChatPrompt(load_prompt("select_student.v1"))
    grade_prompt = ChatPrompt(load_prompt("select_grade.v1"))
    ctx.recorder.prompts_used(student_prompt.templates() + grade_prompt.templates())
    # NaturalReasoning's reference is sometimes empty, Nemotron-Science has none: a short one from the response
    questions = short_references(ctx, questions)
    ungradable = questions.where(F.col("reference").isNull()).count()
    ctx.recorder.counts(select_ungradable=ungradable)
    if ungradable:
        ctx.progress(f"{ungradable} questions have no short reference answer to grade against: dropped as ungradable")
    gradable = questions.where(F.col("reference").isNotNull())
    sampled = ctx.llm.generate(gradable, "student", student_prompt)
    samples = sampled.where(F.col("llm_status") == S.LLM_OK).select(
        "qa_id", "question", "reference", F.posexplode("llm_outputs").alias("sample", "student_answer")
    )
    graded = ctx.llm.generate(samples, "grader", grade_prompt, parse_grade, GRADE, GRADE_SCHEMA)
    return difficulty_outcomes(questions, sampled, graded_per_question(graded), settings, ctx)


SCORERS = {
    LENGTH: length_scores,
    DIFFICULTY: difficulty_scores,
    RANDOM: lambda ctx, questions, settings: random_scores(questions, settings.seed, ctx),
}


# --- the quota and the decision (pure) ------------------------------------------------------------------------------


def quota_sizes(questions: DataFrame, scored: DataFrame, settings: SelectSettings) -> DataFrame:
    """(dataset, quota): how many questions each dataset keeps."""
    per_dataset = questions.groupBy("dataset").agg(F.count("*").alias("questions"))
    if settings.quota == "count":
        return per_dataset.select("dataset", F.least("questions", F.lit(settings.quota_count)).alias("quota"))
    if settings.quota == "fraction":
        share = F.round(F.col("questions") * settings.quota_fraction)
        return per_dataset.select("dataset", share.cast("int").alias("quota"))
    survivors = scored.where((F.col("method") == DIFFICULTY) & (F.col("status") == S.KEPT)).groupBy("dataset").count()
    counted = per_dataset.join(survivors, "dataset", "left")
    return counted.select("dataset", F.coalesce("count", F.lit(0)).cast("int").alias("quota"))


def selection_rows(scored: DataFrame, chosen: dict[str, str], quotas: DataFrame, ctx: StageContext) -> DataFrame:
    """Scored rows -> chosen, selected and the final outcome: the best `quota` questions of each (dataset, method)."""
    chosen_method = F.create_map(*[F.lit(x) for pair in sorted(chosen.items()) for x in pair])[F.col("dataset")]
    scored = scored.withColumn("chosen", F.col("method") == chosen_method)
    # longest answer first; lowest mean grade (hardest) and smallest hash first
    preference = F.when(F.col("method") == LENGTH, -F.col("score")).otherwise(F.col("score"))
    rank = F.row_number().over(Window.partitionBy("dataset", "method").orderBy(preference, "qa_id"))
    eligible = scored.where(F.col("status") == S.KEPT).join(quotas, "dataset").withColumn("rank", rank)
    eligible = eligible.withColumn("selected", F.col("rank") <= F.col("quota"))
    judged = decide(
        eligible,
        [
            (
                ~F.col("selected"),
                S.DROPPED,
                S.REASON_BELOW_QUOTA,
                F.format_string("ranked %d, the dataset's quota is %d", "rank", "quota"),
            ),
            (
                ~F.col("chosen"),
                S.DROPPED,
                S.REASON_METHOD_NOT_CHOSEN,
                F.concat(F.lit("the dataset's method is "), chosen_method),
            ),
        ],
        ctx,
    )
    others = scored.where(F.col("status") != S.KEPT).withColumn("selected", F.lit(False))
    return judged.unionByName(others, allowMissingColumns=True)


def run(ctx: StageContext) -> StageOutcome:
    settings = ctx.settings
    questions = external_questions(ctx.read_input("external_decontaminated")).cache()
    try:
        count = questions.count()
        ctx.progress(f"{count} external questions")
        if count == 0:
            return StageOutcome(0, 0, 0, 0, None)
        datasets = sorted(r["dataset"] for r in questions.select("dataset").distinct().collect())
        chosen = {d: settings.method_of(d) for d in datasets}
        ctx.recorder.params({f"select.method.{d}": m for d, m in chosen.items()})
        scored = [
            SCORERS[method](ctx, questions.where(F.col("dataset").isin(names)), settings)
            for method, names in methods_to_score(chosen, settings).items()
        ]
        scored = reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), scored).cache()
        try:
            rows = selection_rows(scored, chosen, quota_sizes(questions, scored, settings), ctx)
            rows = table_rows(ctx, "selection_scores", rows)
            return commit_rows(ctx, "selection_scores", rows, count, update_matched=True)
        finally:
            scored.unpersist()
    finally:
        questions.unpersist()


STAGE = Stage(
    name="select",
    inputs=("external_decontaminated",),
    output="selection_scores",
    settings=SelectSettings,
    run=run,
    description="per external dataset: length, difficulty or random selection within a quota (the difficulty survivors)",
    roles=("answerer", "student", "grader"),
)
