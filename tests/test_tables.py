"""The table layer on real Delta tables: both backends share these tests; delta-spark runs where its jars load."""

import glob
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType

from megascience.jobs.platform.session import delta_connector_loaded
from megascience.jobs.platform.tables import (
    CommitConflict,
    DeltaRsBackend,
    DeltaSparkBackend,
    Lakehouse,
    SchemaMismatchError,
    TableError,
    history_entry,
)
from megascience.schemas import tables as table_schemas
from megascience.schemas.tables import TableSpec

TOY = TableSpec(
    name="toy",
    keys=("key",),
    description="test table",
    schema=StructType(
        [
            StructField("key", StringType(), False),
            StructField("value", LongType(), True),
            StructField("note", StringType(), True),
        ]
    ),
)


@pytest.fixture(params=["delta-rs", "delta-spark"])
def toy_lake(request, spark, lake_root, monkeypatch):
    monkeypatch.setitem(table_schemas.TABLES, "toy", TOY)
    if request.param == "delta-spark":
        if not delta_connector_loaded(spark):
            pytest.skip(
                "delta-spark backend not tested: the Delta connector's jars are not in this Spark session "
                "(Maven Central is unreachable here); set MEGASCIENCE_TEST_DELTA_PACKAGES=1 where they resolve"
            )
        return Lakehouse(spark, DeltaSparkBackend(spark, str(lake_root)))
    return Lakehouse(spark, DeltaRsBackend(spark, str(lake_root)))


def rows(spark, *items):
    return spark.createDataFrame(list(items), TOY.schema)


def contents(df):
    return sorted(tuple(r) for r in df.collect())


def test_write_read_versions_and_time_travel(spark, toy_lake):
    assert not toy_lake.exists("toy") and toy_lake.version("toy") is None
    first = toy_lake.write("toy", rows(spark, ("a", 1, None), ("b", 2, "x")))
    assert (first.version, first.rows_written) == (0, 2)
    second = toy_lake.write("toy", rows(spark, ("c", 3, None)), mode="append")
    assert second.version == 1
    assert contents(toy_lake.read("toy")) == [("a", 1, None), ("b", 2, "x"), ("c", 3, None)]
    toy_lake.write("toy", rows(spark, ("z", 26, None)), mode="overwrite")
    assert contents(toy_lake.read("toy")) == [("z", 26, None)]
    assert contents(toy_lake.as_of("toy", 0)) == [("a", 1, None), ("b", 2, "x")]
    assert toy_lake.count("toy") == 1 and toy_lake.version("toy") == 2


def test_every_commit_records_the_run_in_user_metadata(spark, toy_lake):
    with toy_lake.commit_tags(mlflow_run_id="run-123", stage="test"):
        toy_lake.write("toy", rows(spark, ("a", 1, None)))
    toy_lake.write("toy", rows(spark, ("b", 1, None)))
    newest, oldest = toy_lake.history("toy")
    assert oldest.user_metadata == {"mlflow_run_id": "run-123", "stage": "test"}
    assert newest.user_metadata == {} and newest.version == 1


def test_merge_inserts_new_keys_only_and_is_idempotent(spark, toy_lake):
    toy_lake.merge("toy", rows(spark, ("a", 1, None), ("b", 2, None)))
    commit = toy_lake.merge("toy", rows(spark, ("b", 20, "changed"), ("c", 3, None)))
    assert commit.rows_written == 1
    assert contents(toy_lake.read("toy")) == [("a", 1, None), ("b", 2, None), ("c", 3, None)]
    toy_lake.merge("toy", rows(spark, ("b", 20, "changed")), update_matched=True)
    assert contents(toy_lake.read("toy")) == [("a", 1, None), ("b", 20, "changed"), ("c", 3, None)]


def test_merge_refuses_a_source_with_repeated_keys(spark, toy_lake):
    toy_lake.write("toy", rows(spark, ("a", 1, None)))
    with pytest.raises(TableError, match=r"hold the key \(key='b'\) more than once"):
        toy_lake.merge("toy", rows(spark, ("b", 1, None), ("b", 2, None)))
    assert contents(toy_lake.read("toy")) == [("a", 1, None)]


def test_schema_is_enforced_on_write_never_cast(spark, toy_lake):
    wrong_type = rows(spark, ("a", 1, None)).withColumn("value", F.col("value").cast(IntegerType()))
    with pytest.raises(SchemaMismatchError, match="column value is int, declared bigint"):
        toy_lake.write("toy", wrong_type)
    with pytest.raises(SchemaMismatchError, match="missing column note"):
        toy_lake.write("toy", rows(spark, ("a", 1, None)).drop("note"))
    with pytest.raises(SchemaMismatchError, match="unexpected column extra"):
        toy_lake.write("toy", rows(spark, ("a", 1, None)).withColumn("extra", F.lit(1)))
    reordered = rows(spark, ("a", 1, "n")).select("note", "value", "key")
    toy_lake.write("toy", reordered)
    assert contents(toy_lake.read("toy")) == [("a", 1, "n")]


