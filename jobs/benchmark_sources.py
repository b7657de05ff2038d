"""Stage 10 (first part), benchmarks: the benchmark items training questions are checked against -> `benchmarks`.

Sources are configuration: `decontamination.sources_file` (conf/benchmarks.yaml) describes Hugging Face datasets and
local files (jsonl, parquet, csv) with the mapping of their fields to ours, and `decontamination.benchmarks` names
the sources a run uses. Each record becomes one row: benchmark, subset, split, item_id, question (the item's text
with its answer options appended, one "A. ..." line each, so that the options are embedded too), answer, source.
A record that lacks a mapped field, or whose question is empty, becomes a failed row naming the field; the rest of
the source loads. A source that cannot be read at all (a missing file, a Hugging Face source without the `datasets`
library) stops the stage with an error that says so.

item_key = sha256 of (benchmark, subset, split, question text), so an item read again is the same row: a rerun
commits nothing, and a source added later adds only its own items (and decontaminate searches only those). A second
item of a benchmark with an id already taken is a failed row (duplicate_item_id): (benchmark, item_id) names one
item in `contamination`.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath
from typing import Any, Iterator

import pandas as pd
import yaml
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from jobs.config import Config, ConfigError
from jobs.outcome import commit_rows
from jobs.qa_common import content_id, with_run
from jobs.stage import Stage, StageContext, StageOutcome
from schemas import status as S
from schemas.tables import BENCHMARKS

BUNDLED_PREFIX = "conf:"  # a file shipped in the package's conf/ directory
FIELDS = ("benchmark", "subset", "split", "item_id", "question", "options", "answer")
REQUIRED_VALUES = ("benchmark", "item_id", "question")  # when mapped, an empty value fails the record
SOURCE_KEYS = ("file", "format", "hf", "configs", "split", "revision", "fields")
FORMATS = ("jsonl", "parquet", "csv")
OPTION_LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# One loaded record, before keys and run columns; `raw` (the record as read) keys failed rows, `position` (its place
# in this run's reading order) decides which of two items claiming one id keeps it.
LOADED = StructType(
    [
        StructField(name, StringType())
        for name in ("benchmark", "subset", "split", "item_id", "question", "answer", "source", "raw")
        + ("status", "reason", "detail")
    ]
    + [StructField("position", LongType())]
)


class BenchmarkSourceError(ConfigError):
    """A benchmark source that is misconfigured or cannot be read; the message names the source."""


@dataclass(frozen=True)
class BenchmarkSource:
    name: str
    fields: dict[str, Any]  # our column -> the source's field (options: a field, or a list of fields)
    file: str = ""
    format: str = ""
    hf: str = ""
    configs: tuple[str, ...] = ()
    split: str = ""
    revision: str = ""

    def describe(self, config: str | None) -> str:
        """What the `source` column holds: the file, or hf:<dataset>[<config>]:<split>."""
        if self.file:
            return self.file
        return f"hf:{self.hf}" + (f"[{config}]" if config else "") + f":{self.split}"


@dataclass(frozen=True)
class Unreadable:
    """A record that could not be parsed (kept as text, so that its failed row has a stable key)."""

    text: str
    problem: str


class MissingField(KeyError):
    def __init__(self, column: str, path: str):
        super().__init__(path)
        self.column, self.path = column, path


# --- extract -------------------------------------------------------------------------------------------------------


def read_bytes(location: str) -> bytes:
    if location.startswith(BUNDLED_PREFIX):
        return resources.files("conf").joinpath(*location[len(BUNDLED_PREFIX) :].split("/")).read_bytes()
    import fsspec

    with fsspec.open(location, "rb") as handle:
        return handle.read()


def parse_source(name: str, spec: Any, where: str) -> BenchmarkSource:
    """One entry of the sources file, checked: exactly one of file and hf, known keys and fields, a question field."""
    if not isinstance(spec, dict):
        raise BenchmarkSourceError(f"{where}: source {name} must be a mapping, got {spec!r}")
    unknown = sorted(set(spec) - set(SOURCE_KEYS))
    fields = spec.get("fields") or {}
    problems = [f"unknown key(s) {unknown} (known: {', '.join(SOURCE_KEYS)})"] if unknown else []
    if bool(spec.get("file")) == bool(spec.get("hf")):
        problems.append("give exactly one of file and hf")
    if not isinstance(fields, dict) or "question" not in fields:
        problems.append("fields must be a mapping that names the question field")
    elif sorted(set(fields) - set(FIELDS)):
        problems.append(f"unknown field(s) {sorted(set(fields) - set(FIELDS))} (known: {', '.join(FIELDS)})")
    file_format = spec.get("format") or PurePosixPath(str(spec.get("file", ""))).suffix.lstrip(".").lower()
    if spec.get("file") and file_format not in FORMATS:
        problems.append(f"format must be one of {', '.join(FORMATS)} (or a file with that suffix), got {file_format!r}")
    if spec.get("hf") and not spec.get("split"):
        problems.append("a Hugging Face source needs a split")
    if problems:
        raise BenchmarkSourceError(f"{where}: source {name}: " + "; ".join(problems))
    return BenchmarkSource(
        name=name,
        fields=dict(fields),
        file=str(spec.get("file") or ""),
        format=file_format if spec.get("file") else "",
        hf=str(spec.get("hf") or ""),
        configs=tuple(str(c) for c in spec.get("configs") or ()),
        split=str(spec.get("split") or ""),
        revision=str(spec.get("revision") or ""),
    )


def configured_sources(config: Config) -> list[BenchmarkSource]:
    """The sources `decontamination.benchmarks` names, from `decontamination.sources_file`."""
    settings = config["decontamination"]
    location = settings["sources_file"]
    try:
        document = yaml.safe_load(read_bytes(location))
    except (OSError, yaml.YAMLError) as err:
        raise BenchmarkSourceError(f"decontamination.sources_file {location}: {type(err).__name__}: {err}") from None
    catalogue = document.get("sources") if isinstance(document, dict) else None
    if not isinstance(catalogue, dict):
        raise BenchmarkSourceError(
            f"decontamination.sources_file {location}: expected a mapping `sources: {{name: ...}}`"
        )
    unknown = [name for name in settings["benchmarks"] if name not in catalogue]
    if unknown:
        raise BenchmarkSourceError(
            f"decontamination.benchmarks: {', '.join(unknown)} not in {location} (its sources: {', '.join(catalogue)})"
        )
    return [parse_source(name, catalogue[name], location) for name in settings["benchmarks"]]


def file_records(data: bytes, file_format: str) -> Iterator[tuple[str, Any]]:
    """(where, record) of each record of a jsonl, parquet or csv file; an unparseable jsonl line is `Unreadable`."""
    if file_format == "jsonl":
        for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    yield f"line {number}", json.loads(line)
                except json.JSONDecodeError as err:
                    yield f"line {number}", Unreadable(line, f"not JSON: {err}")
    elif file_format == "parquet":
        import pyarrow.parquet as pq

        for number, record in enumerate(pq.read_table(io.BytesIO(data)).to_pylist(), start=1):
            yield f"row {number}", record
    else:
        for number, record in enumerate(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))), start=2):
            yield f"line {number}", record


def hf_records(source: BenchmarkSource) -> Iterator[tuple[str | None, str, Any]]:
    """(config, where, record) of every configured config of a Hugging Face dataset."""
    try:
        import datasets
    except ImportError:
        raise BenchmarkSourceError(
            f"benchmark source {source.name} is the Hugging Face dataset {source.hf}: loading it needs the `datasets` "
            "library, which is not installed here (pip install datasets). Or save the split as a jsonl/parquet/csv "
            f"file and give the source `file:` instead, or leave {source.name} out of decontamination.benchmarks."
        ) from None
    for config in source.configs or (None,):
        try:
            rows = datasets.load_dataset(source.hf, config, split=source.split, revision=source.revision or None)
        except Exception as err:  # hub, network, gating and schema errors all mean: this source cannot be read
            raise BenchmarkSourceError(
                f"benchmark source {source.name}: cannot load {source.describe(config)}: {type(err).__name__}: {err}"
            ) from None
        for number, record in enumerate(rows, start=1):
            yield config, f"{config + ' ' if config else ''}row {number}", record


def source_records(source: BenchmarkSource) -> Iterator[tuple[str | None, str, Any]]:
    if source.hf:
        yield from hf_records(source)
        return
    try:
        data = read_bytes(source.file)
    except OSError as err:
        raise BenchmarkSourceError(
            f"benchmark source {source.name}: cannot read {source.file}: {type(err).__name__}: {err}"
        ) from None
    for where, record in file_records(data, source.format):
        yield None, where, record


# --- transform: one record -> one row (pure) ------------------------------------------------------------------------


def _lookup(record: Any, column: str, path: str) -> Any:
    """The field's value; a dotted path ("examples.0.input") reads nested values. MissingField if a step is absent."""
    if path in record:
        return record[path]
    value = record
    for step in str(path).split("."):
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, (list, tuple)) and str(step).isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            raise MissingField(column, path)
    return value


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value).strip()


