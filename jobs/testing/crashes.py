"""What a killed-and-resumed run is held to: the loss bound of its LLM settings, the request id of a call as the
endpoint saw it, and a table-by-table comparison of two lakes (tests/test_faults.py, benchmarks/crash_sweep.py)."""

from __future__ import annotations

from megascience.udfs.llm_calls import request_id
from megascience.udfs.llm_engines import Sampling

# Small LLM chunks and a narrow in-flight window in the killed runs, so a kill lands between durable chunks: at most
# one unwritten chunk and the requests in flight are lost (and asked again) per kill.
KILL_CHUNK_ROWS = 4
KILL_WINDOW = 4
KILL_LOSS_BOUND = KILL_CHUNK_ROWS + KILL_WINDOW


def call_id_of(payload: dict) -> str:
    """The request id the gateway gave this request (what llm_calls is keyed by), rebuilt from what was sent."""
    sampling = Sampling(*(payload[k] for k in ("temperature", "top_p", "max_tokens", "n", "seed")))
    schema = (payload.get("response_format") or {}).get("json_schema", {}).get("schema")
    return request_id(payload["model"], payload["messages"], sampling, schema)


def comparable(df):
    """Content columns only: not which run wrote a row or when, nor latencies; floats rounded (embedding noise),
    maps as sorted entries."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, MapType, TimestampType

    columns = []
    for field in df.schema.fields:
        if field.name == "run_id" or "latency" in field.name or isinstance(field.dataType, TimestampType):
            continue
        column = F.col(field.name)
        if isinstance(field.dataType, DoubleType):
            column = F.round(column, 5)
        elif isinstance(field.dataType, MapType):  # set operations take no maps: its entries in key order instead
            column = F.array_sort(F.map_entries(column))
        columns.append(column.alias(field.name))
    return df.select(*columns)


def lake_differences(ours, theirs, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """Per table of either lake (but `skip`): rows in each, keys held twice in ours, and whether the content is equal
    row for row (comparable columns)."""
    from megascience.schemas.tables import TABLES, table_spec

    results = {}
    for name in TABLES:
        if name in skip or not (ours.exists(name) or theirs.exists(name)):
            continue
        mine, other = comparable(ours.read_or_empty(name)), comparable(theirs.read_or_empty(name))
        keys = list(table_spec(name).keys)
        results[name] = {
            "rows": other.count(),
            "rows_ours": mine.count(),
            "repeated_keys": mine.count() - mine.select(*keys).distinct().count(),
            "equal": mine.exceptAll(other).isEmpty() and other.exceptAll(mine).isEmpty(),
        }
    return results
