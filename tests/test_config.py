import pytest

from megascience.jobs.platform.config import ConfigError, load_config


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