def _options(record: dict, spec: Any) -> list[tuple[str, str]]:
    """(label, text) of each answer option: a list gets A, B, C, ...; a mapping keeps its keys as labels."""
    if spec is None:
        return []
    if isinstance(spec, list):
        values: Any = [_lookup(record, "options", path) for path in spec]
    else:
        values = _lookup(record, "options", spec)
    if values is None:
        return []
    if isinstance(values, dict):
        return [(str(label), _text(text) or "") for label, text in values.items()]
    if isinstance(values, (list, tuple)):
        labels = [OPTION_LABELS[i] if i < len(OPTION_LABELS) else str(i + 1) for i in range(len(values))]
        return [(label, _text(value) or "") for label, value in zip(labels, values)]
    return [("", _text(values) or "")]


def with_options(question: str, options: list[tuple[str, str]]) -> str:
    """The question with one "A. option" line per option: the fixed format in which options are embedded."""
    lines = [f"{label}. {text}" if label else text for label, text in options]
    return "\n".join([question, *lines])


def item_row(source: BenchmarkSource, config: str | None, where: str, record: Any) -> dict[str, str | None]:
    """A LOADED row (without position) from one source record: kept with the item's fields, or failed naming what is
    missing."""
    row: dict[str, str | None] = {name: None for name in LOADED.names if name != "position"}
    row.update(benchmark=source.name, subset=config, split=source.split or None, source=source.describe(config))
    row.update(status=S.KEPT, reason=S.REASON_OK)

    def failed(reason: str, problem: str) -> dict[str, str | None]:
        if isinstance(record, Unreadable):
            raw = record.text
        else:
            raw = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
        return {**row, "status": S.FAILED, "reason": reason, "detail": f"{where}: {problem}", "raw": raw}

    if isinstance(record, Unreadable):
        return failed(S.REASON_BENCHMARK_UNREADABLE_RECORD, record.problem)
    if not isinstance(record, dict):
        return failed(S.REASON_BENCHMARK_UNREADABLE_RECORD, f"not a JSON object: {str(record)[:80]}")
    if "item_id" in source.fields:  # a failed row still names the item when its id can be read
        try:
            row["item_id"] = _text(_lookup(record, "item_id", source.fields["item_id"]))
        except MissingField:
            pass
    try:
        values = {c: _lookup(record, c, path) for c, path in source.fields.items() if c != "options"}
        options = _options(record, source.fields.get("options"))
    except MissingField as err:
        return failed(S.REASON_BENCHMARK_MISSING_FIELD, f"no field {err.path!r} (the {err.column})")
    for column, value in values.items():
        row[column] = _text(value)
        if column in REQUIRED_VALUES and not row[column]:
            return failed(S.REASON_BENCHMARK_MISSING_FIELD, f"empty {column} (field {source.fields[column]!r})")
    row["question"] = with_options(row["question"], options)
    return row