def test_null_in_a_required_column_is_refused(spark, toy_lake):
    nullable = StructType([StructField(f.name, f.dataType, True) for f in TOY.schema.fields])
    with pytest.raises(Exception, match="(?i)null"):
        toy_lake.write("toy", spark.createDataFrame([(None, 1, None)], nullable))
    assert not toy_lake.exists("toy") or toy_lake.count("toy") == 0


def test_write_modes_and_unknown_tables(spark, toy_lake):
    with pytest.raises(TableError, match="write mode"):
        toy_lake.write("toy", rows(spark, ("a", 1, None)), mode="upsert")
    with pytest.raises(KeyError, match="unknown table 'nope'"):
        toy_lake.read("nope")
    with pytest.raises(TableError, match="does not exist yet"):
        toy_lake.read("toy")
    assert toy_lake.read_or_empty("toy").count() == 0


def test_tables_are_queryable_by_name_in_sql(spark, toy_lake):
    toy_lake.write("toy", rows(spark, ("a", 1, None), ("b", 2, None)))
    assert "toy" in toy_lake.register_all()
    assert spark.sql("select sum(value) as total from toy").first()["total"] == 3


def test_delta_rs_reads_the_snapshot_not_the_directory(spark, lake_root, monkeypatch):
    """After an overwrite the old parquet files stay on disk; globbing them would bring deleted rows back."""
    monkeypatch.setitem(table_schemas.TABLES, "toy", TOY)
    lake = Lakehouse(spark, DeltaRsBackend(spark, str(lake_root)))
    lake.write("toy", rows(spark, ("old", 1, None)))
    lake.write("toy", rows(spark, ("new", 2, None)), mode="overwrite")
    on_disk = glob.glob(str(lake_root / "tables" / "toy" / "*.parquet"))
    assert len(on_disk) == 2
    assert spark.read.parquet(*on_disk).count() == 2  # what a directory read would see
    assert contents(lake.read("toy")) == [("new", 2, None)]


def test_delta_rs_tables_are_standard_delta(spark, lake_root, monkeypatch):
    """What the Delta connector reads: protocol 1/2, the declared schema, userMetadata in commitInfo."""
    monkeypatch.setitem(table_schemas.TABLES, "toy", TOY)
    lake = Lakehouse(spark, DeltaRsBackend(spark, str(lake_root)))
    with lake.commit_tags(mlflow_run_id="r1"):
        lake.write("toy", rows(spark, ("a", 1, None)))
    table = DeltaTable(str(lake_root / "tables" / "toy"))
    assert (table.protocol().min_reader_version, table.protocol().min_writer_version) == (1, 2)
    assert [(f.name, f.nullable) for f in table.schema().fields] == [("key", False), ("value", True), ("note", True)]
    log = (lake_root / "tables" / "toy" / "_delta_log" / "00000000000000000000.json").read_text().splitlines()
    commit_info = json.loads(log[0])["commitInfo"]
    assert json.loads(commit_info["userMetadata"]) == {"mlflow_run_id": "r1", "commit_id": lake.history("toy")[0].commit_id}


# --- the commit protocol: shared by both backends, their adapters' own parts tested here -----------------------------


def test_a_commit_reports_its_own_version_and_rows_found_by_its_token(spark, toy_lake):
    first = toy_lake.merge("toy", rows(spark, ("a", 1, None), ("b", 2, None)))
    second = toy_lake.merge("toy", rows(spark, ("b", 20, "new"), ("c", 3, None)), update_matched=True)
    third = toy_lake.write("toy", rows(spark, ("d", 4, None)), mode="append")
    assert [(c.version, c.rows_written) for c in (first, second, third)] == [(0, 2), (1, 2), (2, 1)]
    history = toy_lake.history("toy")
    tokens = [entry.commit_id for entry in history]
    assert len(set(tokens)) == 3 and all(len(token) == 32 for token in tokens)
    assert all("commit_id" not in entry.user_metadata for entry in history)  # kept apart from the run's tags


