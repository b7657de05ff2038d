"""The Spark session: made here for the embedded default, taken as given on a cluster or Databricks."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from jobs.config import Config

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def get_spark(config: Config) -> SparkSession:
    """Embedded: a local[*] session with settings fit for one machine. Cluster: the existing session, untouched."""
    spark_conf = config["spark"]
    if spark_conf["mode"] == "cluster":
        return SparkSession.getActiveSession() or SparkSession.builder.appName(spark_conf["app_name"]).getOrCreate()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # Python workers must run the interpreter that has our packages, whatever `python` is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(spark_conf["master"])
        .appName(spark_conf["app_name"])
        .config("spark.driver.memory", spark_conf["driver_memory"])
        .config("spark.sql.shuffle.partitions", str(spark_conf["shuffle_partitions"]))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(spark_conf["arrow_batch_rows"]))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")  # our own progress lines instead of interleaved bars
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.warehouse.dir", os.path.abspath(os.path.join(config["lake"]["root"], "warehouse")))
    )
    if spark_conf["delta_packages"]:
        from delta import configure_spark_with_delta_pip

        builder = configure_spark_with_delta_pip(
            builder.config("spark.sql.extensions", DELTA_EXTENSION).config(
                "spark.sql.catalog.spark_catalog", DELTA_CATALOG
            )
        )
    for key, value in spark_conf["conf"].items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def delta_connector_loaded(spark: SparkSession) -> bool:
    """True when the Delta connector's classes are on the session's classpath (clusters, Databricks)."""
    jvm = getattr(spark, "_jvm", None)
    if jvm is None:
        # Spark Connect (Databricks serverless, shared clusters) exposes no JVM; Delta is its native format there.
        return True
    try:
        jvm.java.lang.Thread.currentThread().getContextClassLoader().loadClass("io.delta.tables.DeltaTable")
        return True
    except Exception:  # py4j raises a Py4JJavaError wrapping ClassNotFoundException
        return False
