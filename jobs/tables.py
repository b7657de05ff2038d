"""The table layer: one API over Delta tables for every job, whichever engine commits them.

- `delta-spark`: Spark's Delta connector (clusters, Databricks, or any session whose Delta jars load). Path tables
  under `<lake.root>/tables/`, or Unity Catalog tables `<catalog>.<schema>.<name>` when configured.
- `delta-rs`: the `deltalake` package, for the embedded default where the connector's jars cannot be fetched.
  Rows are committed from the driver (Arrow), and Spark reads the current snapshot through the table's own file
  list (`DeltaTable.file_uris()`), so files a later commit removed are never read back.

Both write standard Delta tables (reader v1 / writer v2 from delta-rs): a path table written by one is read by the
other. Each commit carries `userMetadata` (JSON with the MLflow run id and stage) in its commit info, which Spark's
`DESCRIBE HISTORY` and delta-rs's `history()` both show. Schemas come from `schemas/tables.py` and are checked on
every write: a missing, extra or differently typed column is an error, never a silent cast.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema

from jobs.config import Config
from jobs.session import delta_connector_loaded
from schemas.tables import TableSpec, table_spec


class TableError(RuntimeError):
    """A table operation that cannot be done as asked."""


class SchemaMismatchError(TableError):
    """A DataFrame whose columns do not match the declared schema of the table it is written to."""


class ConcurrentWriteError(TableError):
    """Another writer committed to the table first and this commit could not be redone on top of it."""


MERGE_ATTEMPTS = 5  # a merge that loses the commit race to another writer is redone on the new snapshot


@dataclass(frozen=True)
class Commit:
    table: str
    version: int
    rows_written: int


@dataclass(frozen=True)
class HistoryEntry:
    version: int
    timestamp: datetime
    operation: str
    user_metadata: dict[str, Any]
    metrics: dict[str, Any]


def check_schema(df: DataFrame, spec: TableSpec) -> DataFrame:
    """The DataFrame's columns in the declared order, or SchemaMismatchError listing every difference."""
    declared = {f.name: f.dataType.simpleString() for f in spec.schema.fields}
    given = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    problems = [f"missing column {name} ({kind})" for name, kind in declared.items() if name not in given]
    problems += [f"unexpected column {name} ({kind})" for name, kind in given.items() if name not in declared]
    problems += [
        f"column {name} is {given[name]}, declared {kind}"
        for name, kind in declared.items()
        if name in given and given[name] != kind
    ]
    if problems:
        raise SchemaMismatchError(f"table {spec.name}: " + "; ".join(problems))
    return df.select(*declared)


_RUN_COLUMNS = ("run_id", "processed_at")  # which run last touched a row is not a change of its content


def _fingerprint(spec: TableSpec) -> Column:
    content = [c for c in spec.schema.names if c not in _RUN_COLUMNS]
    return F.sha2(F.to_json(F.struct(*content)), 256)


def _changes(new: DataFrame, current: DataFrame, spec: TableSpec, update_matched: bool) -> DataFrame:
    """Rows of `new` with a key not in `current` or, when updating, with content that differs from the current row."""
    keys = list(spec.keys)
    existing = current.select(*keys, _fingerprint(spec).alias("_current"))
    joined = new.withColumn("_new", _fingerprint(spec)).join(existing, keys, "left")
    changed = F.col("_current").isNull() | (F.lit(update_matched) & (F.col("_new") != F.col("_current")))
    return joined.where(changed).select(*new.columns)


def _parse_user_metadata(raw: Any) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return {"text": str(raw)}
    return parsed if isinstance(parsed, dict) else {"text": str(raw)}


class DeltaBackend(ABC):
    name: str

    def __init__(self, spark: SparkSession, root: str):
        self.spark = spark
        self.root = root

    def location(self, table: str) -> str:
        return f"{self.root.rstrip('/')}/tables/{table}"

    @abstractmethod
    def exists(self, table: str) -> bool: ...

    @abstractmethod
    def read(self, spec: TableSpec, version: int | None) -> DataFrame: ...

    @abstractmethod
    def write(self, spec: TableSpec, df: DataFrame, mode: str, user_metadata: str) -> Commit: ...

    @abstractmethod
    def merge(self, spec: TableSpec, df: DataFrame, update_matched: bool, user_metadata: str) -> Commit: ...

    @abstractmethod
    def version(self, table: str) -> int: ...

    @abstractmethod
    def history(self, table: str) -> list[HistoryEntry]: ...

    @abstractmethod
    def count(self, spec: TableSpec) -> int: ...


def _duplicate_key_error(spec: TableSpec, example: dict[str, Any]) -> TableError:
    key = ", ".join(f"{name}={example.get(name)!r}" for name in spec.keys)
    return TableError(
        f"merge into {spec.name}: the new rows hold the key ({key}) more than once; "
        "a merge source must have one row per key"
    )