# --- transform (pure DataFrame -> DataFrame) ------------------------------------------------------------------------


def keyed_items(loaded: DataFrame) -> DataFrame:
    """Adds item_key (the item's content; the raw record's for a failed row) and the default item ids.

    The same item read twice is one row: of rows sharing a key the one read first stays.
    """
    content = content_id("benchmark", F.coalesce("subset", F.lit("")), F.coalesce("split", F.lit("")), "question")
    kept = F.col("status") == S.KEPT
    keyed = loaded.withColumn("item_key", F.when(kept, content).otherwise(content_id("source", "raw")))
    default_id = F.coalesce("item_id", F.substring("item_key", 1, 16))
    keyed = keyed.withColumn("item_id", F.when(kept, default_id).otherwise(F.col("item_id")))
    first = Window.partitionBy("item_key").orderBy("position")
    return keyed.withColumn("_copy", F.row_number().over(first)).where(F.col("_copy") == 1).drop("_copy", "raw")


def new_items(keyed: DataFrame, existing: DataFrame) -> DataFrame:
    """Keyed rows not yet in `benchmarks`; a kept one whose (benchmark, item_id) is taken fails as duplicate_item_id.

    Items already in the table hold their ids; among new items the one read first wins.
    """
    new = keyed.join(existing.select("item_key"), "item_key", "left_anti")
    kept = F.col("status") == S.KEPT
    holders = existing.where(kept).select("benchmark", "item_id", "item_key", F.lit(-1).cast("long").alias("position"))
    claims = new.where(kept).select("benchmark", "item_id", "item_key", "position")
    order = Window.partitionBy("benchmark", "item_id").orderBy("position")
    holder = holders.unionByName(claims).select("item_key", F.first("item_key").over(order).alias("_holder"))
    duplicate = F.col("_holder") != F.col("item_key")
    return new.join(holder, "item_key", "left").select(
        *[c for c in new.columns if c not in ("status", "reason", "detail")],
        F.when(duplicate, F.lit(S.FAILED)).otherwise(F.col("status")).alias("status"),
        F.when(duplicate, F.lit(S.REASON_DUPLICATE_ITEM_ID)).otherwise(F.col("reason")).alias("reason"),
        F.when(duplicate, F.format_string("item id %s of %s is held by item %.16s", "item_id", "benchmark", "_holder"))
        .otherwise(F.col("detail"))
        .alias("detail"),
    )