def test_history_times_are_utc_instants_whatever_the_session_time_zone(spark):
    """The connector's DESCRIBE HISTORY gives a timestamp column: collected as such it comes back naive, in the
    machine's zone. The adapter asks for epoch milliseconds, which history_entry turns into a UTC instant, as delta-rs
    reports them."""
    from datetime import datetime, timezone

    from pyspark.sql.types import MapType, TimestampType

    instant = datetime(2026, 3, 29, 1, 30, 15, tzinfo=timezone.utc)  # a daylight-saving change in Europe
    described = StructType(
        [
            StructField("version", LongType()),
            StructField("timestamp", TimestampType()),
            StructField("operation", StringType()),
            StructField("userMetadata", StringType()),
            StructField("operationMetrics", MapType(StringType(), StringType())),
        ]
    )
    zone = spark.conf.get("spark.sql.session.timeZone")
    try:
        for session_zone in ("America/Los_Angeles", "Asia/Kolkata"):
            spark.conf.set("spark.sql.session.timeZone", session_zone)
            history = spark.createDataFrame(
                [(3, instant, "MERGE", '{"stage": "x", "commit_id": "t3"}', {"numTargetRowsInserted": "2", "numTargetRowsUpdated": "1"})],
                described,
            )
            (row,) = DeltaSparkBackend.history_rows(history).collect()
            entry = history_entry(row["version"], row["timestamp_ms"], row["operation"], row["userMetadata"], row["operationMetrics"])
            assert entry.timestamp == instant and entry.timestamp.tzinfo == timezone.utc, session_zone
            assert (entry.commit_id, entry.user_metadata) == ("t3", {"stage": "x"})
            assert DeltaSparkBackend(spark, "unused").rows_written(entry) == 3
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)


def test_rows_written_from_each_engine_s_metric_names(spark):
    connector, delta_rs = DeltaSparkBackend(spark, "unused"), DeltaRsBackend(spark, "unused")
    write = history_entry(0, 0, "WRITE", None, {"numOutputRows": "7", "numFiles": "1"})
    ctas = history_entry(0, 0, "CREATE TABLE AS SELECT", None, {"numOutputRows": "5"})
    assert (connector.rows_written(write), connector.rows_written(ctas)) == (7, 5)
    rs_write = history_entry(0, 0, "WRITE", None, {"num_added_rows": 4, "num_added_files": 1})
    rs_merge = history_entry(1, 0, "MERGE", None, {"num_target_rows_inserted": 1, "num_target_rows_updated": 2, "num_output_rows": 9})
    assert (delta_rs.rows_written(rs_write), delta_rs.rows_written(rs_merge)) == (4, 3)


def test_each_adapter_knows_its_engine_s_lost_race(spark, lake_root, monkeypatch):
    """What each engine raises when another writer committed first is a CommitConflict; other errors are not."""
    from delta.exceptions import base as delta_errors
    from deltalake.exceptions import CommitFailedError

    for name in DeltaSparkBackend.CONFLICTS:
        assert DeltaSparkBackend.is_conflict(getattr(delta_errors, name)(message="concurrent update")), name
    assert not DeltaSparkBackend.is_conflict(ValueError("ConcurrentAppendException in a message is not the class"))
    assert DeltaRsBackend.is_conflict(CommitFailedError("Transaction failed: version already exists"))
    monkeypatch.setitem(table_schemas.TABLES, "toy", TOY)
    backend = DeltaRsBackend(spark, str(lake_root))
    lake = Lakehouse(spark, backend)
    lake.write("toy", rows(spark, ("a", 1, None)))
    with backend.staged(TOY, rows(spark, ("b", 2, None))) as staged, pytest.raises(CommitConflict, match="already exists"):
        backend.append(TOY, staged, "{}", create=True)  # a table another writer created first
    assert not DeltaRsBackend.is_conflict(ValueError("disk full"))


LOG = TableSpec(
    name="toy_log",
    keys=("key",),
    description="append-only test table",
    schema=TOY.schema,
    precedence=("note = 'ok'", "value"),
)


def test_an_append_only_table_takes_chunk_files_and_resolves_each_key_on_read(spark, toy_lake, monkeypatch, tmp_path):
    monkeypatch.setitem(table_schemas.TABLES, "toy_log", LOG)
    arrow_schema = rows(spark, ("x", 0, None)).toArrow().schema
    files = []
    for i, chunk in enumerate(
        [
            [("a", 1, "error"), ("b", 1, "ok")],
            [("a", 2, "ok"), ("b", 2, "error")],  # a: a later success wins; b: a success beats a later failure
            [("c", 1, "error"), ("c", 3, "error")],  # no success: the highest value (the latest attempt) wins
        ]
    ):
        path = tmp_path / f"chunk-{i}.parquet"
        pq.write_table(pa.Table.from_pylist([dict(zip(("key", "value", "note"), r)) for r in chunk], schema=arrow_schema), path)
        files.append(str(path))
    first = toy_lake.append_files("toy_log", files[:2])
    second = toy_lake.append_files("toy_log", files[2:])
    assert (first.version, first.rows_written, second.version, second.rows_written) == (0, 4, 1, 2)
    assert contents(toy_lake.read("toy_log")) == [("a", 2, "ok"), ("b", 1, "ok"), ("c", 3, "error")]
    assert toy_lake.count("toy_log") == 3  # keys, not the six rows appended
    assert contents(toy_lake.read("toy_log", keys=spark.createDataFrame([("c",), ("z",)], "key string"))) == [("c", 3, "error")]
    assert contents(toy_lake.as_of("toy_log", 0)) == [("a", 2, "ok"), ("b", 1, "ok")]
    with pytest.raises(TableError, match="append-only"):
        toy_lake.merge("toy_log", rows(spark, ("a", 9, "ok")))
