"""The cluster paths for real: the whole pipeline over the sample corpus three ways, compared table by table, row for
row.

- embedded: the `sample_lake` fixture's run (a local[2] session in this process);
- Spark Connect: `megascience run` with `spark.mode=connect` against a Connect server in a JVM of its own (what
  Databricks serverless and shared-access clusters give: no RDDs, no SparkContext), our code uploaded as an artifact;
- standalone: a master and two workers (separate JVMs, one core each) started from pyspark's `spark-class`, the
  pipeline submitted with `spark-submit` and exactly the `make package` artifacts, from outside the source tree.

The servers' Python workers run a Python that has our dependencies but not our code, so a module or a data file that
is not shipped fails the run, and the failure shows the cluster's logs. Both legs run at once, once per test session;
every process they start is stopped by its PID, whatever happens.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from megascience.jobs.platform.package import build_submit_artifacts
from megascience.jobs.platform.tables import Lakehouse
from megascience.jobs.testing.crashes import lake_differences
from megascience.jobs.testing.llm_server import ScriptedLLMServer
from megascience.jobs.testing.scripted_model import ScriptedModel
from tests.clusters import (
    BIN,
    SPARK_HOME,
    Cluster,
    clean_environment,
    connect_server,
    isolated_python,
    sees_our_code,
    standalone_cluster,
)
from tests.conftest import ROOT, make_config

LEG_TIMEOUT_S = 2400
# Settings a user would give the session on a small cluster (the embedded session sets the same ones itself).
SESSION_SETTINGS = {"spark.sql.shuffle.partitions": "2", "spark.sql.session.timeZone": "UTC"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass
class Leg:
    name: str
    lake_root: Path
    returncode: int
    seconds: float
    output: str
    cluster: Cluster

    def failure(self) -> str:
        return f"the {self.name} run failed ({self.returncode}):\n{self.output[-6000:]}\n{self.cluster.logs()}"


def pipeline_settings(lake_root: Path, sample_corpus: Path, smoke_model: Path, endpoint: str) -> list[str]:
    """The sample_lake fixture's settings (tests/conftest.py), as --set arguments."""
    settings = [
        f"lake.root={lake_root}",
        f"ingest.sources=[{sample_corpus}]",
        "llm.default_engine=openai",
        f"llm.openai.base_url={endpoint}",
        "llm.openai.max_retries=0",
        f"chunk.tokenizer={smoke_model}",
    ]
    return [arg for setting in settings for arg in ("--set", setting)]


def run_leg(name: str, command: list[str], env: dict[str, str], cwd: Path, lake_root: Path, cluster: Cluster) -> Leg:
    started = time.perf_counter()
    try:
        result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=LEG_TIMEOUT_S)
        returncode, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired as err:  # subprocess.run kills the child it started
        returncode, output = -1, f"timed out after {LEG_TIMEOUT_S} s\n{err.stdout or ''}{err.stderr or ''}"
    return Leg(name, lake_root, returncode, time.perf_counter() - started, output, cluster)


@pytest.fixture(scope="session")
def cluster_legs(sample_corpus, smoke_model, tmp_path_factory) -> dict[str, Leg]:
    work = tmp_path_factory.mktemp("cluster_legs")
    python = isolated_python(work / "isolated")  # our dependencies, not our code
    assert not sees_our_code(python, work), "the servers' Python workers must not see the source tree"
    archive, script = build_submit_artifacts(work / "dist", ROOT)  # what `make package` builds for spark-submit
    with ExitStack() as stack:
        connect = stack.enter_context(connect_server(work / "connect", python, SESSION_SETTINGS))
        standalone = stack.enter_context(standalone_cluster(work / "standalone", python, workers=2))
        endpoints = [stack.enter_context(ScriptedLLMServer(respond=ScriptedModel())).base_url for _ in range(2)]

        connect_root = work / "connect" / "lake"
        connect_command = [str(BIN / "megascience"), "run", "--set", "spark.mode=connect", "--set", f"spark.remote={connect.url}"]
        connect_command += ["--set", "spark.connect_upload_code=true"]  # the server's workers import only what we upload
        connect_command += pipeline_settings(connect_root, sample_corpus, smoke_model, endpoints[0])
        # the client: the project venv's editable install (the Connect server sees our code only as the uploaded zip)
        connect_env = {**clean_environment(python), **OFFLINE}

        standalone_root = work / "standalone" / "lake"
        elsewhere = work / "standalone" / "submit"
        elsewhere.mkdir()
        submit = [str(SPARK_HOME / "bin" / "spark-submit"), "--master", standalone.url, "--py-files", str(archive)]
        cluster_conf = {
            **SESSION_SETTINGS,
            "spark.executor.cores": "1",
            "spark.executor.memory": "1g",
            "spark.driver.host": "127.0.0.1",
            "spark.ui.enabled": "false",
            **{f"spark.executorEnv.{key}": value for key, value in OFFLINE.items()},
        }
        submit += [arg for key, value in cluster_conf.items() for arg in ("--conf", f"{key}={value}")]
        submit += [str(script), "run", "--set", "spark.mode=cluster"]
        submit += pipeline_settings(standalone_root, sample_corpus, smoke_model, endpoints[1])

        with ThreadPoolExecutor(2) as pool:
            connect_leg = pool.submit(run_leg, "Spark Connect", connect_command, connect_env, work / "connect", connect_root, connect)
            standalone_leg = pool.submit(
                run_leg, "standalone", submit, {**clean_environment(python), **OFFLINE}, elsewhere, standalone_root, standalone
            )
            legs = {"connect": connect_leg.result(), "standalone": standalone_leg.result()}
        yield legs  # the processes stop at the end of the session; their logs stay in `work` for failure()


