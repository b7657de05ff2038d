"""The one Spark entry point for LLM work: `LlmGateway.generate(df, role, build_prompt, parse, ...)`.

Roles (classifier, extractor, ..., ocr) resolve on the driver to an engine, a model and sampling parameters.
`generate` then
1. builds every row's chat request on the executors and gives it a content id (udfs.llm_calls.request_id);
2. skips requests whose output is already in `llm_calls` (the request cache; failed calls are tried again);
3. streams the rest through `llm.engine_partitions` engine tasks in ONE Spark job: each task keeps its engine full
   for its whole share (no barrier between batches) and writes completed calls to chunk files as they finish
   (`llm.chunk_rows` / `llm.chunk_seconds`), while a committer thread on the driver appends those files to
   `llm_calls` every `llm.commit_interval_s` (blind appends: their cost does not grow with the table). A crash or a
   preempted node loses at most the calls in flight and one unwritten chunk per engine; the next run first commits
   the chunk files a crashed run left behind, then asks only for what is not durable;
4. joins the outputs back to the rows and parses them, so every input row comes out with a status
   (ok / parse_error / engine_error / prompt_error), the error text, token counts, latency, model and call id.

Engine tasks of in-process engines (vllm) run under a GPU ResourceProfile (`llm.gpus_per_task`), and each task's
GPU addresses become its engine's CUDA_VISIBLE_DEVICES; HTTP roles (openai) run as ordinary CPU tasks whose width
is `llm.openai.max_concurrency` requests in flight.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from fsspec.core import url_to_fs
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, IntegerType, StringType, StructField, StructType

from megascience.jobs.platform.config import Config, ConfigError
from megascience.jobs.platform.settings import LakeSettings, LlmSettings, SparkSettings
from megascience.jobs.platform.smoke_model import SMOKE_MODEL_NAME, build_smoke_model
from megascience.jobs.platform.tables import Lakehouse
from megascience.schemas.status import CALL_OK, LLM_ENGINE_ERROR, LLM_OK, LLM_PROMPT_ERROR
from megascience.udfs.llm_calls import MANIFEST, CallPlan, build_requests, chunk_files, parse_outputs, stream_calls
from megascience.udfs.llm_engines import EngineSpec, Sampling

ROLES = (
    "classifier",
    "extractor",
    "refiner",
    "reasoning_checker",
    "distiller",
    "filter",
    "judge",
    "reference_extractor",
    "answerer",
    "student",
    "grader",
    "annotator",
    "ocr",
)


# Columns generate() adds to every row.
GENERATED_COLUMNS = StructType(
    [
        StructField("llm_call_id", StringType()),
        StructField("llm_model", StringType()),
        StructField("llm_status", StringType()),
        StructField("llm_error", StringType()),
        StructField("llm_text", StringType()),
        StructField("llm_outputs", ArrayType(StringType())),
        StructField("llm_finish_reason", StringType()),  # of the first output: "length" means it was cut off
        StructField("llm_prompt_tokens", IntegerType()),
        StructField("llm_completion_tokens", IntegerType()),
        StructField("llm_latency_s", DoubleType()),
    ]
)

SMOKE_BANNER = (
    "\n" + "!" * 100 + "\n"
    "!! SMOKE MODEL: no LLM was configured and none could be had here, so LLM roles use a tiny RANDOM model.\n"
    "!! Its text is noise: the run shows the plumbing, not data. Point MEGASCIENCE_MODEL at a hub id, a local model\n"
    "!! directory or an http://host:port/v1 endpoint for real output.\n" + "!" * 100
)


class ModelUnavailableError(ConfigError):
    """No usable model for a role; the message says how to point at a local copy or an endpoint."""


@dataclass(frozen=True)
class RoleSpec:
    role: str
    engine: EngineSpec
    model_id: str  # recorded on every row and part of every request id
    sampling: Sampling
    smoke: bool

    @property
    def sends_json_schema(self) -> bool:
        return self.engine.kind == "vllm" or bool(self.engine.option("json_schema", True))


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or "://" in model or os.path.isdir(model)


def model_obtainable(model: str) -> bool:
    """A local directory, a hub id already in the local cache, or a hub id the hub answers for."""
    if os.path.isdir(os.path.expanduser(model)):
        return True
    if _looks_like_path(model):
        return False
    from huggingface_hub import model_info, snapshot_download

    try:
        snapshot_download(model, local_files_only=True)
        return True
    except Exception:  # not in the local cache (huggingface_hub raises several error types for this)
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        model_info(model, timeout=10)
        return True
    except Exception:  # offline, hub unreachable, or no such repository
        return False


def served_model(base_url: str, api_key_env: str) -> str:
    """The first model an OpenAI-compatible endpoint serves (GET /models)."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "EMPTY", timeout=30, max_retries=2)
    try:
        models = client.models.list().data
    except Exception as err:
        raise ModelUnavailableError(f"cannot list the models served at {base_url}: {type(err).__name__}: {err}") from None
    if not models:
        raise ModelUnavailableError(f"the endpoint {base_url} serves no model")
    return models[0].id


