"""The stage toolkit's guard: a stage body commits only to the tables its Stage declares."""

import pytest

from megascience.jobs.pipeline import STAGES
from megascience.jobs.platform.stage import StageContext, UndeclaredTableError


def test_a_commit_to_an_undeclared_table_is_refused_before_the_lake_is_touched():
    dedup = next(stage for stage in STAGES if stage.name == "dedup")
    ctx = StageContext(None, None, None, None, dedup.name, output=dedup.output, writes=dedup.writes)  # lake: never reached
    with pytest.raises(UndeclaredTableError, match="stage dedup commits to 'qa_refined'.*writes: qa_clusters, dedup_band_keys"):
        ctx.commit("qa_refined", rows=None)


def test_every_stage_declares_its_settings_section_and_its_tables():
    for stage in STAGES:
        assert stage.output in stage.writes and len(set(stage.writes)) == len(stage.writes)
        assert ("llm_calls" in stage.writes) == bool(stage.roles)
    sections = {stage.name: stage.config_section for stage in STAGES}
    assert sections["dedup_external"] == "dedup" and sections["benchmarks"] == "decontamination"
    assert sections["publish"] is None  # a stage without settings of its own


def test_every_llm_role_has_its_settings_and_every_stage_role_is_known():
    from megascience.jobs.platform.config import load_config
    from megascience.jobs.platform.llm import ROLES
    from megascience.jobs.platform.settings import LlmSettings

    assert set(LlmSettings.of(load_config("local", [], environ={})).roles) == set(ROLES)
    assert {role for stage in STAGES for role in stage.roles} <= set(ROLES)