@pytest.mark.timeout(LEG_TIMEOUT_S + 600)
@pytest.mark.parametrize("leg_name", ["connect", "standalone"])
def test_the_pipeline_on_a_cluster_path_writes_the_embedded_run_s_tables(cluster_legs, sample_lake, leg_name):
    leg = cluster_legs[leg_name]
    assert leg.returncode == 0, leg.failure()
    assert re.search(r"^textbook_reasoning\s+55\s", leg.output, re.M), leg.failure()
    theirs = Lakehouse.open(sample_lake.spark, make_config(leg.lake_root))
    differences = lake_differences(theirs, sample_lake.lake)
    assert {"books", "llm_calls", "contamination", "textbook_reasoning", "megascience"} <= set(differences)
    unequal = {name: found for name, found in differences.items() if not found["equal"] or found["repeated_keys"]}
    assert not unequal, f"{leg.name}: tables that differ from the embedded run's: {unequal}"
    assert not list((leg.lake_root / "_scratch").glob("*")), "the shipped embeddings were not removed"
    print(f"\n{leg.name}: {leg.seconds:.0f} s (embedded {sample_lake.seconds:.0f} s), {len(differences)} tables equal")


def test_the_standalone_run_used_both_workers_executors(cluster_legs):
    """Work ran in executors of both workers: separate JVMs, each starting Python workers of its own."""
    leg = cluster_legs["standalone"]
    assert leg.returncode == 0, leg.failure()
    for work_dir in leg.cluster.log_dirs:
        executors = [path for path in work_dir.glob("app-*/*") if path.is_dir()]
        assert executors, f"no executor ran on {work_dir}:\n{leg.failure()}"


# --- no RDD or SparkContext on the pipeline's path ---------------------------------------------------------------

# What a Spark Connect session lacks (Databricks serverless, shared-access clusters): RDDs, the SparkContext (and its
# broadcast variables, accumulators, addFile), the JVM handles behind them.
CONNECT_MISSING_ATTRIBUTES = {"rdd", "sparkContext", "_sc", "_jsc", "_jdf", "_jsparkSession", "broadcast_value"}
CONNECT_MISSING_NAMES = {"SparkContext", "RDD", "Broadcast", "Accumulator"}
PIPELINE_PATH = ("jobs", "udfs", "schemas", "conf", "benchmarks")


UDF_MAKERS = {"udf", "pandas_udf"}


def _makes_udf(node: ast.AST) -> bool:
    called = node.func if isinstance(node, ast.Call) else node
    return (isinstance(called, ast.Attribute) and called.attr in UDF_MAKERS) or (
        isinstance(called, ast.Name) and called.id in UDF_MAKERS
    )


def connect_incompatible_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) of every attribute or name in Python source that a Spark Connect session does not have, and of
    UDFs made at import time (made before a Connect session exists, they are classic UDFs that need a SparkContext)."""
    tree = ast.parse(source)
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(_makes_udf(d) for d in node.decorator_list):
            found.append((node.lineno, f"UDF {node.name} made at import"))
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and _makes_udf(node.value):
            found.append((node.lineno, "UDF made at import"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in CONNECT_MISSING_ATTRIBUTES:
            found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.Name) and node.id in CONNECT_MISSING_NAMES:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.alias) and node.name.split(".")[-1] in CONNECT_MISSING_NAMES:
            found.append((getattr(node, "lineno", 0), f"import {node.name}"))
    return found


def notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    lines = [line for cell in cells if cell["cell_type"] == "code" for line in "".join(cell["source"]).splitlines()]
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))  # magics are not Python


def test_no_rdd_or_spark_context_on_the_pipeline_path():
    assert connect_incompatible_uses("n = df.rdd.zipWithIndex()\nb = spark.sparkContext.broadcast(x)") == [
        (1, ".rdd"),
        (2, ".sparkContext"),
    ]
    assert connect_incompatible_uses("from pyspark import SparkContext") == [(1, "import SparkContext")]
    assert connect_incompatible_uses("@F.udf('string')\ndef f(x):\n    return x\ng = udf(len)") == [
        (2, "UDF f made at import"),
        (4, "UDF made at import"),
    ]
    sources = {path: path.read_text() for folder in PIPELINE_PATH for path in sorted((ROOT / folder).rglob("*.py"))}
    sources |= {path: notebook_code(path) for path in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    assert len(sources) > 40
    uses = {str(path.relative_to(ROOT)): found for path, source in sources.items() if (found := connect_incompatible_uses(source))}
    assert uses == {}, f"not available under Spark Connect (Databricks serverless, shared clusters): {uses}"