def _smoke_dir(config: Config) -> Path:
    configured = LlmSettings.of(config).smoke_model_dir
    return Path(configured) if configured else Path(LakeSettings.of(config).root).resolve() / "models" / "smoke"


def _vllm_options(config: Config, smoke: bool) -> tuple[tuple[str, Any], ...]:
    options = asdict(LlmSettings.of(config).vllm)
    if not options["cache_root"] and SparkSettings.of(config).mode == "embedded":
        options["cache_root"] = str(Path(LakeSettings.of(config).root).resolve() / "cache" / "vllm")
    if smoke:  # the smoke model is float32 and small; its KV cache needs little room
        options.update(dtype="float32", kv_cache_memory_gb=min(options["kv_cache_memory_gb"] or 0.0625, 0.25))
    return tuple(sorted(options.items()))


def resolve_role(config: Config, role: str) -> RoleSpec:
    """Engine, model and sampling for a role, with the fallbacks of conf/base.yaml `llm`."""
    if role not in ROLES:
        raise ConfigError(f"unknown LLM role {role!r}; roles: {', '.join(ROLES)}")
    llm = LlmSettings.of(config)
    settings = llm.roles[role]
    engine = settings.engine or llm.default_engine  # both checked when the configuration loaded
    model = settings.model or llm.default_model
    base_url = settings.base_url or llm.openai.base_url
    sampling = Sampling(
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_tokens=settings.max_tokens,
        n=settings.n,
        seed=settings.seed,
    )
    if model.startswith(("http://", "https://")):  # an endpoint stands for the model it serves
        engine, base_url, model = "openai", model, ""
    if engine == "openai":
        if not base_url:
            raise ModelUnavailableError(f"role {role} uses the openai engine but no endpoint is set: set llm.openai.base_url")
        model = model or served_model(base_url, llm.openai.api_key_env)
        options = dict(asdict(llm.openai), base_url=base_url)
        return RoleSpec(role, EngineSpec("openai", model, tuple(sorted(options.items()))), model, sampling, False)

    smoke = False
    if not model:
        fallback = llm.fallback_model
        if fallback and model_obtainable(fallback):
            model = fallback
        elif llm.smoke_fallback:
            model, smoke = str(build_smoke_model(_smoke_dir(config))), True
        else:
            raise ModelUnavailableError(
                f"no model for role {role}: set llm.roles.{role}.model or llm.default_model (or MEGASCIENCE_MODEL) to "
                "a hub id or a local model directory, or serve a model and set llm.openai.base_url"
            )
    elif not model_obtainable(model) and not (SparkSettings.of(config).mode != "embedded" and _looks_like_path(model)):
        raise ModelUnavailableError(
            f"model {model!r} for role {role} is neither a local directory nor available from the Hugging Face hub "
            f"here: download it where the hub is reachable (huggingface-cli download {model} --local-dir DIR), copy "
            "DIR here and set the model to DIR, or serve it and set llm.openai.base_url"
        )
    spec = EngineSpec("vllm", model, _vllm_options(config, smoke))
    return RoleSpec(role, spec, SMOKE_MODEL_NAME if smoke else model, sampling, smoke)


def _gpu_profile(gpus_per_task: int):
    """Stage-level scheduling: in-process engine tasks ask for GPUs, other stages keep every core."""
    if gpus_per_task <= 0:
        return None
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    return ResourceProfileBuilder().require(TaskResourceRequests().cpus(1).resource("gpu", gpus_per_task)).build


def _with_fields(schema: StructType, extra: StructType) -> StructType:
    return StructType(list(schema.fields) + list(extra.fields))


