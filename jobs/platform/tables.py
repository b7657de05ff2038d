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

One commit protocol for both (`Lakehouse._commit`): the backends only adapt their engine's calls, one attempt each,
reporting a lost commit race as CommitConflict. The table layer stages the rows once, redoes appends and merges that
lose the race (MERGE_ATTEMPTS, with jitter), raises ConcurrentWriteError naming the table when they keep losing, and
takes a commit's version and row count from the history entry that carries the commit's own token
(`userMetadata.commit_id`), never from the newest entry, which may be another writer's.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema

from megascience.jobs.platform.config import Config
from megascience.jobs.platform.session import delta_connector_loaded
from megascience.jobs.platform.settings import LakeSettings
from megascience.schemas.tables import TableSpec, table_spec


class TableError(RuntimeError):
    """A table operation that cannot be done as asked."""


class SchemaMismatchError(TableError):
    """A DataFrame whose columns do not match the declared schema of the table it is written to."""


class ConcurrentWriteError(TableError):
    """Another writer committed to the table first and this commit could not be redone on top of it."""


class CommitConflict(Exception):
    """What a backend raises when one attempt lost the commit race: another writer committed first (or created the
    table) and nothing of this attempt was committed. The table layer redoes the attempt or names the table."""


MERGE_ATTEMPTS = 5  # a commit that loses the race to another writer is redone on the new snapshot, this many times


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
    commit_id: str | None = None  # the token the table layer gave the commit, to find its own version


@dataclass(frozen=True)
class Operation:
    """One kind of commit and how the table layer treats losing the commit race with it.

    - append: blind (reads nothing), so it is redone as it is;
    - merge: decided by key against the snapshot it reads, so it is redone on the new snapshot (a key another writer
      inserted meanwhile is then matched, not doubled); into a table that does not exist yet it creates the table,
      and a concurrent creation makes that attempt a conflict, redone as a merge;
    - overwrite: the caller computed the whole content from a snapshot that is no longer current: never redone.
    """

    name: str
    retried: bool


APPEND, MERGE, OVERWRITE = Operation("append", True), Operation("merge", True), Operation("overwrite", False)
COMMIT_ID = "commit_id"  # the userMetadata key of the token


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


def history_entry(version: int, timestamp_ms: int, operation: str, user_metadata: Any, metrics: dict | None) -> HistoryEntry:
    """One commit as both backends report it: the commit time from epoch milliseconds (UTC, whatever the session's or
    the machine's time zone), userMetadata parsed (JSON; other text kept as {"text": ...}) with our token apart."""
    parsed: dict[str, Any] = {}
    if user_metadata:
        try:
            parsed = json.loads(user_metadata)
        except (TypeError, json.JSONDecodeError):
            parsed = {"text": str(user_metadata)}
        if not isinstance(parsed, dict):
            parsed = {"text": str(user_metadata)}
    commit_id = parsed.pop(COMMIT_ID, None)
    return HistoryEntry(
        version=int(version),
        timestamp=datetime.fromtimestamp(timestamp_ms / 1000, tz=timezone.utc),
        operation=operation or "",
        user_metadata=parsed,
        metrics=dict(metrics or {}),
        commit_id=commit_id,
    )


def _duplicate_key_error(spec: TableSpec, example: dict[str, Any]) -> TableError:
    key = ", ".join(f"{name}={example.get(name)!r}" for name in spec.keys)
    return TableError(
        f"merge into {spec.name}: the new rows hold the key ({key}) more than once; "
        "a merge source must have one row per key"
    )


class DeltaBackend(ABC):
    """One Delta engine's calls, adapted: every commit method makes one attempt and raises CommitConflict when it
    loses the race. Retries, version bookkeeping and errors are the table layer's (`Lakehouse`), the same for all."""

    name: str
    # Operation metrics, as this engine names them, that count the rows a commit wrote.
    written_metrics: dict[str, tuple[str, ...]] = {}

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
    def staged(self, spec: TableSpec, df: DataFrame) -> Any:
        """A context manager giving the rows to commit in the form this engine takes, computed once for all attempts."""

    @contextmanager
    def staged_files(self, spec: TableSpec, uris: list[str]) -> Iterator[Any]:
        """Like `staged`, for parquet files of the table's rows (written by executors)."""
        yield self.spark.read.schema(spec.schema).parquet(*uris)

    @abstractmethod
    def repeated_key(self, spec: TableSpec, rows: Any) -> dict[str, Any] | None:
        """One key held by more than one of the staged rows, or None."""

    @abstractmethod
    def append(self, spec: TableSpec, rows: Any, user_metadata: str, create: bool = False) -> None:
        """Add the rows; with `create`, only if the table does not exist yet (else CommitConflict)."""

    @abstractmethod
    def overwrite(self, spec: TableSpec, rows: Any, user_metadata: str) -> None: ...

    @abstractmethod
    def merge(self, spec: TableSpec, rows: Any, update_matched: bool, user_metadata: str) -> None: ...

    @abstractmethod
    def history(self, table: str, limit: int | None = None) -> list[HistoryEntry]:
        """Commits, newest first (the newest `limit` of them)."""

    @abstractmethod
    def version(self, table: str) -> int: ...

    @abstractmethod
    def count(self, spec: TableSpec) -> int: ...

    def rows_written(self, entry: HistoryEntry) -> int:
        """Rows a commit added or changed, from its operation metrics."""
        names = self.written_metrics.get(entry.operation.split(" ")[0], ())
        return sum(int(entry.metrics.get(name) or 0) for name in names)


