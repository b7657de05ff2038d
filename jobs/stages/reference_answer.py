"""Stage 11, reference_answer: the short final answer of each curated pair (for RL rewards and difficulty grading).

The last non-empty \\boxed{...} of the answer (nested braces balanced), else an explicit final-answer line; only
answers with neither go to the reference_extractor model. A pair that reaches no short answer is kept with
reference_answer null and reason no_reference_answer, as the paper keeps all its pairs; never a guess.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from megascience.jobs.platform.prompts import ChatPrompt, load_prompt
from megascience.jobs.platform.stage import Stage, StageContext, StageOutcome, decide, llm_failed_rule, run_pending
from megascience.schemas import status as S
from megascience.udfs.parsers import REFERENCE_SCHEMA, final_answer
from megascience.udfs.parsers import parse_reference as read_reference

FOUND = StructType([StructField("reference_answer", StringType()), StructField("reference_method", StringType())])
EXTRACTED = StructType([StructField("model_reference", StringType())])


def _final_answer(answer):  # no type hints: Spark would try to infer a pandas UDF from them
    return final_answer(answer) or (None, None)


def parse_reference(text: str, finish_reason: str | None) -> dict:
    return {"model_reference": read_reference(text, finish_reason) or ""}


def with_parsed_answers(pairs: DataFrame) -> DataFrame:
    found = F.udf(_final_answer, FOUND)  # made here, not at import: before a Connect session it would be a classic UDF
    return pairs.withColumn("_found", found("answer")).select("*", "_found.*").drop("_found")


def reference_rows(parsed: DataFrame, extracted: DataFrame, ctx: StageContext) -> DataFrame:
    from_text = decide(parsed, [], ctx).withColumn("call_id", F.lit(None).cast("string"))
    from_model = extracted.withColumns(
        {"reference_answer": F.nullif(F.col("model_reference"), F.lit("")), "reference_method": F.lit("model"), "call_id": F.col("llm_call_id")}
    )
    from_model = decide(
        from_model,
        [
            llm_failed_rule(),
            (F.col("reference_answer").isNull(), S.KEPT, S.REASON_NO_REFERENCE_ANSWER, "the answer reaches no short final answer"),
        ],
        ctx,
    )
    return from_text.unionByName(from_model, allowMissingColumns=True)


def run(ctx: StageContext) -> StageOutcome:
    curated = ctx.read_input("qa_decontaminated").where(F.col("status") == S.KEPT)

    def find_references(todo: DataFrame) -> DataFrame:
        parsed = with_parsed_answers(todo)
        prompt = ChatPrompt(load_prompt("reference_extract.v1"))
        ctx.recorder.prompts_used(prompt.templates())
        unresolved = parsed.where(F.col("reference_answer").isNull()).drop("reference_answer", "reference_method")
        extracted = ctx.llm.generate(unresolved, "reference_extractor", prompt, parse_reference, EXTRACTED, REFERENCE_SCHEMA)
        return reference_rows(parsed.where(F.col("reference_answer").isNotNull()), extracted, ctx)

    return run_pending(ctx, curated, "qa_reference", ["qa_id"], find_references)


STAGE = Stage(
    name="reference_answer",
    inputs=("qa_decontaminated", "qa_reference"),
    output="qa_reference",
    settings=None,
    run=run,
    description="the short final answer: last \\boxed{}, else a final-answer line, else the model's reading",
    roles=("reference_extractor",),
)
