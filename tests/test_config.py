import dataclasses
import typing
from importlib import resources

import pytest
import yaml

from megascience.jobs.platform.config import ConfigError, load_config
from megascience.jobs.platform.settings import SECTIONS, DedupSettings, LlmSettings, Settings


def test_defaults_come_from_base_and_the_local_profile():
    config = load_config(None, [], environ={})
    assert config.profile == "local"
    assert config["lake"]["backend"] == "auto"
    assert config["spark"]["mode"] == "embedded"
    assert config.get("ingest.copyright.respect_pdf_permissions") is True


def test_cluster_profile_uses_the_existing_session_and_the_connector():
    config = load_config("cluster", [], environ={})
    assert config["spark"]["mode"] == "cluster"
    assert config["lake"]["backend"] == "delta-spark"


def test_precedence_base_profile_environment_set():
    environ = {"MEGASCIENCE__LAKE__ROOT": "/from/env", "MEGASCIENCE__SPARK__SHUFFLE_PARTITIONS": "3"}
    config = load_config("local", ["lake.root=/from/set"], environ=environ)
    assert config["lake"]["root"] == "/from/set"
    assert config["spark"]["shuffle_partitions"] == 3  # typed like YAML: an int, not "3"
    assert config.sources["lake.root"] == "--set lake.root"
    assert config.sources["spark.shuffle_partitions"] == "environment variable MEGASCIENCE__SPARK__SHUFFLE_PARTITIONS"


