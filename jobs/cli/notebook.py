"""What a notebook needs to look at the lake: the session, the tables registered by name, status as a frame."""

from __future__ import annotations

import pandas as pd

from megascience.jobs.platform.config import load_config
from megascience.jobs.platform.tables import Lakehouse


def open_lake(profile: str | None = None, *overrides: str) -> Lakehouse:
    """The lake of the given profile (MEGASCIENCE__* variables and overrides apply), every table registered for SQL."""
    from megascience.jobs.platform.session import get_spark

    config = load_config(profile, overrides)
    lake = Lakehouse.open(get_spark(config), config)
    lake.register_all()
    return lake


def table_status(lake: Lakehouse) -> pd.DataFrame:
    """Every table that exists: what it holds, rows, Delta version, last operation and the MLflow run that made it."""
    return pd.DataFrame([row for row in lake.status() if row.pop("exists")])
