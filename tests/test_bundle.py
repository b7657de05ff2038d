"""databricks.yml, checked against the bundle's own rules and against our stage registry, CLI and config."""

import re
import tomllib

import yaml

from megascience.jobs.cli.main import build_parser
from megascience.jobs.pipeline import STAGES
from megascience.jobs.platform.config import load_config
from tests.conftest import ROOT

BUNDLE = yaml.safe_load((ROOT / "databricks.yml").read_text())
JOBS = BUNDLE["resources"]["jobs"]
JOB = JOBS["megascience_pipeline"]
SERVERLESS = JOBS["megascience_pipeline_serverless"]
TASKS = {task["task_key"]: task for task in JOB["tasks"]}


def stage_dependencies():
    """A task depends on the earlier stages that make its inputs (a later stage's table is read as it is: classify
    lists `pages` for classify.before_ocr false, when ocr runs first)."""
    dependencies = {}
    for i, stage in enumerate(STAGES):
        made_by = {earlier.output: earlier.name for earlier in STAGES[:i]}
        dependencies[stage.name] = sorted({made_by[t] for t in stage.inputs if t in made_by})
    return dependencies


def resolve(value: str) -> str:
    return re.sub(r"\$\{var\.([a-z_]+)\}", lambda m: str(BUNDLE["variables"][m.group(1)]["default"]), value)


def test_bundle_structure_follows_the_bundle_rules():
    assert BUNDLE["bundle"]["name"] == "megascience"
    assert {"dev", "prod"} <= set(BUNDLE["targets"]) and sum(bool(t.get("default")) for t in BUNDLE["targets"].values()) == 1
    for job in JOBS.values():
        keys = [task["task_key"] for task in job["tasks"]]
        assert len(keys) == len(set(keys)), "task keys must be unique"
        clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
        environments = {e["environment_key"]: e["spec"] for e in job.get("environments", [])}
        for task in job["tasks"]:
            # a task runs on a job cluster (libraries installed on it) or on serverless compute (an environment's)
            assert (task.get("job_cluster_key") in clusters) != (task.get("environment_key") in environments), task
            assert all(dep["task_key"] in keys for dep in task.get("depends_on", []))
            if "environment_key" in task:
                assert "libraries" not in task
            else:
                assert all(set(library) <= {"whl", "pypi"} for library in task["libraries"])
        for cluster in clusters.values():
            assert {"spark_version", "node_type_id", "num_workers"} <= set(cluster)
        for spec in environments.values():
            assert spec["client"] and "./dist/*.whl" in spec["dependencies"]
    # every ${var.x} is declared, and every declared variable is used
    text = (ROOT / "databricks.yml").read_text()
    used = set(re.findall(r"\$\{var\.([a-z_]+)\}", text))
    assert used == set(BUNDLE["variables"])
    assert all("default" in v and v.get("description") for v in BUNDLE["variables"].values())


def test_the_job_graph_is_the_stage_graph():
    for job in JOBS.values():
        tasks = {task["task_key"]: task for task in job["tasks"]}
        assert list(tasks) == [stage.name for stage in STAGES]
        for name, dependencies in stage_dependencies().items():
            assert sorted(d["task_key"] for d in tasks[name].get("depends_on", [])) == dependencies, name


def test_llm_stages_run_on_the_gpu_cluster_with_vllm():
    serverless = {task["task_key"]: task for task in SERVERLESS["tasks"]}
    for stage in STAGES:
        task = TASKS[stage.name]
        pypi = {lib["pypi"]["package"].split("==")[0] for lib in task["libraries"] if "pypi" in lib}
        if stage.roles:
            assert task["job_cluster_key"] == "gpu" and {"vllm", "faiss-gpu"} <= pypi, stage.name
            assert serverless[stage.name]["job_cluster_key"] == "gpu" and serverless[stage.name]["libraries"] == task["libraries"]
        else:
            assert task["job_cluster_key"] == "cpu" and not pypi, stage.name
            assert serverless[stage.name]["environment_key"] == "megascience", stage.name


def test_every_task_calls_an_existing_entry_point_with_valid_parameters():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = JOB["job_clusters"][0]["new_cluster"]["spark_env_vars"]
    resolved_env = {k: resolve(v) for k, v in env.items()}
    for job in JOBS.values():
        for task in job["tasks"]:
            wheel = task["python_wheel_task"]
            assert wheel["package_name"] == project["name"]
            assert project["scripts"][wheel["entry_point"]] == "megascience.jobs.cli.main:main"
            args = build_parser().parse_args([resolve(p) for p in wheel["parameters"]])
            assert args.command == "stage" and args.name == task["task_key"]
            # a job cluster's task sees the cluster's environment; a serverless task only its parameters
            environ = {} if "environment_key" in task else resolved_env
            config = load_config(args.profile, args.overrides, environ=environ)
            assert config["lake"]["catalog"] == "main" and config["lake"]["root"] == "/Volumes/main/megascience/lake"
            assert config["ingest"]["sources"] == ["/Volumes/main/megascience/textbooks"]
            assert config["spark"]["mode"] == ("connect" if "environment_key" in task else "cluster"), task["task_key"]
