"""MegaScience part 2, annotate: each selected external question gets a new concise step-by-step solution
-> `external_annotated`.

The `annotator` role writes it from the question alone (conf/prompts/annotate.v1.txt: given, asked, short justified
steps, the final answer in \\boxed{}). A solution over annotate.max_answer_tokens tokens (the chunk stage's
tokenizer, named on every row), or one cut off at the role's max_tokens, is dropped (answer_too_long): the paper
drops the ~8k responses over 4,096 tokens. reference_answer stays the source's; a source without one takes the
new solution's last \\boxed{} (else its final-answer line), and a question with neither is kept with
reference_answer null (no_reference_answer), never guessed. Every row gets a subject: the dataset's own (mapped in conf/external.yaml)
where it is one of ours, else the `classifier` role's reading of the question (subject_source says which; a failed
call is a failed row, asked again next run). Incremental: questions already annotated are not sent again.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, StringType, StructField, StructType

from megascience.jobs.platform.prompts import ChatPrompt, load_prompt
from megascience.jobs.platform.settings import AnnotateSettings
from megascience.jobs.platform.stage import Stage, StageContext, StageOutcome, decide, llm_failed_rule, run_pending
from megascience.jobs.stages.check_reasoning import parse_distilled
from megascience.jobs.stages.chunk import resolve_tokenizer, token_count
from megascience.jobs.stages.classify import question_subjects
from megascience.jobs.stages.reference_answer import with_parsed_answers
from megascience.schemas import status as S

SOLUTION = StructType([StructField("distilled_answer", StringType()), StructField("answer_cut", BooleanType())])


def selected_questions(selection: DataFrame, decontaminated: DataFrame) -> DataFrame:
    """The external questions the select stage kept, with the fields the annotation and the mixture need."""
    chosen = selection.where(F.col("status") == S.KEPT).select("qa_id").distinct()
    questions = decontaminated.where(F.col("status") == S.KEPT).select(
        "qa_id", "dataset", "source", "source_id", "subject", "question", F.col("reference_answer").alias("source_reference")
    )
    return questions.join(chosen, "qa_id")


def annotated_rows(generated: DataFrame, tokenizer: str, max_tokens: int, ctx: StageContext) -> DataFrame:
    """Annotator output (distilled_answer, answer_tokens and the llm columns) -> external_annotated rows."""
    source_reference = F.nullif(F.trim("source_reference"), F.lit(""))
    rows = with_parsed_answers(generated.withColumn("answer", F.col("distilled_answer")))
    rows = rows.withColumns(
        {
            "reference_method": F.when(source_reference.isNotNull(), F.lit("source")).otherwise(F.col("reference_method")),
            "reference_answer": F.coalesce(source_reference, F.col("reference_answer")),
        }
    )
    cut_off = F.col("answer_cut")
    return decide(
        rows,
        [
            llm_failed_rule(),
            llm_failed_rule("subject"),  # the classifier gave no subject: asked again next run
            (cut_off, S.DROPPED, S.REASON_ANSWER_TOO_LONG, "cut off at the annotator's max_tokens"),
            (
                F.col("answer_tokens") > max_tokens,
                S.DROPPED,
                S.REASON_ANSWER_TOO_LONG,
                F.format_string("%d tokens, over %d", "answer_tokens", F.lit(max_tokens)),
            ),
            (F.col("reference_answer").isNull(), S.KEPT, S.REASON_NO_REFERENCE_ANSWER, "no reference in the source or the solution"),
        ],
        ctx,
    ).withColumns({"tokenizer": F.lit(tokenizer), "call_id": F.col("llm_call_id"), "model": F.col("llm_model")})


def run(ctx: StageContext) -> StageOutcome:
    inputs = selected_questions(ctx.read_input("selection_scores"), ctx.read_input("external_decontaminated"))

    def annotate(todo: DataFrame) -> DataFrame:
        spec, _ = resolve_tokenizer(ctx.config, ctx.progress)
        ctx.recorder.params({"annotate.tokenizer_used": spec.label})
        prompt = ChatPrompt(load_prompt("annotate.v1"))
        ctx.recorder.prompts_used(prompt.templates())
        subjects = question_subjects(ctx, todo)
        generated = ctx.llm.generate(todo.drop("subject"), "annotator", prompt, parse_distilled, SOLUTION).join(subjects, "qa_id")
        generated = generated.withColumn("answer_tokens", token_count(F.col("distilled_answer"), spec))
        return annotated_rows(generated, spec.label, ctx.settings.max_answer_tokens, ctx)

    return run_pending(ctx, inputs, "external_annotated", ["qa_id"], annotate)


STAGE = Stage(
    name="annotate",
    inputs=("selection_scores", "external_decontaminated", "external_annotated"),
    output="external_annotated",
    settings=AnnotateSettings,
    run=run,
    description="new concise step-by-step solutions for the selected external questions; over-long ones dropped",
    roles=("annotator", "classifier"),
)
