"""The Spark session: made here for the embedded default, taken as given on a cluster or Databricks, or reached
through Spark Connect (Databricks serverless, Unity Catalog shared-access clusters, any Connect server).

Nothing on the pipeline's path uses an RDD or the SparkContext, which a Spark Connect session does not have: what a
stage needs of the cluster it asks through DataFrames (`default_parallelism`) and files (`jobs/shipments.py`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from functools import lru_cache

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from megascience.jobs.platform.config import Config
from megascience.jobs.platform.settings import LakeSettings, SparkSettings

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def get_spark(config: Config) -> SparkSession:
    """Embedded: a local[*] session with settings fit for one machine. Cluster: the existing session, untouched.
    Connect: a Spark Connect session (`spark.remote`, else the one the environment names: SPARK_REMOTE, Databricks)."""
    spark_conf = SparkSettings.of(config)
    if spark_conf.mode == "cluster":
        return SparkSession.getActiveSession() or SparkSession.builder.appName(spark_conf.app_name).getOrCreate()
    if spark_conf.mode == "connect":
        return connect_session(config)
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # Python workers must run the interpreter that has our packages, whatever `python` is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(spark_conf.master)
        .appName(spark_conf.app_name)
        .config("spark.driver.memory", spark_conf.driver_memory)
        .config("spark.sql.shuffle.partitions", str(spark_conf.shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(spark_conf.arrow_batch_rows))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")  # our own progress lines instead of interleaved bars
        .config("spark.log.level", "ERROR")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.warehouse.dir", os.path.abspath(os.path.join(LakeSettings.of(config).root, "warehouse")))
    )
    if spark_conf.delta_packages:
        from delta import configure_spark_with_delta_pip

        builder = configure_spark_with_delta_pip(
            builder.config("spark.sql.extensions", DELTA_EXTENSION).config(
                "spark.sql.catalog.spark_catalog", DELTA_CATALOG
            )
        )
    for key, value in spark_conf.conf.items():
        builder = builder.config(key, str(value))
    return builder.getOrCreate()


def connect_session(config: Config) -> SparkSession:
    """The Spark Connect session, with our code uploaded to it when `spark.connect_upload_code` asks."""
    spark_conf = SparkSettings.of(config)
    builder = SparkSession.builder
    if spark_conf.remote:
        builder = builder.remote(spark_conf.remote)
    spark = builder.getOrCreate()
    if not is_connect(spark):
        raise RuntimeError(
            "spark.mode=connect but the session is a classic one: set spark.remote (sc://host:port) or SPARK_REMOTE, "
            "or use spark.mode=cluster"
        )
    if spark_conf.connect_upload_code:
        upload_code(spark)
    return spark


def upload_code(spark: SparkSession) -> None:
    """Our packages as one --py-files-like zip artifact, so the server's Python workers import what this client runs
    (a Connect server that has not installed the wheel; Databricks serverless installs it from the environment)."""
    from megascience.jobs.platform.package import PYFILES_ZIP, build_pyfiles_zip, installed_root

    root = installed_root()
    if root.is_file():  # this client itself runs from a --py-files zip: that zip is the code
        spark.addArtifacts(str(root), pyfile=True)
        return
    with tempfile.TemporaryDirectory(prefix="megascience-code-") as directory:
        spark.addArtifacts(str(build_pyfiles_zip(os.path.join(directory, PYFILES_ZIP), root)), pyfile=True)


def is_connect(spark: SparkSession) -> bool:
    """True for a Spark Connect session (no SparkContext, no JVM in this process)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


@lru_cache(maxsize=8)
def default_parallelism(spark: SparkSession) -> int:
    """The cores Spark runs tasks on, asked the way Spark Connect allows: a range of rows is split into that many
    partitions (Spark's `defaultParallelism`), so the highest partition id plus one is the number."""
    partitions = spark.range(0, 1 << 16).select(F.spark_partition_id().alias("partition"))
    return int(partitions.agg(F.max("partition")).first()[0]) + 1


def delta_connector_loaded(spark: SparkSession) -> bool:
    """True when the Delta connector is in the session (clusters, Databricks, Connect servers that load it)."""
    if is_connect(spark):
        # no JVM to ask for the class: ask the server to resolve the `delta` data source on a path that is not there
        try:
            spark.read.format("delta").load(os.path.join(tempfile.gettempdir(), "megascience-no-such-table")).schema
        except Exception as err:
            return "DATA_SOURCE_NOT_FOUND" not in str(err) and "Failed to find the data source" not in str(err)
        return True
    jvm = getattr(spark, "_jvm", None)
    try:
        jvm.java.lang.Thread.currentThread().getContextClassLoader().loadClass("io.delta.tables.DeltaTable")
        return True
    except Exception:  # py4j raises a Py4JJavaError wrapping ClassNotFoundException
        return False
