"""The spark-submit artifact for real: the --py-files zip and the submit script, run by spark-submit (local master)
from outside the source tree, with a Python that has our dependencies but not our code, so a module missing from
the zip fails the run."""

import ast
import re
import subprocess
import sys
import zipfile

from megascience.jobs.platform.package import NAMESPACE, PACKAGES, build_pyfiles_zip, build_submit_artifacts
from tests.clusters import SPARK_HOME, clean_environment, isolated_python, sees_our_code
from tests.conftest import ROOT


def test_the_zip_holds_every_module_and_data_file(tmp_path):
    archive = build_pyfiles_zip(tmp_path / "megascience_pyfiles.zip", ROOT)
    names = set(zipfile.ZipFile(archive).namelist())
    for package in PACKAGES:
        on_disk = {
            f"{NAMESPACE}/{p.relative_to(ROOT).as_posix()}"
            for p in (ROOT / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
        assert on_disk <= names, on_disk - names
    assert {"megascience/conf/base.yaml", "megascience/conf/prompts/extract_math_high.v1.txt"} <= names
    assert all(name.startswith(f"{NAMESPACE}/") for name in names), "everything sits under the one namespace"


def test_the_wheel_installs_one_top_level_package(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )
    [wheel] = tmp_path.glob("megascience-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"megascience"}
    assert {"megascience/jobs/pipeline.py", "megascience/jobs/stages/dedup.py", "megascience/conf/base.yaml"} <= set(names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "megascience = megascience.jobs.cli.main:main" in entry_points


def bare_imports(source: str) -> list[str]:
    """Imports of our folders by their repository names (jobs, udfs, ...), not under the megascience namespace: such
    a module would load a second copy of our code from the source tree, and fail where only the wheel is installed."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [name for name in names if name.split(".")[0] in PACKAGES]
    return found


def test_our_code_imports_itself_only_under_the_namespace():
    assert bare_imports("from jobs.platform import config\nimport udfs.ocr\nfrom megascience.jobs import pipeline") == [
        "jobs.platform", "udfs.ocr"
    ]
    offenders = {
        path.relative_to(ROOT).as_posix(): found
        for folder in (*PACKAGES, "tests", "benchmarks")
        for path in (ROOT / folder).rglob("*.py")
        if (found := bare_imports(path.read_text()))
    }
    assert not offenders


def test_spark_submit_runs_the_packaged_pipeline_from_outside_the_tree(tmp_path, sample_corpus):
    archive, script = build_submit_artifacts(tmp_path / "dist", ROOT)
    python = isolated_python(tmp_path / "isolated")
    assert not sees_our_code(python, tmp_path), "the isolated Python must not see the source tree"

    work = tmp_path / "elsewhere"
    work.mkdir()
    result = subprocess.run(
        [
            str(SPARK_HOME / "bin" / "spark-submit"),
            "--master", "local[2]",
            "--py-files", str(archive),
            str(script),
            "run", "--until", "ingest",
            "--set", "spark.mode=cluster",  # the session comes from spark-submit
            "--set", f"lake.root={work / 'lake'}",
            "--set", f"ingest.sources=[{sample_corpus}]",
        ],
        capture_output=True,
        text=True,
        cwd=work,
        env=clean_environment(python),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^books\s+13\s+0\s", result.stdout, re.M) and "ingest FINISHED" in result.stdout


# The rooms from the bottom up: a module may import its own room and the rooms below it, never one above.
LEVEL = {"schemas": 0, "conf": 0, "udfs": 1, "jobs.platform": 2, "jobs.stages": 3, "jobs.pipeline": 4, "jobs.cli": 5,
         "jobs.testing": 6}


def room_of(dotted: str) -> str:
    parts = dotted.removeprefix(f"{NAMESPACE}.").split(".")
    return ".".join(parts[:2]) if parts[0] == "jobs" else parts[0]


def upward_imports(path, source: str) -> list[str]:
    own = room_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(f"{NAMESPACE}."):
            if LEVEL[room_of(node.module)] > LEVEL[own]:
                found.append(f"line {node.lineno}: {node.module}")
    return found


def test_imports_only_run_downward():
    assert upward_imports(ROOT / "jobs/platform/x.py", "from megascience.jobs.stages import dedup") == [
        "line 1: megascience.jobs.stages"
    ]
    offenders = {
        path.relative_to(ROOT).as_posix(): found
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py" and (found := upward_imports(path, path.read_text()))
    }
    assert not offenders