# --- the stage -----------------------------------------------------------------------------------------------------


def run(ctx: StageContext) -> StageOutcome:
    sources = configured_sources(ctx.config)
    reads = ((source, *read) for source in sources for read in source_records(source))
    records = [{**item_row(*read), "position": position} for position, read in enumerate(reads)]
    names = ", ".join(source.name for source in sources) or "none"
    ctx.progress(f"{len(records)} records from {len(sources)} source(s): {names}")
    ctx.recorder.counts(records_read=len(records))
    loaded = ctx.spark.createDataFrame(pd.DataFrame(records, columns=LOADED.names), LOADED)
    rows = new_items(keyed_items(loaded), ctx.read_input("benchmarks"))
    rows = with_run(rows, ctx).select(*BENCHMARKS.schema.names).cache()
    try:
        count = rows.count()
        ctx.progress(f"{count} new benchmark items")
        return commit_rows(ctx, "benchmarks", rows, rows_in=count) if count else StageOutcome(0, 0, 0, 0, None)
    finally:
        rows.unpersist()


STAGE = Stage(
    name="benchmarks",
    inputs=("benchmarks",),
    output="benchmarks",
    config_section="decontamination",
    run=run,
    description="benchmark items (Hugging Face datasets or local files) with their options, keyed by content",
)
