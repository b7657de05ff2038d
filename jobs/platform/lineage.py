"""Lineage in MLflow: a pipeline run with one nested run per stage.

A stage run holds its config section as params, its input tables (with the Delta versions read) and its output
table (with the version it committed) as dataset inputs of context `input` / `output`, the same as tags, and the
row counts and duration as metrics. Every Delta commit carries the stage run's id, so a table version leads back
to its run and a run leads to the exact table versions it read.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from megascience.jobs.platform.config import Config
from megascience.jobs.platform.settings import LakeSettings, MlflowSettings

KIND_TAG = "megascience.kind"
CODE_VERSION_TAG = "megascience.code_version"
STAGE_TAG = "megascience.stage"
VERSION_TAG = "megascience.delta_version"
_MAX_PARAM_CHARS = 6000


def tracking_uri(config: Config) -> str:
    configured = MlflowSettings.of(config).tracking_uri
    if configured:
        return configured
    root = LakeSettings.of(config).root
    if "://" in root:
        raise ValueError(
            f"lake.root={root} is not a local directory, so there is no local MLflow store: set mlflow.tracking_uri"
        )
    return "sqlite:///" + os.path.join(os.path.abspath(root), "mlflow.db")


def artifact_location(config: Config) -> str | None:
    configured = MlflowSettings.of(config).artifact_location
    if configured:
        return configured
    root = LakeSettings.of(config).root
    if "://" in root:
        return None
    return "file://" + os.path.join(os.path.abspath(root), "mlartifacts")


@lru_cache(maxsize=1)
def code_version() -> str:
    """The code that runs: git:<sha>[+dirty] in a checkout, else the installed package's version."""
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        try:
            sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10).stdout.strip()
            return f"git:{sha}" + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):  # no git on this machine: the package version says enough
            pass
    from importlib import metadata

    try:
        return f"package:{metadata.version('megascience')}"
    except metadata.PackageNotFoundError:
        return "unknown (no git checkout, no installed package)"


def model_revision(kind: str, model: str) -> str:
    """What pins a role's weights: the hub snapshot a local copy came from, else a hash of its config.json; an
    endpoint or a hub id resolved at load time says so."""
    if kind == "openai":
        return "served by an endpoint (its revision is the server's)"
    path = Path(model)
    if not path.is_dir():
        return f"hub:{model} (the revision is resolved when the engine loads it)"
    if path.parent.name == "snapshots":
        return f"hub snapshot {path.name}"
    config = path / "config.json"
    if config.is_file():
        return "config.json sha256:" + hashlib.sha256(config.read_bytes()).hexdigest()[:16]
    return "local directory without config.json"


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."


def _flat_params(section: str, values: Any) -> dict[str, str]:
    if not isinstance(values, dict) or not values:
        return {section: _param_value(values)}
    params: dict[str, str] = {}
    for key, value in values.items():
        params.update(_flat_params(f"{section}.{key}", value))
    return params