def staging_root(config: Config) -> str:
    """Where engine tasks write chunk files of calls until the driver commits them (executors must reach it)."""
    configured = LlmSettings.of(config).staging_dir
    if configured:
        return configured.rstrip("/")
    root = LakeSettings.of(config).root
    return f"{root.rstrip('/') if '://' in root else os.path.abspath(root)}/staging/llm_calls"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


class ChunkCommitter:
    """Appends the chunk files of one generate() (its staging directory) to llm_calls, from a driver thread.

    Each pass commits every complete file found as one blind append, then deletes them, and refreshes the
    directory's heartbeat, by which a later run's recovery tells a live generate() from one a crash left behind. A
    file found again (a pass that died between commit and delete) is appended again, which the table's precedence
    resolves.
    """

    HEARTBEAT = "_heartbeat"

    def __init__(self, lake: Lakehouse, directory: str, interval_s: float, on_commit: Callable[[int], None]):
        self.lake, self.directory, self.interval_s, self.on_commit = lake, directory, interval_s, on_commit
        self.fs, self._root = url_to_fs(directory)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def commit_once(self) -> int:
        files = chunk_files(self.directory)
        if not files:
            return 0
        commit = self.lake.append_files("llm_calls", files)
        self.fs.rm(files)
        self.on_commit(commit.rows_written)
        return commit.rows_written

    def beat(self) -> None:
        self.fs.makedirs(self._root, exist_ok=True)
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        self.fs.pipe_file(f"{self._root}/{self.HEARTBEAT}", json.dumps(owner).encode())

    def abandoned(self) -> bool:
        """True when no live generate() owns the directory: its owner process is gone (same host), or its heartbeat
        is missing or older than a few passes (another host)."""
        try:
            owner = json.loads(self.fs.cat_file(f"{self._root}/{self.HEARTBEAT}"))
        except (FileNotFoundError, ValueError):
            return True
        if owner["host"] == socket.gethostname():
            if owner["pid"] == os.getpid():  # an earlier generate() of this process (recovery runs before the next)
                return True
            try:
                os.kill(owner["pid"], 0)
            except ProcessLookupError:
                return True
            return False
        return time.time() - owner["time"] > 3 * self.interval_s + 10

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                self.beat()
                self.commit_once()
        except BaseException as err:  # re-raised on exit: a commit that fails must fail the stage, not vanish
            self._error = err

    def __enter__(self) -> "ChunkCommitter":
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="llm-chunk-committer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        self.commit_once()  # what the tasks wrote since the last pass (also when the job failed: it is paid for)
        self.fs.rm(self._root, recursive=True)


_REQUEST_COLUMNS = StructType(
    [
        StructField("llm_call_id", StringType()),
        StructField("llm_messages", StringType()),
        StructField("llm_prompt_error", StringType()),
    ]
)


@dataclass
class GenerateStats:
    role: str
    model: str
    calls_made: int = 0
    calls_failed: int = 0
    commits: int = 0  # appends of chunk files to llm_calls
    chunk_files: int = 0


