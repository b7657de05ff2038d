"""Shared fixtures: one real local Spark session for the suite, a fresh lake directory per test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from jobs.config import load_config  # noqa: E402  (environment first: Spark reads it at start)


def make_config(lake_root: Path, *overrides: str, profile: str = "local"):
    return load_config(profile, [f"lake.root={lake_root}", "run.progress=false", *overrides], environ={})


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from jobs.session import get_spark

    settings = ["spark.master=local[2]", "spark.shuffle_partitions=2"]
    if os.environ.get("MEGASCIENCE_TEST_DELTA_PACKAGES") == "1":
        settings.append("spark.delta_packages=true")  # a machine that can resolve the Delta connector's jars
    session = get_spark(make_config(tmp_path_factory.mktemp("warehouse"), *settings))
    yield session
    session.stop()


@pytest.fixture
def lake_root(tmp_path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def config(lake_root):
    return make_config(lake_root)


@pytest.fixture
def lake(spark, config):
    from jobs.tables import Lakehouse

    return Lakehouse.open(spark, config)


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> Path:
    from jobs.sample_corpus import build_sample_corpus

    directory = tmp_path_factory.mktemp("sample_corpus")
    build_sample_corpus(directory)
    return directory