@dataclass
class StageRecorder:
    """What one stage run logs: inputs read, the output committed, counts."""

    run_id: str
    started: float = field(default_factory=time.monotonic)

    def _dataset(self, table: str, location: str, version: int, catalog_table: bool):
        from mlflow.data.delta_dataset_source import DeltaDatasetSource
        from mlflow.data.meta_dataset import MetaDataset

        source = (
            DeltaDatasetSource(delta_table_name=location, delta_table_version=version)
            if catalog_table
            else DeltaDatasetSource(path=location, delta_table_version=version)
        )
        return MetaDataset(source=source, name=table, digest=f"{table}@v{version}")

    def table_used(self, role: str, table: str, location: str, version: int, catalog_table: bool = False) -> None:
        """Log a table version read (role `input`) or committed (role `output`)."""
        import mlflow

        # the version also goes in a tag: DeltaDatasetSource leaves version 0 out of its JSON
        dataset = self._dataset(table, location, version, catalog_table)
        mlflow.log_input(dataset, context=role, tags={VERSION_TAG: str(version)})
        mlflow.set_tag(f"{role}.{table}.version", str(version))
        if role == "output":
            mlflow.set_tags({"output.table": table, "output.version": str(version)})

    def role_used(self, role) -> None:
        """Log which engine, model and sampling an LLM role resolved to (a megascience.jobs.platform.llm.RoleSpec)."""
        import mlflow

        mlflow.log_params(
            {
                f"llm.{role.role}.engine": role.engine.kind,
                f"llm.{role.role}.model": role.model_id,
                f"llm.{role.role}.sampling": _param_value(role.sampling.as_dict()),
                f"llm.{role.role}.revision": model_revision(role.engine.kind, role.engine.model),
            }
        )
        if role.smoke:
            mlflow.set_tag("llm.smoke_model", "true")

    def prompts_used(self, templates) -> None:
        """Log the sha256 of each prompt template (megascience.jobs.platform.prompts.PromptTemplate) the stage rendered."""
        import mlflow

        mlflow.log_params({f"prompt.{t.name}.sha256": t.sha256 for t in templates})

    def params(self, values: dict[str, Any]) -> None:
        """Log choices a stage makes at run time (e.g. the tokenizer it resolved), beside its config section."""
        import mlflow

        mlflow.log_params({name: _param_value(value) for name, value in values.items()})

    def counts(self, **counts: float) -> None:
        import mlflow

        mlflow.log_metrics({name: float(value) for name, value in counts.items()})

    def llm_usage(self, usage: list[dict]) -> None:
        """Log the stage's LLM calls and tokens per role (rows of platform.llm.llm_usage) as metrics."""
        import mlflow

        metrics = {}
        for row in usage:
            for key in ("calls", "calls_ok", "prompt_tokens", "cached_prompt_tokens", "completion_tokens"):
                metrics[f"llm.{row['role']}.{key}"] = float(row[key] or 0)
        if metrics:
            mlflow.log_metrics(metrics)

    def finish(self) -> float:
        import mlflow

        duration = time.monotonic() - self.started
        mlflow.log_metric("duration_s", duration)
        return duration


class Lineage:
    """Opens the pipeline run and its nested stage runs in the configured tracking store."""

    def __init__(self, config: Config):
        import mlflow

        self.config = config
        mlflow.set_tracking_uri(tracking_uri(config))
        name = MlflowSettings.of(config).experiment
        experiment = mlflow.get_experiment_by_name(name)
        self.experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else mlflow.create_experiment(name, artifact_location=artifact_location(config))
        )

    @contextmanager
    def pipeline_run(self, stages: list[str], backend: str, extra_tags: dict[str, str] | None = None) -> Iterator[str]:
        import mlflow

        tags = {
            KIND_TAG: "pipeline",
            CODE_VERSION_TAG: code_version(),
            "profile": self.config.profile,
            "backend": backend,
            **(extra_tags or {}),
        }
        with mlflow.start_run(experiment_id=self.experiment_id, run_name="pipeline", tags=tags) as run:
            params = {"stages": _param_value(stages), "profile": self.config.profile}
            for section, values in self.config.values.items():
                params.update(_flat_params(section, values))
            mlflow.log_params(params)
            yield run.info.run_id

    @contextmanager
    def stage_run(self, stage: str, config_section: str | None) -> Iterator[StageRecorder]:
        import mlflow

        tags = {KIND_TAG: "stage", STAGE_TAG: stage, CODE_VERSION_TAG: code_version()}
        with mlflow.start_run(experiment_id=self.experiment_id, run_name=stage, nested=True, tags=tags) as run:
            if config_section:
                mlflow.log_params(_flat_params(config_section, self.config[config_section]))
            recorder = StageRecorder(run.info.run_id)
            yield recorder
            recorder.finish()


@dataclass(frozen=True)
class RunFacts:
    run_id: str
    name: str
    status: str
    start_time: int | None
    end_time: int | None
    parent_run_id: str | None
    params: dict[str, str]
    metrics: dict[str, float]
    inputs: list[tuple[str, str, str]]  # (context, table, version)


def describe_run(config: Config, run_id: str) -> RunFacts:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(config))
    run = client.get_run(run_id)
    inputs = []
    for dataset_input in run.inputs.dataset_inputs:
        tags = {tag.key: tag.value for tag in dataset_input.tags}
        inputs.append((tags.get("mlflow.data.context", ""), dataset_input.dataset.name, tags.get(VERSION_TAG, "")))
    return RunFacts(
        run_id=run_id,
        name=run.info.run_name,
        status=run.info.status,
        start_time=run.info.start_time,
        end_time=run.info.end_time,
        parent_run_id=run.data.tags.get("mlflow.parentRunId"),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        inputs=sorted(inputs),
    )