class DeltaRsBackend(DeltaBackend):
    """delta-rs commits from the driver; Spark reads the snapshot's own file list."""

    name = "delta-rs"
    written_metrics = {"WRITE": ("num_added_rows",), "MERGE": ("num_target_rows_inserted", "num_target_rows_updated")}

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

    @contextmanager
    def staged(self, spec: TableSpec, df: DataFrame) -> Iterator[pa.Table]:
        try:
            rows = df.toArrow().cast(to_arrow_schema(spec.schema, timezone="UTC"))
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as err:
            raise SchemaMismatchError(f"table {spec.name}: {err}") from None
        yield rows

    @contextmanager
    def staged_files(self, spec: TableSpec, uris: list[str]) -> Iterator[pa.Table]:
        # straight from the files, without a Spark job: a chunk of LLM calls costs its own size to commit
        from fsspec.core import url_to_fs

        filesystem, _ = url_to_fs(uris[0])
        schema = to_arrow_schema(spec.schema, timezone="UTC")
        yield pa.concat_tables([pq.read_table(filesystem.open(uri, "rb")).cast(schema) for uri in uris])

    def repeated_key(self, spec: TableSpec, rows: pa.Table) -> dict[str, Any] | None:
        counts = rows.group_by(list(spec.keys)).aggregate([([], "count_all")])
        repeated = counts.filter(pc.greater(counts["count_all"], 1))
        return repeated.slice(0, 1).drop_columns(["count_all"]).to_pylist()[0] if repeated.num_rows else None

    @staticmethod
    def _commit_properties(user_metadata: str):
        from deltalake import CommitProperties

        return CommitProperties(custom_metadata={"userMetadata": user_metadata})

    @staticmethod
    def is_conflict(err: BaseException) -> bool:
        """delta-rs's words for a lost commit race: a commit failed on a newer version, or a table created first."""
        from deltalake.exceptions import CommitFailedError

        return isinstance(err, CommitFailedError) or "A table already exists" in str(err)

    @contextmanager
    def _conflicts(self) -> Iterator[None]:
        try:
            yield
        except Exception as err:
            if self.is_conflict(err):
                raise CommitConflict(f"delta-rs: {str(err).splitlines()[0]}") from err
            raise

    def _write(self, spec: TableSpec, rows: pa.Table, mode: str, user_metadata: str) -> None:
        from deltalake import write_deltalake

        with self._conflicts():
            write_deltalake(self.location(spec.name), rows, mode=mode, commit_properties=self._commit_properties(user_metadata))

    def append(self, spec: TableSpec, rows: pa.Table, user_metadata: str, create: bool = False) -> None:
        self._write(spec, rows, "error" if create else "append", user_metadata)

    def overwrite(self, spec: TableSpec, rows: pa.Table, user_metadata: str) -> None:
        self._write(spec, rows, "overwrite", user_metadata)

    def merge(self, spec: TableSpec, rows: pa.Table, update_matched: bool, user_metadata: str) -> None:
        predicate = " AND ".join(f"t.`{key}` = s.`{key}`" for key in spec.keys)
        with self._conflicts():
            merger = self._table(spec.name).merge(
                rows,
                predicate=predicate,
                source_alias="s",
                target_alias="t",
                commit_properties=self._commit_properties(user_metadata),
            )
            if update_matched:
                merger = merger.when_matched_update_all()
            merger.when_not_matched_insert_all().execute()

    def version(self, table: str) -> int:
        return self._table(table).version()

    def history(self, table: str, limit: int | None = None) -> list[HistoryEntry]:
        return [
            history_entry(e["version"], e["timestamp"], e.get("operation", ""), e.get("userMetadata"), e.get("operationMetrics"))
            for e in self._table(table).history(limit)
        ]

    def count(self, spec: TableSpec) -> int:
        actions = pa.table(self._table(spec.name).get_add_actions(flatten=True))
        if "num_records" in actions.column_names and actions["num_records"].null_count == 0:
            return int(pc.sum(actions["num_records"]).as_py() or 0)
        return self.read(spec, None).count()


