"""The spark-submit artifact for real: the --py-files zip and the submit script, run by spark-submit (local master)
from outside the source tree, with a Python that has our dependencies but not our code, so a module missing from
the zip fails the run."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

from jobs.package import PACKAGES, build_pyfiles_zip
from tests.conftest import ROOT


def isolated_python(tmp_path):
    """A venv that sees the project venv's third-party packages but not its editable install of megascience."""
    env_dir = tmp_path / "isolated"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    # a plain path entry: .pth files there (the editable-install hook) are not processed
    (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir / "bin" / "python"


def test_the_zip_holds_every_module_and_data_file(tmp_path):
    archive = build_pyfiles_zip(tmp_path / "megascience_pyfiles.zip", ROOT)
    names = set(zipfile.ZipFile(archive).namelist())
    for package in PACKAGES:
        on_disk = {
            p.relative_to(ROOT).as_posix()
            for p in (ROOT / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
        assert on_disk <= names, on_disk - names
    assert "conf/base.yaml" in names and "conf/prompts/extract_math_high.v1.txt" in names


def test_spark_submit_runs_the_packaged_pipeline_from_outside_the_tree(tmp_path, sample_corpus):
    dist = tmp_path / "dist"
    archive = build_pyfiles_zip(dist / "megascience_pyfiles.zip", ROOT)
    shutil.copy(ROOT / "jobs" / "submit.py", dist / "megascience_submit.py")
    python = isolated_python(tmp_path)
    probe = subprocess.run([str(python), "-c", "import jobs"], capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode != 0, "the isolated Python must not see the source tree"

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        "PYSPARK_PYTHON": str(python),
        "PYSPARK_DRIVER_PYTHON": str(python),
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    spark_submit = os.path.join(os.path.dirname(sys.executable), "spark-submit")
    result = subprocess.run(
        [
            spark_submit,
            "--master", "local[2]",
            "--py-files", str(archive),
            str(dist / "megascience_submit.py"),
            "run", "--until", "ingest",
            "--set", "spark.mode=cluster",  # the session comes from spark-submit
            "--set", f"lake.root={work / 'lake'}",
            "--set", f"ingest.sources=[{sample_corpus}]",
        ],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^books\s+12\s+0\s", result.stdout, re.M) and "ingest FINISHED" in result.stdout