class LlmGateway:
    """LLM work of one stage run: resolves roles, consults the cache, streams calls and commits them in chunks."""

    def __init__(
        self,
        spark: SparkSession,
        config: Config,
        lake: Lakehouse,
        run_id: str,
        progress: Callable[[str], None],
        on_role: Callable[[RoleSpec], None] = lambda spec: None,
    ):
        self.spark, self.config, self.lake, self.run_id, self.progress = spark, config, lake, run_id, progress
        self._on_role = on_role
        self._roles: dict[str, RoleSpec] = {}
        self._persisted: list[DataFrame] = []
        self.stats: dict[str, GenerateStats] = {}

    def release(self) -> None:
        """Free the requests generate() kept on disk; the stage calls this when its output is committed."""
        for frame in self._persisted:
            frame.unpersist()
        self._persisted.clear()

    def role(self, name: str) -> RoleSpec:
        if name not in self._roles:
            self._roles[name] = spec = resolve_role(self.config, name)
            self._on_role(spec)
        return self._roles[name]

    def generate(
        self,
        df: DataFrame,
        role: str,
        build_prompt: Callable[[dict[str, Any]], list[dict[str, Any]]],
        parse: Callable[[str, str | None], dict[str, Any]] | None = None,
        output_schema: StructType | None = None,
        json_schema: dict[str, Any] | None = None,
        prefix_group: str | None = None,
    ) -> DataFrame:
        """`df` with GENERATED_COLUMNS and, when `parse` is given, the fields of `output_schema` added.

        `parse(text, finish_reason)` reads the first output (udfs.llm_calls.parse_outputs has the contract).

        `prefix_group` names a column whose equal values mark requests that share a long prompt prefix (the two
        extraction prompts of one chunk): they are sent in the same batch, to the same engine, side by side, so
        the engine's prefix cache computes the shared prefix once.
        """
        spec = self.role(role)
        schema_sent = json_schema if spec.sends_json_schema else None
        # built once (an OCR prompt renders a page): both the calls and the join back read this copy
        requests = df.mapInPandas(
            partial(build_requests, build_prompt=build_prompt, model=spec.model_id, sampling=spec.sampling, json_schema=schema_sent),
            _with_fields(df.schema, _REQUEST_COLUMNS),
        ).persist(StorageLevel.DISK_ONLY)
        self._persisted.append(requests)
        stats = self.stats.setdefault(role, GenerateStats(role, spec.model_id))
        self._call_pending(requests, spec, schema_sent, stats, prefix_group)
        asked = requests.where(F.col("llm_call_id").isNotNull()).select(F.col("llm_call_id").alias("call_id"))
        calls = self.lake.read_or_empty("llm_calls", keys=asked).select(
            F.col("call_id").alias("llm_call_id"),
            F.col("status").alias("_call_status"),
            F.col("error").alias("_call_error"),
            F.col("outputs").alias("llm_outputs"),
            F.get("finish_reasons", 0).alias("llm_finish_reason"),
            F.col("prompt_tokens").alias("llm_prompt_tokens"),
            F.col("completion_tokens").alias("llm_completion_tokens"),
            F.col("latency_s").alias("llm_latency_s"),
        )
        joined = requests.drop("llm_messages").join(calls, "llm_call_id", "left")
        prompt_error, call_status = F.col("llm_prompt_error"), F.col("_call_status")
        status = (
            F.when(prompt_error.isNotNull(), F.lit(LLM_PROMPT_ERROR))
            .when(call_status == CALL_OK, F.lit(LLM_OK))
            .otherwise(F.lit(LLM_ENGINE_ERROR))
        )
        error = F.coalesce(
            prompt_error,
            F.col("_call_error"),
            F.when(call_status.isNull(), F.lit("no llm_calls row for this request (interrupted run?)")),
        )
        result = joined.select(
            *[F.col(c) for c in df.columns],
            "llm_call_id",
            F.lit(spec.model_id).alias("llm_model"),
            status.alias("llm_status"),
            error.alias("llm_error"),
            F.get("llm_outputs", 0).alias("llm_text"),  # null, not an error, for a failed call
            "llm_outputs",
            "llm_finish_reason",
            "llm_prompt_tokens",
            "llm_completion_tokens",
            "llm_latency_s",
        )
        if parse is None:
            return result
        fields = output_schema or StructType([])
        return result.mapInPandas(
            partial(parse_outputs, parse=parse, fields=[f.name for f in fields.fields]), _with_fields(result.schema, fields)
        )

    def _pending_requests(self, requests: DataFrame, prefix_group: str | None) -> DataFrame:
        """Distinct requests without a successful call in llm_calls (all of them when the cache is off)."""
        group = F.col(prefix_group).cast("string") if prefix_group else F.col("llm_call_id")
        pending = requests.where(F.col("llm_call_id").isNotNull()).select("llm_call_id", "llm_messages", group.alias("_group"))
        pending = pending.dropDuplicates(["llm_call_id"])
        if not LlmSettings.of(self.config).cache:
            return pending
        asked = pending.select(F.col("llm_call_id").alias("call_id"))
        answered = self.lake.read_or_empty("llm_calls", keys=asked).where(F.col("status") == CALL_OK)
        return pending.join(answered.select(F.col("call_id").alias("llm_call_id")), "llm_call_id", "left_anti")

    def recover_chunks(self) -> int:
        """Commit the chunk files interrupted runs left in the staging directory: calls paid for, never redone."""
        root = staging_root(self.config)
        fs, path = url_to_fs(root)
        recovered = 0
        for directory in fs.ls(path, detail=False) if fs.exists(path) else []:
            directory = fs.unstrip_protocol(directory) if "://" in root else directory
            orphan = ChunkCommitter(self.lake, directory, LlmSettings.of(self.config).commit_interval_s, lambda n: None)
            if orphan.abandoned():
                recovered += orphan.commit_once()
                fs.rm(directory, recursive=True)
        if recovered:
            self.progress(f"committed {recovered} LLM calls an interrupted run had made durable")
        return recovered

    def _call_pending(
        self, requests: DataFrame, spec: RoleSpec, json_schema: dict | None, stats: GenerateStats, prefix_group: str | None
    ) -> None:
        llm = LlmSettings.of(self.config)
        self.recover_chunks()
        pending = self._pending_requests(requests, prefix_group).persist(StorageLevel.DISK_ONLY)
        try:
            total = pending.count()
            if not total:
                return
            in_process = spec.engine.kind == "vllm"
            tasks = llm.engine_partitions
            width = f"{tasks} engine task(s)" + ("" if in_process else f" x {spec.engine.option('max_concurrency')} in flight")
            self.progress(f"{spec.role}: {total} LLM calls to make ({spec.model_id}), {width}")
            directory = f"{staging_root(self.config)}/{uuid.uuid4().hex}"
            plan = CallPlan(
                spec=spec.engine,
                role=spec.role,
                model=spec.model_id,
                sampling=spec.sampling,
                json_schema=json_schema,
                run_id=self.run_id,
                processed_at=pd.Timestamp.now(tz="UTC").floor("s"),
                staging_dir=directory,
                chunk_rows=llm.chunk_rows,
                chunk_seconds=llm.chunk_seconds,
            )
            # one group's requests share an engine and sit side by side for its prefix cache
            shares = pending.repartition(tasks, "_group").sortWithinPartitions("_group", "llm_call_id")
            job = shares.mapInPandas(
                partial(stream_calls, plan=plan), MANIFEST, profile=_gpu_profile(llm.gpus_per_task) if in_process else None
            )
            started = time.monotonic()

            def report(committed: int) -> None:
                stats.commits += 1
                done, elapsed = stats.calls_made + committed, time.monotonic() - started
                rate = done / elapsed if elapsed else 0.0
                eta = f", ETA {_duration((total - done) / rate)}" if rate and done < total else ""
                self.progress(f"{spec.role}: {done}/{total} calls durable ({rate:.1f}/s{eta})")
                stats.calls_made = done

            with ChunkCommitter(self.lake, directory, llm.commit_interval_s, report):
                manifests = job.collect()
            stats.calls_failed += sum(row["failed"] for row in manifests)
            stats.chunk_files += sum(row["chunks"] for row in manifests)
        finally:
            pending.unpersist()