class DeltaRsBackend(DeltaBackend):
    """delta-rs commits from the driver; Spark reads the snapshot's own file list."""

    name = "delta-rs"

    def __init__(self, spark: SparkSession, root: str):
        if "://" not in root:
            root = os.path.abspath(root)
        super().__init__(spark, root)

    def _table(self, table: str, version: int | None = None):
        from deltalake import DeltaTable

        return DeltaTable(self.location(table), version=version)

    def exists(self, table: str) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(self.location(table))

    def read(self, spec: TableSpec, version: int | None) -> DataFrame:
        files = self._table(spec.name, version).file_uris()
        if not files:
            return self.spark.createDataFrame([], spec.schema)
        return self.spark.read.schema(spec.schema).parquet(*files)

    def _to_arrow(self, spec: TableSpec, df: DataFrame) -> pa.Table:
        rows = df.toArrow()
        try:
            return rows.cast(to_arrow_schema(spec.schema, timezone="UTC"))
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as err:
            raise SchemaMismatchError(f"table {spec.name}: {err}") from None

    @staticmethod
    def _commit_properties(user_metadata: str):
        from deltalake import CommitProperties

        return CommitProperties(custom_metadata={"userMetadata": user_metadata})

    def write(self, spec: TableSpec, df: DataFrame, mode: str, user_metadata: str) -> Commit:
        return self._write_rows(spec, self._to_arrow(spec, df), mode, user_metadata)

    def _write_rows(self, spec: TableSpec, rows: pa.Table, mode: str, user_metadata: str) -> Commit:
        from deltalake import write_deltalake

        # into the table object when there is one: it then holds our commit's version, whatever others commit after
        target = self._table(spec.name) if self.exists(spec.name) else self.location(spec.name)
        with self._conflicts_named(spec, mode):
            write_deltalake(target, rows, mode=mode, commit_properties=self._commit_properties(user_metadata))
        version = target.version() if not isinstance(target, str) else self.version(spec.name)
        return Commit(spec.name, version, rows.num_rows)

    @contextmanager
    def _conflicts_named(self, spec: TableSpec, operation: str) -> Iterator[None]:
        """delta-rs's CommitFailedError as a ConcurrentWriteError naming the table and what lost the race."""
        from deltalake.exceptions import CommitFailedError

        try:
            yield
        except CommitFailedError as err:
            raise ConcurrentWriteError(
                f"{operation} into {spec.name} at {self.location(spec.name)}: a concurrent writer committed first "
                f"(now version {self.version(spec.name)}); nothing of this {operation} was committed. "
                f"delta-rs: {str(err).splitlines()[0]}"
            ) from err

    def merge(self, spec: TableSpec, df: DataFrame, update_matched: bool, user_metadata: str) -> Commit:
        rows = self._to_arrow(spec, df)
        counts = rows.group_by(list(spec.keys)).aggregate([([], "count_all")])
        repeated = counts.filter(pc.greater(counts["count_all"], 1))
        if repeated.num_rows:
            raise _duplicate_key_error(spec, repeated.slice(0, 1).drop_columns(["count_all"]).to_pylist()[0])
        # A merge is decided by key against the snapshot it reads, so when a concurrent writer commits first it is
        # safe to run it again on the new snapshot (a key the other writer inserted is then matched, not doubled).
        for attempt in range(MERGE_ATTEMPTS):
            try:
                with self._conflicts_named(spec, "merge"):
                    return self._merge_once(spec, rows, update_matched, user_metadata)
            except ConcurrentWriteError as err:
                lost = err
                time.sleep(random.uniform(0, 0.2 * (attempt + 1)))  # jitter: writers in lockstep would collide again
        raise ConcurrentWriteError(f"{lost} (tried {MERGE_ATTEMPTS} times)") from lost.__cause__

    def _merge_once(self, spec: TableSpec, rows: pa.Table, update_matched: bool, user_metadata: str) -> Commit:
        if not self.exists(spec.name):
            return self._write_rows(spec, rows, "append", user_metadata)
        predicate = " AND ".join(f"t.`{key}` = s.`{key}`" for key in spec.keys)
        table = self._table(spec.name)
        merger = table.merge(
            rows,
            predicate=predicate,
            source_alias="s",
            target_alias="t",
            commit_properties=self._commit_properties(user_metadata),
        )
        if update_matched:
            merger = merger.when_matched_update_all()
        metrics = merger.when_not_matched_insert_all().execute()
        written = metrics.get("num_target_rows_inserted", 0) + metrics.get("num_target_rows_updated", 0)
        return Commit(spec.name, table.version(), written)  # our commit's version, not a later writer's

    def version(self, table: str) -> int:
        return self._table(table).version()

    def history(self, table: str) -> list[HistoryEntry]:
        return [
            HistoryEntry(
                version=entry["version"],
                timestamp=datetime.fromtimestamp(entry["timestamp"] / 1000, tz=timezone.utc),
                operation=entry.get("operation", ""),
                user_metadata=_parse_user_metadata(entry.get("userMetadata")),
                metrics=entry.get("operationMetrics") or {},
            )
            for entry in self._table(table).history()
        ]

    def count(self, spec: TableSpec) -> int:
        actions = pa.table(self._table(spec.name).get_add_actions(flatten=True))
        if "num_records" in actions.column_names and actions["num_records"].null_count == 0:
            return int(pc.sum(actions["num_records"]).as_py() or 0)
        return self.read(spec, None).count()


