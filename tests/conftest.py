"""Shared fixtures: one real local Spark session for the suite, a fresh lake directory per test."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from megascience.jobs.platform.config import load_config  # noqa: E402  (environment first: Spark reads it at start)


def make_config(lake_root: Path, *overrides: str, profile: str = "local"):
    return load_config(profile, [f"lake.root={lake_root}", "run.progress=false", *overrides], environ={})


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from megascience.jobs.platform.session import get_spark

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
    from megascience.jobs.platform.tables import Lakehouse

    return Lakehouse.open(spark, config)


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> Path:
    from megascience.jobs.cli.sample_corpus import build_sample_corpus

    directory = tmp_path_factory.mktemp("sample_corpus")
    build_sample_corpus(directory)
    return directory


@pytest.fixture(scope="session")
def smoke_model(tmp_path_factory) -> Path:
    from megascience.jobs.platform.smoke_model import build_smoke_model

    return build_smoke_model(tmp_path_factory.mktemp("models") / "smoke")


@dataclass(frozen=True)
class PagesLake:
    """A lake after ingest and ocr of the sample corpus; `requests` are those the scripted olmOCR endpoint got."""

    root: Path
    settings: tuple[str, ...]
    requests: list[dict]

    def copy(self, target: Path) -> Path:
        """A private copy to write to (the session's lake stays as the fixture made it)."""
        shutil.copytree(self.root, target)
        return target


@pytest.fixture(scope="session")
def sample_pages_lake(spark, sample_corpus, smoke_model, tmp_path_factory) -> PagesLake:
    """ingest + ocr (method auto) of the sample corpus in the order classify.before_ocr=false (every kept book OCR'd,
    no labels yet, so classify tests start from it): born-digital pages from the text layer, the scanned book's
    pages and the math book's typeset page from a scripted endpoint answering in olmOCR's format."""
    from megascience.jobs.pipeline import run_pipeline
    from megascience.jobs.platform.tables import Lakehouse
    from megascience.jobs.stages import ingest, ocr
    from megascience.jobs.testing.llm_server import ScriptedLLMServer, olmocr_answer

    root = tmp_path_factory.mktemp("pages_lake") / "lake"
    settings = (
        f"ingest.sources=[{sample_corpus}]",
        f"llm.smoke_model_dir={smoke_model}",
        "ocr.pages_per_task=2",
        "classify.before_ocr=false",
    )
    with ScriptedLLMServer(respond=lambda payload: olmocr_answer("Lecture 1: The First Law\nScanned page text.")) as server:
        config = make_config(root, *settings, "llm.roles.ocr.engine=openai", f"llm.roles.ocr.base_url={server.base_url}")
        run_pipeline(spark, config, Lakehouse.open(spark, config), [ingest.STAGE, ocr.STAGE])
    return PagesLake(root, settings, server.requests)


@pytest.fixture(scope="session")
def planted():
    from importlib import resources

    import yaml

    return yaml.safe_load(resources.files("megascience.conf").joinpath("sample", "planted.yaml").read_text())


@pytest.fixture(scope="session")
def realistic_lake(spark, sample_corpus, smoke_model, tmp_path_factory):
    """The whole pipeline run once over the sample corpus, every LLM role (the classifier too) answered by
    tests/realistic_model.py: the answer key's content written the way real models write, cut-offs included."""
    from types import SimpleNamespace

    from megascience.jobs.pipeline import STAGES, run_pipeline
    from megascience.jobs.platform.tables import Lakehouse
    from megascience.jobs.testing.llm_server import ScriptedLLMServer
    from tests.realistic_model import RealisticModel

    root = tmp_path_factory.mktemp("realistic_lake") / "lake"
    model = RealisticModel(seed=13)
    with ScriptedLLMServer(respond=model) as server:
        config = make_config(
            root,
            f"ingest.sources=[{sample_corpus}]",
            "llm.default_engine=openai",
            f"llm.openai.base_url={server.base_url}",
            "llm.openai.max_retries=0",
            f"chunk.tokenizer={smoke_model}",
            "classify.labels_file=",
        )
        lake = Lakehouse.open(spark, config)
        run_pipeline(spark, config, lake, list(STAGES))
        yield SimpleNamespace(spark=spark, config=config, lake=lake, server=server, truth=model.truth)


@pytest.fixture(scope="session")
def sample_lake(spark, sample_corpus, smoke_model, tmp_path_factory):
    """The whole pipeline run once over the sample corpus, every LLM role answered by the answer key
    jobs/testing/scripted_model.py (plumbing: it answers exactly in the format asked, as no real model does)."""
    from types import SimpleNamespace

    from megascience.jobs.pipeline import STAGES, run_pipeline
    from megascience.jobs.platform.tables import Lakehouse
    from megascience.jobs.testing.llm_server import ScriptedLLMServer
    from megascience.jobs.testing.scripted_model import ScriptedModel

    root = tmp_path_factory.mktemp("sample_lake") / "lake"
    with ScriptedLLMServer(respond=ScriptedModel()) as server:
        config = make_config(
            root,
            f"ingest.sources=[{sample_corpus}]",
            "llm.default_engine=openai",
            f"llm.openai.base_url={server.base_url}",
            "llm.openai.max_retries=0",
            f"chunk.tokenizer={smoke_model}",  # the endpoint's model has no tokenizer to load, cl100k's file is not here
        )
        lake = Lakehouse.open(spark, config)
        started = time.perf_counter()
        reports = run_pipeline(spark, config, lake, list(STAGES))
        seconds = time.perf_counter() - started
        yield SimpleNamespace(spark=spark, config=config, lake=lake, server=server, root=root, reports=reports, seconds=seconds)