def announce_smoke_model(config: Config, roles: list[str]) -> bool:
    """Print the smoke-model banner if any of the roles resolves to it; True if so."""
    smoke = any(resolve_role(config, role).smoke for role in roles)
    if smoke:
        print(SMOKE_BANNER, flush=True)
    return smoke


def llm_usage(llm_calls: DataFrame, stages_by_role: dict[str, str], by: tuple[str, ...] = ("role",)) -> DataFrame:
    """LLM calls and tokens per role (and `by` columns, e.g. run_id), with the stages that use the role. One
    request counts once even if the table holds it twice (a retried call): rows are first reduced per call_id."""
    per_call = llm_calls.groupBy(*by, "call_id").agg(
        F.max("prompt_tokens").alias("prompt_tokens"),
        F.max("cached_prompt_tokens").alias("cached_prompt_tokens"),
        F.max("completion_tokens").alias("completion_tokens"),
        F.max((F.col("status") == CALL_OK).cast("int")).alias("ok"),
    )
    stages = F.create_map(*[F.lit(x) for pair in sorted(stages_by_role.items()) for x in pair]) if stages_by_role else None
    usage = per_call.groupBy(*by).agg(
        F.count("*").alias("calls"),
        F.sum("ok").alias("calls_ok"),
        F.coalesce(F.sum("prompt_tokens"), F.lit(0)).alias("prompt_tokens"),
        F.coalesce(F.sum("cached_prompt_tokens"), F.lit(0)).alias("cached_prompt_tokens"),
        F.coalesce(F.sum("completion_tokens"), F.lit(0)).alias("completion_tokens"),
    )
    if stages is not None and "role" in by:
        usage = usage.withColumn("stages", stages[F.col("role")])
    return usage.orderBy(*by)
