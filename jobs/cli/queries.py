"""Saved SQL queries over the curated tables (conf/queries/*.sql); `:name` parameters are Spark parameter markers."""

from __future__ import annotations

from importlib import resources

from pyspark.sql import DataFrame, SparkSession


def saved_queries() -> dict[str, str]:
    folder = resources.files("megascience.conf").joinpath("queries")
    return {entry.name[:-4]: entry.read_text(encoding="utf-8") for entry in sorted(folder.iterdir(), key=lambda e: e.name) if entry.name.endswith(".sql")}


def describe(sql: str) -> str:
    """The query's leading comment."""
    return " ".join(line[2:].strip() for line in sql.splitlines() if line.startswith("--"))


def run_query(spark: SparkSession, name: str, params: dict[str, str] | None = None) -> DataFrame:
    queries = saved_queries()
    if name not in queries:
        raise KeyError(f"no saved query {name!r}; saved queries: {', '.join(queries)}")
    return spark.sql(queries[name], args=params or None)