class DeltaSparkBackend(DeltaBackend):
    """Spark's Delta connector: path tables, or Unity Catalog names when a catalog and schema are configured; also
    under Spark Connect (delta-spark's Python API speaks Delta Connect there)."""

    name = "delta-spark"
    written_metrics = {
        "WRITE": ("numOutputRows",),
        "CREATE": ("numOutputRows",),  # CREATE TABLE AS SELECT, CREATE OR REPLACE TABLE AS SELECT
        "REPLACE": ("numOutputRows",),
        "MERGE": ("numTargetRowsInserted", "numTargetRowsUpdated"),
    }
    _USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
    _session_conf = threading.Lock()  # a merge takes its userMetadata from the session: one merge at a time sets it
    # The connector's words for a lost race (delta.exceptions; the same names under Delta Connect), and for a table
    # another writer created first.
    CONFLICTS = (
        "ConcurrentAppendException",
        "ConcurrentDeleteReadException",
        "ConcurrentDeleteDeleteException",
        "ConcurrentTransactionException",
        "ConcurrentWriteException",
        "MetadataChangedException",
        "ProtocolChangedException",
        "DeltaConcurrentModificationException",
    )
    ALREADY_EXISTS = ("DELTA_PATH_EXISTS", "TABLE_OR_VIEW_ALREADY_EXISTS", "PATH_ALREADY_EXISTS")

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

    @contextmanager
    def staged(self, spec: TableSpec, df: DataFrame) -> Iterator[DataFrame]:
        # materialised once: the duplicate-key check and every attempt must not recompute the stage's work
        df = df.persist()
        try:
            yield df
        finally:
            df.unpersist()

    def repeated_key(self, spec: TableSpec, rows: DataFrame) -> dict[str, Any] | None:
        repeated = rows.groupBy(*spec.keys).count().where(F.col("count") > 1).drop("count").limit(1).collect()
        return repeated[0].asDict() if repeated else None

    @classmethod
    def is_conflict(cls, err: BaseException) -> bool:
        """The connector's exception for a lost race, by class name (classic and Connect raise different classes of
        the same names) or, for a table created first, by error condition."""
        if any(klass.__name__ in cls.CONFLICTS for klass in type(err).__mro__):
            return True
        condition = getattr(err, "getCondition", lambda: None)() or ""
        return condition in cls.ALREADY_EXISTS

    @contextmanager
    def _conflicts(self) -> Iterator[None]:
        try:
            yield
        except Exception as err:
            if self.is_conflict(err):
                raise CommitConflict(f"delta-spark: {type(err).__name__}: {str(err).splitlines()[0]}") from err
            raise

    def _save(self, rows: DataFrame, table: str, mode: str, user_metadata: str) -> None:
        writer = rows.write.format("delta").mode(mode).option("userMetadata", user_metadata)
        with self._conflicts():
            if self.catalog:
                writer.saveAsTable(self.location(table))
            else:
                writer.save(self.location(table))

    def append(self, spec: TableSpec, rows: DataFrame, user_metadata: str, create: bool = False) -> None:
        self._save(rows, spec.name, "errorifexists" if create else "append", user_metadata)

    def overwrite(self, spec: TableSpec, rows: DataFrame, user_metadata: str) -> None:
        self._save(rows, spec.name, "overwrite", user_metadata)

    def merge(self, spec: TableSpec, rows: DataFrame, update_matched: bool, user_metadata: str) -> None:
        condition = " AND ".join(f"t.`{key}` = s.`{key}`" for key in spec.keys)
        merger = self._delta_table(spec.name).alias("t").merge(rows.alias("s"), condition)
        if update_matched:
            merger = merger.whenMatchedUpdateAll()
        with self._session_conf:
            previous = self.spark.conf.get(self._USER_METADATA_CONF, None)
            self.spark.conf.set(self._USER_METADATA_CONF, user_metadata)
            try:
                with self._conflicts():
                    merger.whenNotMatchedInsertAll().execute()
            finally:
                if previous is None:
                    self.spark.conf.unset(self._USER_METADATA_CONF)
                else:
                    self.spark.conf.set(self._USER_METADATA_CONF, previous)

    def version(self, table: str) -> int:
        return self.history(table, limit=1)[0].version

    @staticmethod
    def history_rows(history: DataFrame) -> DataFrame:
        """DESCRIBE HISTORY's columns that HistoryEntry holds, the commit time as epoch milliseconds (collected as a
        timestamp it would come back naive, in this machine's time zone)."""
        return history.select(
            "version",
            F.unix_millis("timestamp").alias("timestamp_ms"),
            "operation",
            "userMetadata",
            "operationMetrics",
        ).orderBy(F.col("version").desc())

    def history(self, table: str, limit: int | None = None) -> list[HistoryEntry]:
        rows = self.history_rows(self._delta_table(table).history(limit))
        return [
            history_entry(r["version"], r["timestamp_ms"], r["operation"], r["userMetadata"], r["operationMetrics"])
            for r in rows.collect()
        ]

    def count(self, spec: TableSpec) -> int:
        return self.read(spec, None).count()


