"""What a notebook needs to look at the lake: the session, the tables registered by name, status as a frame."""

from __future__ import annotations

import pandas as pd

from jobs.config import load_config
from jobs.tables import Lakehouse


def open_lake(profile: str | None = None, *overrides: str) -> Lakehouse:
    """The lake of the given profile (MEGASCIENCE__* variables and overrides apply), every table registered for SQL."""
    from jobs.session import get_spark

    config = load_config(profile, overrides)
    lake = Lakehouse.open(get_spark(config), config)
    lake.register_all()
    return lake


def table_status(lake: Lakehouse) -> pd.DataFrame:
    """Every table that exists: rows, Delta version, last operation and the MLflow run that made it."""
    from schemas.tables import TABLES

    rows = []
    for name in TABLES:
        if lake.exists(name):
            last = lake.history(name)[0]
            rows.append(
                {
                    "table": name,
                    "rows": lake.count(name),
                    "version": last.version,
                    "operation": last.operation,
                    "committed": last.timestamp,
                    "run_id": last.user_metadata.get("mlflow_run_id"),
                }
            )
    return pd.DataFrame(rows)