class DeltaSparkBackend(DeltaBackend):
    """Spark's Delta connector: path tables, or Unity Catalog names when a catalog and schema are configured."""

    name = "delta-spark"
    _USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"

    def __init__(self, spark: SparkSession, root: str, catalog: str = "", schema: str = ""):
        super().__init__(spark, root)
        self.catalog, self.schema = catalog, schema

    def location(self, table: str) -> str:
        if self.catalog:
            return f"`{self.catalog}`.`{self.schema}`.`{table}`"
        return super().location(table)

    def _delta_table(self, table: str):
        from delta.tables import DeltaTable

        if self.catalog:
            return DeltaTable.forName(self.spark, self.location(table))
        return DeltaTable.forPath(self.spark, self.location(table))

    def exists(self, table: str) -> bool:
        if self.catalog:
            return self.spark.catalog.tableExists(f"{self.catalog}.{self.schema}.{table}")
        from delta.tables import DeltaTable

        return DeltaTable.isDeltaTable(self.spark, self.location(table))

    def read(self, spec: TableSpec, version: int | None) -> DataFrame:
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.table(self.location(spec.name)) if self.catalog else reader.load(self.location(spec.name))

    def write(self, spec: TableSpec, df: DataFrame, mode: str, user_metadata: str) -> Commit:
        writer = df.write.format("delta").mode(mode).option("userMetadata", user_metadata)
        if self.catalog:
            writer.saveAsTable(self.location(spec.name))
        else:
            writer.save(self.location(spec.name))
        last = self.history(spec.name)[0]
        return Commit(spec.name, last.version, int(last.metrics.get("numOutputRows", 0)))

    def merge(self, spec: TableSpec, df: DataFrame, update_matched: bool, user_metadata: str) -> Commit:
        # Materialise once: the duplicate-key check and the merge must not recompute the stage's work.
        df = df.persist()
        try:
            repeated = df.groupBy(*spec.keys).count().where(F.col("count") > 1).limit(1).collect()
            if repeated:
                raise _duplicate_key_error(spec, repeated[0].asDict())
            if not self.exists(spec.name):
                return self.write(spec, df, "append", user_metadata)
            condition = " AND ".join(f"t.`{key}` = s.`{key}`" for key in spec.keys)
            merger = self._delta_table(spec.name).alias("t").merge(df.alias("s"), condition)
            if update_matched:
                merger = merger.whenMatchedUpdateAll()
            previous = self.spark.conf.get(self._USER_METADATA_CONF, None)
            self.spark.conf.set(self._USER_METADATA_CONF, user_metadata)
            try:
                merger.whenNotMatchedInsertAll().execute()
            finally:
                if previous is None:
                    self.spark.conf.unset(self._USER_METADATA_CONF)
                else:
                    self.spark.conf.set(self._USER_METADATA_CONF, previous)
        finally:
            df.unpersist()
        last = self.history(spec.name)[0]
        metrics = last.metrics
        return Commit(
            spec.name,
            last.version,
            int(metrics.get("numTargetRowsInserted", 0)) + int(metrics.get("numTargetRowsUpdated", 0)),
        )

    def version(self, table: str) -> int:
        return self.history(table)[0].version

    def history(self, table: str) -> list[HistoryEntry]:
        rows = self._delta_table(table).history().orderBy(F.col("version").desc()).collect()
        return [
            HistoryEntry(
                version=row["version"],
                timestamp=row["timestamp"].replace(tzinfo=timezone.utc),
                operation=row["operation"] or "",
                user_metadata=_parse_user_metadata(row["userMetadata"]),
                metrics={k: v for k, v in (row["operationMetrics"] or {}).items()},
            )
            for row in rows
        ]

    def count(self, spec: TableSpec) -> int:
        return self.read(spec, None).count()