def choose_backend(spark: SparkSession, config: Config) -> DeltaBackend:
    lake = LakeSettings.of(config)
    wanted = lake.backend
    if wanted == "auto":
        wanted = "delta-spark" if delta_connector_loaded(spark) else "delta-rs"
    if wanted == "delta-spark":
        if not delta_connector_loaded(spark):
            raise TableError(
                "lake.backend=delta-spark but the Delta connector's classes are not in this Spark session: "
                "start Spark with the delta-spark package (spark.jars.packages io.delta:delta-spark_<scala>:<version>) "
                "or set lake.backend=delta-rs"
            )
        return DeltaSparkBackend(spark, lake.root, lake.catalog, lake.schema)
    if lake.catalog:
        raise TableError("Unity Catalog tables (lake.catalog) need the delta-spark backend")
    return DeltaRsBackend(spark, lake.root)


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

    def _user_metadata(self, commit_id: str) -> str:
        return json.dumps({**self._commit_tags, COMMIT_ID: commit_id}, sort_keys=True)

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

    def read(self, name: str, keys: DataFrame | None = None) -> DataFrame:
        """The current version of a table; with `keys` (a frame of key columns), only the rows of those keys."""
        return self._resolved(self._require(name), None, keys)

    def read_or_empty(self, name: str, keys: DataFrame | None = None) -> DataFrame:
        """The current version, or an empty frame with the declared schema if the table was never written."""
        spec = table_spec(name)
        return self._resolved(spec, None, keys) if self.backend.exists(name) else self.spark.createDataFrame([], spec.schema)

    def as_of(self, name: str, version: int) -> DataFrame:
        """Time travel: the table as it was at `version`."""
        return self._resolved(self._require(name), version)

    def _resolved(self, spec: TableSpec, version: int | None, keys: DataFrame | None = None) -> DataFrame:
        """The table's rows (of `keys` only, if given), each key of an append-only table resolved to one row."""
        rows = self.backend.read(spec, version)
        if keys is not None:
            rows = rows.join(keys.select(*spec.keys).distinct(), list(spec.keys), "left_semi")
        if not spec.append_only:
            return rows
        order = Window.partitionBy(*spec.keys).orderBy(*[F.expr(e).desc() for e in spec.precedence])
        return rows.withColumn("_precedence", F.row_number().over(order)).where("_precedence = 1").drop("_precedence")

    def write(self, name: str, df: DataFrame, mode: str = "append") -> Commit:
        if mode not in ("append", "overwrite"):
            raise TableError(f"write mode must be append or overwrite, got {mode!r}")
        spec = table_spec(name)
        operation = APPEND if mode == "append" else OVERWRITE
        return self._commit(spec, self.backend.staged(spec, check_schema(df, spec)), operation, update_matched=False)

    def append_files(self, name: str, uris: list[str]) -> Commit:
        """Commit parquet files of rows (written by executors with the table's schema) as one blind append:
        concurrent appends do not conflict, and the cost depends on the files, not on the table's size."""
        spec = table_spec(name)
        return self._commit(spec, self.backend.staged_files(spec, uris), APPEND, update_matched=False)

    def merge(self, name: str, df: DataFrame, update_matched: bool = False, skip_unchanged: bool = True) -> Commit | None:
        """Upsert by the table's keys: new keys are inserted; existing keys are updated only if asked.

        With `skip_unchanged`, rows whose content equals the current row (run_id and processed_at aside) are left
        out, and when nothing is left no commit is made (None): reprocessing rows to the same outcome leaves the
        table's version alone. It reads the whole table, so callers that merge often into a big table of mostly
        new keys turn it off.
        """
        spec = table_spec(name)
        if spec.append_only:
            raise TableError(f"{name} is append-only (its reads resolve repeated keys): append to it, never merge")
        df = check_schema(df, spec)
        if skip_unchanged and self.exists(name):
            df = _changes(df, self.read(name), spec, update_matched)
            if df.isEmpty():
                return None
        return self._commit(spec, self.backend.staged(spec, df), MERGE, update_matched)

    # --- the commit protocol, the same for every backend -------------------------------------------------------

    def _commit(self, spec: TableSpec, staging: Any, operation: Operation, update_matched: bool) -> Commit:
        """Stage the rows once (`staging`: the backend's context manager giving them), make attempts until one wins the
        commit race (only operations that may be redone are retried), then find this commit's own version and row
        count in the history by its token."""
        commit_id = uuid.uuid4().hex
        user_metadata = self._user_metadata(commit_id)
        with staging as rows:
            if operation is MERGE and (repeated := self.backend.repeated_key(spec, rows)) is not None:
                raise _duplicate_key_error(spec, repeated)
            attempts = MERGE_ATTEMPTS if operation.retried else 1
            for attempt in range(attempts):
                try:
                    self._attempt(spec, rows, operation, update_matched, user_metadata)
                    break
                except CommitConflict as conflict:
                    lost = conflict
                    if attempt + 1 < attempts:
                        time.sleep(random.uniform(0, 0.2 * (attempt + 1)))  # jitter: writers in lockstep collide again
            else:
                raise self._lost_race(spec, operation, lost, attempts) from lost.__cause__
        entry = self._own_commit(spec.name, commit_id)
        return Commit(spec.name, entry.version, self.backend.rows_written(entry))

    def _attempt(self, spec: TableSpec, rows: Any, operation: Operation, update_matched: bool, user_metadata: str) -> None:
        if operation is OVERWRITE:
            self.backend.overwrite(spec, rows, user_metadata)
        elif operation is APPEND:
            self.backend.append(spec, rows, user_metadata)
        elif self.backend.exists(spec.name):
            self.backend.merge(spec, rows, update_matched, user_metadata)
        else:  # the first merge creates the table; if another writer creates it first, this attempt is redone
            self.backend.append(spec, rows, user_metadata, create=True)

    def _lost_race(self, spec: TableSpec, operation: Operation, conflict: CommitConflict, attempts: int) -> ConcurrentWriteError:
        now = self.backend.version(spec.name) if self.backend.exists(spec.name) else None
        tried = f" (tried {attempts} times)" if attempts > 1 else ""
        return ConcurrentWriteError(
            f"{operation.name} into {spec.name} at {self.backend.location(spec.name)}: a concurrent writer committed "
            f"first (now version {now}); nothing of this {operation.name} was committed. {conflict}{tried}"
        )

    def _own_commit(self, table: str, commit_id: str) -> HistoryEntry:
        """The history entry of the commit holding `commit_id`: newer commits by other writers may lie above it."""
        for limit in (16, None):
            entries = self.backend.history(table, limit)
            found = next((entry for entry in entries if entry.commit_id == commit_id), None)
            if found is not None:
                return found
        raise TableError(f"{table}: the commit {commit_id} is not in the table's history")

    def version(self, name: str) -> int | None:
        return self.backend.version(name) if self.exists(name) else None

    def history(self, name: str) -> list[HistoryEntry]:
        """Commits, newest first."""
        self._require(name)
        return self.backend.history(name)

    def count(self, name: str) -> int:
        spec = self._require(name)
        return self.read(name).count() if spec.append_only else self.backend.count(spec)

    def status(self) -> list[dict[str, Any]]:
        """Every declared table: what it holds and, once it exists, its rows, version, last operation and commit time
        and the MLflow run that made that version (None while it does not exist)."""
        from megascience.schemas.tables import TABLES

        rows = []
        for name, spec in TABLES.items():
            row: dict[str, Any] = {"table": name, "holds": spec.description, "exists": self.exists(name)}
            if row["exists"]:
                last = self.history(name)[0]
                row.update(rows=self.count(name), version=last.version, operation=last.operation,
                           committed=last.timestamp, run_id=last.user_metadata.get("mlflow_run_id"))
            else:
                row.update(rows=None, version=None, operation=None, committed=None, run_id=None)
            rows.append(row)
        return rows

    def register(self, name: str) -> None:
        """Make the current version queryable in SQL by its plain name."""
        self.read(name).createOrReplaceTempView(name)

    def register_all(self) -> list[str]:
        from megascience.schemas.tables import TABLES

        names = [name for name in TABLES if self.exists(name)]
        for name in names:
            self.register(name)
        return names