def test_profile_environment_variable_and_profile_file(tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text("ingest:\n  sources: [/data/books]\n")
    assert load_config(None, [], environ={"MEGASCIENCE_PROFILE": "cluster"}).profile == "cluster"
    assert load_config(str(profile), [], environ={})["ingest"]["sources"] == ["/data/books"]


def test_set_parses_lists_and_booleans():
    config = load_config("local", ["ingest.sources=[/a, /b]", "spark.delta_packages=true"], environ={})
    assert config["ingest"]["sources"] == ["/a", "/b"]
    assert config["spark"]["delta_packages"] is True


def test_unknown_key_names_the_key_and_where_it_came_from(tmp_path):
    with pytest.raises(ConfigError, match=r"--set lake\.rooot: unknown key 'lake\.rooot'"):
        load_config("local", ["lake.rooot=x"], environ={})
    profile = tmp_path / "typo.yaml"
    profile.write_text("ingestt:\n  sources: []\n")
    with pytest.raises(ConfigError, match=rf"{profile}: unknown key 'ingestt'"):
        load_config(str(profile), [], environ={})
    with pytest.raises(ConfigError, match="environment variable MEGASCIENCE__LAKE__NOPE: unknown key 'lake.nope'"):
        load_config("local", [], environ={"MEGASCIENCE__LAKE__NOPE": "1"})


def test_wrong_type_names_key_expected_type_and_value():
    with pytest.raises(ConfigError, match=r"spark\.shuffle_partitions must be an integer.*got 'many'"):
        load_config("local", ["spark.shuffle_partitions=many"], environ={})
    with pytest.raises(ConfigError, match=r"ingest\.sources\[1\] must be a string"):
        load_config("local", ["ingest.sources=[/a, 3]"], environ={})
    with pytest.raises(ConfigError, match=r"spark.delta_packages must be a boolean"):
        load_config("local", ["spark.delta_packages=1"], environ={})
    with pytest.raises(ConfigError, match="ingest is a section"):
        load_config("local", ["ingest=3"], environ={})


def test_choices_are_checked():
    with pytest.raises(ConfigError, match="lake.backend must be one of auto, delta-rs, delta-spark"):
        load_config("local", ["lake.backend=parquet"], environ={})
    with pytest.raises(ConfigError, match="must be set together"):
        load_config("local", ["lake.catalog=main"], environ={})


def test_secrets_are_refused_as_values():
    with pytest.raises(ConfigError, match="looks like a secret; secrets are read from the environment only") as err:
        load_config("local", ["lake.api_key=sk-do-not-print"], environ={})
    assert "sk-do-not-print" not in str(err.value)
    with pytest.raises(ConfigError, match="llm.openai.hf_token looks like a secret"):
        load_config("local", ["llm.openai.hf_token=hf_abc"], environ={})
    assert load_config("local", ["llm.roles.judge.max_tokens=9"], environ={})["llm"]["roles"]["judge"]["max_tokens"] == 9


def test_unknown_profile_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="profile 'nosuch' not found"):
        load_config("nosuch", [], environ={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("lake: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(broken), [], environ={})


def test_flat_view_for_lineage():
    flat = load_config("local", [], environ={}).flat()
    assert flat["lake.backend"] == "auto"
    assert flat["spark.conf"] == {}


# One bad value in every section of conf/base.yaml: each fails when the configuration loads, naming the key, what is
# wrong and where the value came from.
BAD_VALUE_PER_SECTION = {
    "lake": ("lake.backend=parquet", "lake.backend must be one of auto, delta-rs, delta-spark, got 'parquet'"),
    "spark": ("spark.shuffle_partitions=0", "spark.shuffle_partitions must be at least 1, got 0"),
    "mlflow": ("mlflow.experiment=", "mlflow.experiment must be set: the MLflow experiment"),
    "ingest": ("ingest.copyright.no_metadata=ignore", "ingest.copyright.no_metadata must be one of keep, drop, fail, got 'ignore'"),
    "llm": ("llm.roles.judge.engine=tgi", "llm.roles.judge.engine must be one of , vllm, openai, got 'tgi'"),
    "run": ("run.progress=maybe", "run.progress must be a boolean"),
    "dedup": ("dedup.threshold=1.5", r"dedup.threshold must be in \(0.0, 1.0\], got 1.5"),
    "ocr": ("ocr.pages_per_task=0", "ocr.pages_per_task must be at least 1, got 0"),
    "classify": ("classify.keep_levels=[college]", "classify.keep_levels has unknown college; choose from primary_school"),
    "chunk": ("chunk.if_cl100k_missing=ignore", "chunk.if_cl100k_missing must be one of extractor, error, got 'ignore'"),
    "extract": ("extract.continuation_rounds=11", r"extract.continuation_rounds must be in \[0, 10\], got 11"),
    "decontamination": ("decontamination.top_k=0", "decontamination.top_k must be at least 1, got 0"),
    "external": ("external.datasets=nope", "external.datasets must be a list"),
    "select": ("select.datasets={natural_reasoning: lenght}", "select.datasets.natural_reasoning must be one of length, difficulty, random, got 'lenght'"),
    "annotate": ("annotate.max_answer_tokens=0", "annotate.max_answer_tokens must be at least 1, got 0"),
    "export": ("export.rows_per_file=-5", "export.rows_per_file must be at least 1, got -5"),
}


def test_every_section_has_a_bad_value_case():
    base = yaml.safe_load(resources.files("megascience.conf").joinpath("base.yaml").read_text())
    assert set(BAD_VALUE_PER_SECTION) == set(base) == {section.SECTION for section in SECTIONS}


@pytest.mark.parametrize("section", sorted(BAD_VALUE_PER_SECTION))
def test_a_bad_value_of_any_section_fails_when_the_configuration_loads(section):
    assignment, message = BAD_VALUE_PER_SECTION[section]
    key = assignment.partition("=")[0]
    with pytest.raises(ConfigError, match=f"^--set {key}: {message}"):
        load_config("local", [assignment], environ={})


def test_a_bad_value_names_the_layer_it_came_from(tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text("ocr:\n  method_by_subject: {physics: scan}\n")
    with pytest.raises(ConfigError, match=f"^{profile}: ocr.method_by_subject.physics must be one of auto, text_layer"):
        load_config(str(profile), [], environ={})
    with pytest.raises(ConfigError, match="^environment variable MEGASCIENCE__DEDUP__NUM_PERM: dedup.num_perm must be"):
        load_config("local", [], environ={"MEGASCIENCE__DEDUP__NUM_PERM": "0"})
    with pytest.raises(ConfigError) as err:  # every bad value at once, one line each
        load_config("local", ["dedup.ngram=0", "ocr.rotation_retries=-1"], environ={})
    assert str(err.value).splitlines() == [
        "--set dedup.ngram: dedup.ngram must be at least 1, got 0",
        "--set ocr.rotation_retries: ocr.rotation_retries must be at least 0, got -1",
    ]


def test_each_settings_class_holds_exactly_its_sections_keys():
    """A key added to base.yaml without its typed field (or a field without a default in base.yaml) fails here."""
    config = load_config("local", [], environ={})

    def keys(value, cls):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(fields) == set(value), (cls.__name__, set(fields) ^ set(value))
        hints = typing.get_type_hints(cls)
        for name in fields:
            if isinstance(hints[name], type) and issubclass(hints[name], Settings):
                keys(value[name], hints[name])

    for section in SECTIONS:
        keys(config[section.SECTION], section)
        typed = section.of(config)
        assert list(typed.problems()) == []
    assert LlmSettings.of(config).roles["judge"].max_tokens == config["llm"]["roles"]["judge"]["max_tokens"]
    assert DedupSettings.of(config).threshold == 0.6
