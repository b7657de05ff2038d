"""Stage 9, filter: drop pairs whose answer contradicts itself, whose question depends on material that is not
there (figures, tables, numbered equations), or whose answer is missing or invalid.

Two cheap rules decide first, without a model call: an empty answer is invalid, and a question that unambiguously
refers to material that is not given (a numbered figure, table or equation the question does not itself hold: "Fig.
4-16", "equation (8.75)"; "as shown in the figure") depends on missing material; the row's detail names the rule and
the words it matched. "A table 1.25 m high", "plates 2.0 cm apart" or an equation given inline are not references.
Every other pair goes to the filter role, which answers three booleans (read in any spelling: true, "True", "yes").
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, StringType, StructField, StructType

from megascience.jobs.platform.prompts import ChatPrompt, load_prompt
from megascience.jobs.platform.stage import Stage, StageContext, StageOutcome, decide, llm_failed_rule, run_pending
from megascience.schemas import status as S
from megascience.udfs.parsers import FILTER_SCHEMA, missing_material_reference, parse_flags

FLAGS = tuple(FILTER_SCHEMA["required"])
VERDICTS = StructType([StructField(name, BooleanType()) for name in FLAGS])


def parse_verdicts(text: str, finish_reason: str | None) -> dict:
    return parse_flags(text, finish_reason, FLAGS)


def _missing_material(question):  # no type hints: Spark would try to infer a pandas UDF from them
    found = missing_material_reference(question)
    return found.describe() if found else None


def with_rule_findings(pairs: DataFrame) -> DataFrame:
    # the UDF is made here, not at import: one made before a Spark Connect session exists would be a classic one
    missing_material = F.udf(_missing_material, StringType())
    return pairs.withColumns(
        {
            "material_reference": missing_material("question"),
            "answer_empty": F.length(F.trim(F.coalesce("answer", F.lit("")))) == 0,
        }
    )


def filtered_rows(decided_by_rule: DataFrame, judged: DataFrame, ctx: StageContext) -> DataFrame:
    ruled = decide(
        decided_by_rule,
        [
            (F.col("answer_empty"), S.DROPPED, S.REASON_FILTER_INVALID_ANSWER, "the answer is empty"),
            (F.lit(True), S.DROPPED, S.REASON_FILTER_MISSING_MATERIAL, F.col("material_reference")),
        ],
        ctx,
    ).withColumns(
        {
            "self_contradictory": F.lit(None).cast("boolean"),
            "missing_material": F.col("material_reference").isNotNull(),
            "answer_valid": ~F.col("answer_empty"),
            "call_id": F.lit(None).cast("string"),
        }
    )
    judged_rows = decide(
        judged,
        [
            llm_failed_rule(),
            (F.col("self_contradictory"), S.DROPPED, S.REASON_FILTER_SELF_CONTRADICTORY, "the filter model found the answer contradicts itself"),
            (F.col("missing_material"), S.DROPPED, S.REASON_FILTER_MISSING_MATERIAL, "the filter model found the question depends on material not given"),
            (~F.col("answer_valid"), S.DROPPED, S.REASON_FILTER_INVALID_ANSWER, "the filter model found the answer missing or invalid"),
        ],
        ctx,
    ).withColumn("call_id", F.col("llm_call_id"))
    return ruled.unionByName(judged_rows, allowMissingColumns=True)


def run(ctx: StageContext) -> StageOutcome:
    reasoned = ctx.read_input("qa_reasoned").where(F.col("status") == S.KEPT).drop("model")

    def filter_pairs(todo: DataFrame) -> DataFrame:
        checked = with_rule_findings(todo)
        by_rule = checked.where(F.col("answer_empty") | F.col("material_reference").isNotNull())
        to_judge = checked.where(~F.col("answer_empty") & F.col("material_reference").isNull())
        prompt = ChatPrompt(load_prompt("filter.v2"))
        ctx.recorder.prompts_used(prompt.templates())
        judged = ctx.llm.generate(to_judge, "filter", prompt, parse_verdicts, VERDICTS, FILTER_SCHEMA)
        return filtered_rows(by_rule, judged, ctx)

    return run_pending(ctx, reasoned, "qa_filtered", ["qa_id"], filter_pairs)


STAGE = Stage(
    name="filter",
    inputs=("qa_reasoned", "qa_filtered"),
    output="qa_filtered",
    settings=None,
    run=run,
    description="drop self-contradictory answers, questions depending on missing material, invalid answers",
    roles=("filter",),
)