def choose_backend(spark: SparkSession, config: Config) -> DeltaBackend:
    lake = config["lake"]
    wanted = lake["backend"]
    if wanted == "auto":
        wanted = "delta-spark" if delta_connector_loaded(spark) else "delta-rs"
    if wanted == "delta-spark":
        if not delta_connector_loaded(spark):
            raise TableError(
                "lake.backend=delta-spark but the Delta connector's classes are not in this Spark session: "
                "start Spark with the delta-spark package (spark.jars.packages io.delta:delta-spark_<scala>:<version>) "
                "or set lake.backend=delta-rs"
            )
        return DeltaSparkBackend(spark, lake["root"], lake["catalog"], lake["schema"])
    if lake["catalog"]:
        raise TableError("Unity Catalog tables (lake.catalog) need the delta-spark backend")
    return DeltaRsBackend(spark, lake["root"])


class Lakehouse:
    """read / write / merge / version / history / as_of / register over the tables declared in schemas/."""

    def __init__(self, spark: SparkSession, backend: DeltaBackend):
        self.spark = spark
        self.backend = backend
        self._commit_tags: dict[str, str] = {}

    @classmethod
    def open(cls, spark: SparkSession, config: Config) -> "Lakehouse":
        return cls(spark, choose_backend(spark, config))

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def in_catalog(self) -> bool:
        """True when tables are Unity Catalog names rather than paths."""
        return bool(getattr(self.backend, "catalog", ""))

    @contextmanager
    def commit_tags(self, **tags: str) -> Iterator[None]:
        """Tags (MLflow run id, stage, ...) recorded as userMetadata on every commit made inside the block."""
        previous = self._commit_tags
        self._commit_tags = {**previous, **tags}
        try:
            yield
        finally:
            self._commit_tags = previous

    def _user_metadata(self) -> str:
        return json.dumps(self._commit_tags, sort_keys=True)

    def location(self, name: str) -> str:
        return self.backend.location(table_spec(name).name)

    @contextmanager
    def scratch(self, purpose: str) -> Iterator[str]:
        """A fresh folder under `<lake.root>/_scratch/` for files that executors write and Python workers read within
        one step (what a broadcast variable would carry, under Spark Connect too); removed when the block ends."""
        import fsspec

        location = f"{self.backend.root.rstrip('/')}/_scratch/{purpose}-{uuid.uuid4().hex}"
        try:
            yield location
        finally:
            filesystem, path = fsspec.core.url_to_fs(location)
            if filesystem.exists(path):
                filesystem.rm(path, recursive=True)

    def exists(self, name: str) -> bool:
        return self.backend.exists(table_spec(name).name)

    def _require(self, name: str) -> TableSpec:
        spec = table_spec(name)
        if not self.backend.exists(name):
            raise TableError(f"table {name} does not exist yet at {self.backend.location(name)}: run its stage first")
        return spec

    def read(self, name: str) -> DataFrame:
        """The current version of a table."""
        return self.backend.read(self._require(name), None)

    def read_or_empty(self, name: str) -> DataFrame:
        """The current version, or an empty frame with the declared schema if the table was never written."""
        spec = table_spec(name)
        return self.backend.read(spec, None) if self.backend.exists(name) else self.spark.createDataFrame([], spec.schema)

    def as_of(self, name: str, version: int) -> DataFrame:
        """Time travel: the table as it was at `version`."""
        return self.backend.read(self._require(name), version)

    def write(self, name: str, df: DataFrame, mode: str = "append") -> Commit:
        if mode not in ("append", "overwrite"):
            raise TableError(f"write mode must be append or overwrite, got {mode!r}")
        spec = table_spec(name)
        return self.backend.write(spec, check_schema(df, spec), mode, self._user_metadata())

    def merge(self, name: str, df: DataFrame, update_matched: bool = False, skip_unchanged: bool = True) -> Commit | None:
        """Upsert by the table's keys: new keys are inserted; existing keys are updated only if asked.

        With `skip_unchanged`, rows whose content equals the current row (run_id and processed_at aside) are left
        out, and when nothing is left no commit is made (None): reprocessing rows to the same outcome leaves the
        table's version alone. It reads the whole table, so callers that merge often into a big table of mostly
        new keys (llm_calls, batch by batch) turn it off.
        """
        spec = table_spec(name)
        df = check_schema(df, spec)
        if skip_unchanged and self.exists(name):
            df = _changes(df, self.read(name), spec, update_matched)
            if df.isEmpty():
                return None
        return self.backend.merge(spec, df, update_matched, self._user_metadata())

    def version(self, name: str) -> int | None:
        return self.backend.version(name) if self.exists(name) else None

    def history(self, name: str) -> list[HistoryEntry]:
        """Commits, newest first."""
        self._require(name)
        return self.backend.history(name)

    def count(self, name: str) -> int:
        return self.backend.count(self._require(name))

    def register(self, name: str) -> None:
        """Make the current version queryable in SQL by its plain name."""
        self.read(name).createOrReplaceTempView(name)

    def register_all(self) -> list[str]:
        from schemas.tables import TABLES

        names = [name for name in TABLES if self.exists(name)]
        for name in names:
            self.register(name)
        return names
