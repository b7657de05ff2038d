"""The spark-submit artifact for real: the --py-files zip and the submit script, run by spark-submit (local master)
from outside the source tree, with a Python that has our dependencies but not our code, so a module missing from
the zip fails the run."""

import re
import subprocess
import zipfile

from jobs.package import PACKAGES, build_pyfiles_zip, build_submit_artifacts
from tests.clusters import SPARK_HOME, clean_environment, isolated_python, sees_our_code
from tests.conftest import ROOT


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
