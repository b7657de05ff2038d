"""The pipeline: the ordered stages, slicing by --from/--until, and running each stage as a nested MLflow run.

STAGES is the paper's order (classify before ocr, so dropped books are never OCR'd); `ordered_stages(config)`
puts ocr before classify when classify.before_ocr is false.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from megascience.jobs.platform.config import Config
from megascience.jobs.platform.lineage import Lineage
from megascience.jobs.platform.llm import llm_usage
from megascience.jobs.platform.settings import ClassifySettings
from megascience.jobs.platform.stage import Stage, StageContext, StageOutcome
from megascience.jobs.platform.tables import Lakehouse
from megascience.jobs.stages import (
    annotate,
    benchmarks,
    check_reasoning,
    chunk,
    classify,
    decontaminate,
    dedup,
    drop_contaminated,
    external,
    extract,
    ingest,
    ingest_external,
    mix,
    ocr,
    publish,
    reference_answer,
    refine,
    select,
)
from megascience.jobs.stages import filter as filter_stage

STAGES: tuple[Stage, ...] = (
    ingest.STAGE,
    classify.STAGE,
    ocr.STAGE,
    chunk.STAGE,
    extract.STAGE,
    dedup.STAGE,
    refine.STAGE,
    check_reasoning.STAGE,
    filter_stage.STAGE,
    benchmarks.STAGE,
    decontaminate.STAGE,
    drop_contaminated.STAGE,
    reference_answer.STAGE,
    publish.STAGE,
    ingest_external.STAGE,
    external.DEDUP,
    external.DECONTAMINATE,
    external.DROP_CONTAMINATED,
    select.STAGE,
    annotate.STAGE,
    mix.STAGE,
)


class StageSelectionError(ValueError):
    pass


def stage_named(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise StageSelectionError(f"unknown stage {name!r}; stages in order: {', '.join(s.name for s in STAGES)}")


def ordered_stages(config: Config | None = None) -> tuple[Stage, ...]:
    """The stages in run order for `config`: STAGES, with ocr before classify when classify.before_ocr is false."""
    if config is None or ClassifySettings.of(config).before_ocr:
        return STAGES
    order = list(STAGES)
    i, j = order.index(classify.STAGE), order.index(ocr.STAGE)
    order[i], order[j] = order[j], order[i]
    return tuple(order)


def select_stages(start: str | None = None, until: str | None = None, config: Config | None = None) -> list[Stage]:
    stages = ordered_stages(config)
    names = [stage.name for stage in stages]
    first = names.index(stage_named(start).name) if start else 0
    last = names.index(stage_named(until).name) if until else len(names) - 1
    if first > last:
        raise StageSelectionError(f"--from {start} comes after --until {until}")
    return list(stages[first : last + 1])


@dataclass(frozen=True)
class StageReport:
    stage: str
    run_id: str
    outcome: StageOutcome
    duration_s: float


def run_stage(
    stage: Stage, spark: SparkSession, config: Config, lake: Lakehouse, lineage: Lineage, pipeline_run_id: str
) -> StageReport:
    with lineage.stage_run(stage.name, stage.config_section) as recorder:
        versions = {name: lake.version(name) for name in stage.inputs}
        for name, version in versions.items():
            if version is not None:
                recorder.table_used("input", name, lake.location(name), version, lake.in_catalog)
        settings = stage.settings.of(config) if stage.settings else None
        ctx = StageContext(spark, config, lake, recorder, stage.name, versions, settings, stage.output, stage.writes)
        with lake.commit_tags(mlflow_run_id=recorder.run_id, pipeline_run_id=pipeline_run_id, stage=stage.name):
            try:
                outcome = stage.run(ctx)
            finally:
                if "llm" in ctx.__dict__:  # the gateway was used (a cached_property stores itself there)
                    ctx.llm.release()
        if outcome.commit is not None:
            recorder.table_used("output", stage.output, lake.location(stage.output), outcome.commit.version, lake.in_catalog)
        if stage.roles and lake.exists("llm_calls"):  # the calls this run made (cached answers cost nothing)
            calls = lake.read("llm_calls").where(F.col("run_id") == recorder.run_id)
            recorder.llm_usage([row.asDict() for row in llm_usage(calls, {}).collect()])
        recorder.counts(
            rows_in=outcome.rows_in,
            rows_kept=outcome.rows_kept,
            rows_dropped=outcome.rows_dropped,
            rows_failed=outcome.rows_failed,
            rows_written=outcome.commit.rows_written if outcome.commit else 0,
        )
        duration = recorder.finish()
    ctx.progress(
        f"done in {duration:.1f}s: {outcome.rows_in} in, {outcome.rows_kept} kept, {outcome.rows_dropped} dropped, "
        f"{outcome.rows_failed} failed"
        + (f"; {stage.output} is now version {outcome.commit.version}" if outcome.commit else "; nothing new to write")
    )
    return StageReport(stage.name, recorder.run_id, outcome, duration)


def run_pipeline(
    spark: SparkSession,
    config: Config,
    lake: Lakehouse,
    stages: list[Stage],
    tags: dict[str, str] | None = None,
    on_start: Callable[[str], None] | None = None,
) -> list[StageReport]:
    """The stages in order inside one pipeline MLflow run; `on_start` is called with its id once it has begun."""
    lineage = Lineage(config)
    reports = []
    with lineage.pipeline_run([s.name for s in stages], lake.backend_name, tags) as pipeline_run_id:
        if on_start is not None:
            on_start(pipeline_run_id)
        for stage in stages:
            reports.append(run_stage(stage, spark, config, lake, lineage, pipeline_run_id))
    return reports
