"""The megascience command, in-process against the shared Spark session (and once as a real process)."""

import re
import subprocess
import sys

from megascience.jobs.cli.main import main


def cli(capsys, lake_root, *args):
    # --verbose: in-process, the quiet console would take the test process's own descriptors 1 and 2
    code = main([*args, "--verbose", "--set", f"lake.root={lake_root}", "--set", "run.progress=false"])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_status_sql_lineage(capsys, spark, lake_root, sample_corpus):
    sources = f"ingest.sources=[{sample_corpus}]"
    code, out, _ = cli(capsys, lake_root, "run", "--until", "ingest", "--set", sources)
    assert code == 0
    assert re.search(r"^books\s+13\s+0\s", out, re.M)  # the summary: rows and version of every table
    assert "megascience lineage books" in out and "mlflow ui --backend-store-uri sqlite:///" in out

    code, out, _ = cli(capsys, lake_root, "status")
    assert code == 0 and "ingest FINISHED" in out and "backend: delta-rs" in out

    code, out, _ = cli(capsys, lake_root, "sql", "select status, count(*) as n from books group by status order by status")
    assert code == 0
    assert out.split("\n")[2:5] == ["dropped  2", "failed   3", "kept     8"]

    code, out, _ = cli(capsys, lake_root, "lineage", "books")
    assert code == 0
    assert "books version 0 (WRITE" in out and "stage ingest, FINISHED" in out
    assert "param ingest.pattern = *.pdf" in out and "metric rows_kept = 8" in out
    assert "output: books version 0" in out

    code, out, _ = cli(capsys, lake_root, "stage", "ingest", "--set", sources)
    assert code == 0
    code, out, _ = cli(capsys, lake_root, "lineage", "books")
    assert "books version 0" in out  # the rerun added nothing, so no new version


def test_errors_are_clear_and_exit_2(capsys, spark, lake_root):
    code, _, err = cli(capsys, lake_root, "run", "--from", "nosuchstage")
    assert code == 2 and "unknown stage 'nosuchstage'" in err
    code, _, err = cli(capsys, lake_root, "lineage", "books")
    assert code == 2 and "books does not exist yet" in err
    code, _, err = cli(capsys, lake_root, "sql", "select 1", "--set", "spark.shuffle_partitions=lots")
    assert code == 2 and "spark.shuffle_partitions must be an integer" in err


def test_a_bad_setting_of_a_late_stage_stops_the_run_before_the_first_stage(capsys, tmp_path, sample_corpus):
    lake = tmp_path / "lake"
    code, out, err = cli(capsys, lake, "run", "--set", f"ingest.sources=[{sample_corpus}]", "--set", "dedup.threshold=1.5")
    assert code == 2
    assert err == "megascience: error: --set dedup.threshold: dedup.threshold must be in (0.0, 1.0], got 1.5\n"
    assert "[ingest]" not in out and not lake.exists()  # no stage ran, no table, no MLflow run was made


def test_console_script_reports_config_errors_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "megascience.jobs.cli", "status", "--set", "lake.nope=1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    assert "megascience: error: --set lake.nope: unknown key 'lake.nope'" in result.stderr
    assert "Traceback" not in result.stderr


def test_stages_lists_every_stage_in_run_order_with_what_it_reads_writes_and_asks(capsys, lake_root):
    from megascience.jobs.pipeline import STAGES

    code, out, _ = cli(capsys, lake_root, "stages")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["stage", "reads", "writes", "roles", "settings", "what", "it", "does"]
    names = [line.split()[0] for line in lines[2:]]
    assert names == [stage.name for stage in STAGES] and len(names) == 21
    row = {line.split()[0]: line for line in lines[2:]}
    assert "qa_clusters, dedup_band_keys" in row["dedup"] and "llm_calls" not in row["dedup"]
    assert "qa_extracted, llm_calls" in row["extract"] and " extractor " in row["extract"]
    assert " decontamination " in row["drop_contaminated_external"] and " dedup " in row["dedup"]
    assert "reasoning_checker, distiller" in row["check_reasoning"]
    assert row["publish"].split()[-1] != "-" and "lineage" in row["publish"]  # the description is shown

    code, out, _ = cli(capsys, lake_root, "stages", "--set", "classify.before_ocr=false")
    names = [line.split()[0] for line in out.splitlines()[2:]]
    assert names.index("ocr") < names.index("classify")


def test_the_console_shows_our_lines_and_the_rest_goes_to_the_run_log(tmp_path, sample_corpus):
    lake = tmp_path / "lake"
    command = [sys.executable, "-m", "megascience.jobs.cli", "run", "--until", "ingest", "--set", f"lake.root={lake}",
               "--set", f"ingest.sources=[{sample_corpus}]"]
    quiet = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert quiet.returncode == 0, quiet.stdout[-2000:]
    [log] = (lake / "logs").glob("*.log")
    run_id = log.stem
    assert re.fullmatch(r"[0-9a-f]{32}", run_id), log.name  # named after the pipeline's MLflow run
    assert f"full log (Spark, engines, warnings): {log}" in quiet.stdout
    assert "[ingest] done in" in quiet.stdout and re.search(r"^books\s+13\s+0\s", quiet.stdout, re.M)
    jvm_line = "Using incubator modules"  # what the JVM prints as it starts
    assert jvm_line in log.read_text() and jvm_line not in quiet.stdout + quiet.stderr
    assert quiet.stderr == ""

    from mlflow.tracking import MlflowClient

    from megascience.jobs.platform.config import load_config
    from megascience.jobs.platform.lineage import tracking_uri

    tags = MlflowClient(tracking_uri=tracking_uri(load_config(None, [f"lake.root={lake}"]))).get_run(run_id).data.tags
    assert tags["megascience.log_file"] == str(log) and tags["mlflow.runName"] == "pipeline"

    verbose = subprocess.run([*command, "--verbose"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert verbose.returncode == 0 and jvm_line in verbose.stdout + verbose.stderr
    assert len(list((lake / "logs").glob("*.log"))) == 1  # --verbose writes no log file
