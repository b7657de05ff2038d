"""What a stage is: a name, the tables it reads, the table it writes, its config section and its body."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timezone
from typing import Callable

from pyspark.sql import DataFrame, SparkSession

from jobs.config import Config
from jobs.lineage import StageRecorder
from jobs.tables import Commit, Lakehouse
from schemas.tables import table_spec


@dataclass
class StageContext:
    spark: SparkSession
    config: Config
    lake: Lakehouse
    recorder: StageRecorder
    stage: str
    input_versions: dict[str, int | None] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc).replace(microsecond=0))

    @property
    def run_id(self) -> str:
        return self.recorder.run_id

    def read_input(self, name: str) -> DataFrame:
        """An input table at the version logged for this run (empty with its schema if it does not exist yet)."""
        version = self.input_versions.get(name)
        if version is None:
            return self.spark.createDataFrame([], table_spec(name).schema)
        return self.lake.as_of(name, version)

    def progress(self, message: str) -> None:
        if self.config["run"]["progress"]:
            print(f"[{self.stage}] {message}", flush=True)

    @cached_property
    def llm(self):
        """The LLM gateway of this stage run; each role it resolves is logged as run parameters."""
        from jobs.llm import LlmGateway

        return LlmGateway(self.spark, self.config, self.lake, self.run_id, self.progress, self.recorder.role_used)


@dataclass(frozen=True)
class StageOutcome:
    """Counts of one stage run; `commit` is None when there was nothing new to write."""

    rows_in: int
    rows_kept: int
    rows_dropped: int
    rows_failed: int
    commit: Commit | None


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[str, ...]
    output: str
    config_section: str | None
    run: Callable[[StageContext], StageOutcome]
    description: str
    roles: tuple[str, ...] = ()  # LLM roles the stage calls
    side_outputs: tuple[str, ...] = ()  # tables it also writes, beside its output (state it keeps between runs)

    @property
    def writes(self) -> tuple[str, ...]:
        """Every table a run of the stage may commit to: its output, its side tables, llm_calls if it calls a model."""
        return (self.output, *self.side_outputs, *(("llm_calls",) if self.roles else ()))
